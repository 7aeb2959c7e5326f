"""Remote devices over a real sshd on loopback: sweeps into the store, faults, host keys, farm, deploy."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.errors import ConfigError, HostKeyError, ProtocolError, RemoteError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

from conftest import REPO, require_sshd
from sshd import Sshd, board_python, keygen, repack_wheel

pytestmark = [require_sshd, pytest.mark.sshd, pytest.mark.timeout(300)]

FAST = TimingConfig(warmup=1, repeats=3, number=2, max_retries=0)
SLOW = TimingConfig(warmup=1, repeats=10, min_repeat_ms=5.0, max_retries=0)  # >= 50 ms a job: faults land mid-sweep


def layer_reqs(n: int, start: int = 1) -> list[MeasureRequest]:
    return [MeasureRequest.for_layer(LayerSpec("conv2d", (1, 4, 8, 8), out_channels=c, kernel=3, padding=1))
            for c in range(start, start + n)]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Sshd(tmp_path_factory.mktemp("sshd")) as srv:
        yield srv


@pytest.fixture()
def own_sshd(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = Sshd(tmp_path / "sshd").start()
    try:
        yield srv
    finally:
        srv.stop()


def remote(srv: Sshd, name: str = "board", **conn: object):  # type: ignore[no-untyped-def]
    from hwloop.remote import RemoteDevice

    return RemoteDevice(name, timing=FAST, connection=srv.connection(**conn))


def ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


# ----------------------------------------------------------------------------- sweeps
def test_sweep_through_agent_stores_every_job(sshd: Sshd, tmp_path: Path) -> None:
    from hwloop.devices.cpu import CpuDevice
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    reqs = layer_reqs(10) + [MeasureRequest.for_model(ModelRef("small_cnn", {"widths": [4, 8, 8]}))]
    store = MeasurementStore(tmp_path / "m.db")
    dev = remote(sshd)
    try:
        summary = run_sweep(reqs, dev, store, progress=False, batch_size=4)
        fp = dev.fingerprint()
        assert summary.measured == len(reqs) and summary.failed == 0 and summary.skipped == 0
        assert store.count() == len(reqs) == store.count(ok_only=True)
        stored = {k for k in (r.key for r in reqs) if store.get(fp.key, k, FAST.key) is not None}
        assert stored == {r.key for r in reqs}
        assert fp.backend == "cpu" and fp.info["via"] == "ssh"
        # the board is this machine: its data is keyed exactly like the local backend's
        assert fp.key == CpuDevice(threads=1).fingerprint().key
        again = run_sweep(reqs, dev, store, progress=False)
        assert (again.measured, again.skipped) == (0, len(reqs))
        assert store.count() == len(reqs)
    finally:
        dev.close()


def test_refused_jobs_are_error_results_not_crashes(sshd: Sshd, tmp_path: Path) -> None:
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    ok = layer_reqs(2)
    foreign = MeasureRequest.for_model(ModelRef("hwloop.models:SmallCNN", input_shape=(1, 8, 8)))  # imports code: refused on the board
    huge = MeasureRequest.for_layer(LayerSpec("linear", (1, 100_000_000), out_channels=1))  # > max_elements
    store = MeasurementStore(tmp_path / "m.db")
    dev = remote(sshd)
    try:
        summary = run_sweep([ok[0], foreign, huge, ok[1]], dev, store, progress=False)
        fp = dev.fingerprint()
    finally:
        dev.close()
    assert (summary.measured, summary.failed) == (2, 2)
    err_foreign = store.get(fp.key, foreign.key, FAST.key)
    err_huge = store.get(fp.key, huge.key, FAST.key)
    assert err_foreign is not None and "not allowed on the agent" in (err_foreign.error or "")
    assert err_huge is not None and "max_elements" in (err_huge.error or "")


def test_hung_job_is_cut_at_its_timeout(sshd: Sshd) -> None:
    slow = MeasureRequest.for_layer(LayerSpec("conv2d", (1, 64, 128, 128), out_channels=64, kernel=7, padding=3))
    reqs = [layer_reqs(1)[0], slow, layer_reqs(1, start=5)[0]]
    timing = TimingConfig(warmup=0, repeats=200, number=1, max_retries=0, timeout_s=0)
    dev = remote(sshd, job_timeout_s=1.5)
    try:
        dev.fingerprint()
        t0 = time.monotonic()
        res = dev.measure(reqs, timing)
        took = time.monotonic() - t0
    finally:
        dev.close()
    assert res[0].ok and res[2].ok, (res[0].error, res[2].error)
    assert res[1].error is not None and res[1].error.startswith("timeout") and "1.5 s" in res[1].error
    assert took < 30, took  # 200 repeats of the slow conv would take far longer than the cut


def test_agent_killed_mid_sweep_resumes_every_job_once(own_sshd: Sshd, tmp_path: Path) -> None:
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    reqs = layer_reqs(24)
    store = MeasurementStore(tmp_path / "m.db")
    dev = remote(own_sshd)
    seen: list[str] = []
    killed: list[int] = []

    def on_result(req: MeasureRequest, res: object, stored: bool) -> None:
        seen.append(req.key)
        if len(seen) == 3:
            pid = int(dev.agent_info["pid"])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        summary = run_sweep(reqs, dev, store, SLOW, progress=False, batch_size=24, on_result=on_result)
        new_pid = dev.agent_info["pid"]
    finally:
        dev.close()
    assert killed and new_pid != killed[0] and dev.reconnects >= 1
    assert summary.measured == len(reqs) and summary.failed == 0
    assert collections.Counter(seen) == collections.Counter(r.key for r in reqs)  # each exactly once
    assert store.count(ok_only=True) == len(reqs)
    assert store.count() == len(reqs)


def test_sshd_down_then_up_mid_sweep_resumes(own_sshd: Sshd, tmp_path: Path) -> None:
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    reqs = layer_reqs(20)
    store = MeasurementStore(tmp_path / "m.db")
    dev = remote(own_sshd, backoff_s=0.5)
    seen: list[str] = []
    restarted = threading.Event()

    def on_result(req: MeasureRequest, res: object, stored: bool) -> None:
        seen.append(req.key)
        if len(seen) == 3:
            own_sshd.stop()  # the board goes away: sshd and every session it forked

            def back() -> None:
                own_sshd.start()
                restarted.set()

            threading.Timer(1.5, back).start()

    try:
        summary = run_sweep(reqs, dev, store, SLOW, progress=False, batch_size=20, on_result=on_result)
    finally:
        restarted.wait(10)
        dev.close()
    assert restarted.is_set() and dev.reconnects >= 1
    assert summary.measured == len(reqs)
    assert collections.Counter(seen) == collections.Counter(r.key for r in reqs)
    assert store.count(ok_only=True) == len(reqs)


def test_board_that_stays_down_gives_up_with_a_clear_error(own_sshd: Sshd, tmp_path: Path) -> None:
    dev = remote(own_sshd, max_reconnects=2, backoff_s=0.1)
    dev.fingerprint()
    own_sshd.stop()
    with pytest.raises(RemoteError, match="giving up after 3"):
        dev.measure(layer_reqs(3), FAST)
    dev.close()


# ----------------------------------------------------------------------------- host keys
def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    dev = remote(sshd, known_hosts=str(kh))
    with pytest.raises(HostKeyError) as ei:
        dev.fingerprint()
    msg = str(ei.value)
    assert ssh_keygen_fingerprint(sshd.host_key.with_suffix(".pub")) in msg and "\n" not in msg
    assert "hwloop devices trust board" in msg
    assert kh.read_text() == ""  # never auto-added


def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "impostor")
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n")
    with pytest.raises(HostKeyError, match="CHANGED") as ei:
        remote(sshd, known_hosts=str(kh)).fingerprint()
    assert ssh_keygen_fingerprint(sshd.host_key.with_suffix(".pub")) in str(ei.value)
    assert ssh_keygen_fingerprint(other.with_suffix(".pub")) in str(ei.value)


def _profile_dir(tmp_path: Path, srv: Sshd, **conn: object) -> Path:
    import json

    d = tmp_path / "devices"
    d.mkdir(exist_ok=True)
    c = srv.connection(**conn)
    lines = ['name = "board"', 'backend = "remote"', "[timing]", "warmup = 1", "repeats = 3", "[connection]"]
    for k, v in c.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    lines += ["[connection.env]", *(f"{k} = {json.dumps(v)}" for k, v in c["env"].items())]
    lines += ["[connection.backend]", 'name = "cpu"', "options = {threads = 1}"]
    (d / "board.toml").write_text("\n".join(lines) + "\n")
    return d


def _hwloop(args: list[str], env_dir: Path, home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HWLOOP_DEVICES_DIR": str(env_dir), "HWLOOP_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hwloop", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_cli_trust_adds_the_key_only_on_confirmation(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "home" / "known_hosts"
    d = _profile_dir(tmp_path, sshd, known_hosts=str(kh))
    fpr = ssh_keygen_fingerprint(sshd.host_key.with_suffix(".pub"))
    wrong = _hwloop(["devices", "trust", "board", "--fingerprint", "SHA256:" + "A" * 43], d, tmp_path / "home")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error:") and fpr in wrong.stderr
    assert "Traceback" not in wrong.stderr and not kh.exists()
    declined = _hwloop(["devices", "trust", "board"], d, tmp_path / "home", stdin="n\n")
    assert declined.returncode != 0 and fpr in declined.stdout and not kh.exists()
    accepted = _hwloop(["devices", "trust", "board"], d, tmp_path / "home", stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert sshd.host_public_key() in kh.read_text()
    scripted = _hwloop(["devices", "trust", "board", "--fingerprint", fpr], d, tmp_path / "home")
    assert scripted.returncode == 0, scripted.stderr
    probe = _hwloop(["devices", "show", "board", "--probe", "--json"], d, tmp_path / "home")
    assert probe.returncode == 0, probe.stderr
    assert '"via": "ssh"' in probe.stdout


# ----------------------------------------------------------------------------- misbehaving agent
FAKE_AGENT = r"""
import json, sys
mode = sys.argv[1]
from hwloop import __version__
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.cpu import CpuDevice
out = sys.stdout
def send(m):
    out.write(json.dumps(m) + "\n"); out.flush()
hello = json.loads(sys.stdin.readline())
dev = CpuDevice(name=hello["device"]["name"], threads=1)
fp = dev.fingerprint().to_dict(); fp.pop("key")
send({"v": 1, "type": "hello", "protocol": 1, "hwloop": "9.9.9" if mode == "version" else __version__,
      "capabilities": {}, "fingerprint": fp, "limits": {}, "pid": 0, "warnings": []})
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] != "measure":
        continue
    jobs = msg["jobs"]
    res = dev.measure([MeasureRequest.from_dict(jobs[0]["request"])], TimingConfig.from_dict(msg["timing"]))[0]
    send({"v": 1, "type": "result", "id": jobs[0]["id"], "result": res.to_dict()})
    if mode == "garbage":
        out.write("this is not json\n")
    elif mode == "oversized":
        out.write("x" * (2 << 20) + "\n")
    elif mode == "badresult":
        send({"v": 1, "type": "result", "id": jobs[1]["id"], "result": {"bogus": 1}})
    out.flush()
    sys.stdin.read()
"""


@pytest.mark.parametrize("mode,match", [("garbage", "not JSON"), ("oversized", "more than"),
                                        ("badresult", "malformed result")])
def test_malformed_agent_output_is_a_clear_error_and_store_stays_intact(sshd: Sshd, tmp_path: Path, mode: str,
                                                                        match: str) -> None:
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_sweep

    reqs = layer_reqs(4)
    store = MeasurementStore(tmp_path / "m.db")
    dev = remote(sshd, agent_command=[sys.executable, "-c", FAKE_AGENT, mode])
    with pytest.raises(ProtocolError, match=match) as ei:
        run_sweep(reqs, dev, store, progress=False, batch_size=4)
    dev.close()
    assert "\n" not in str(ei.value)
    assert store.count() == 1 and store.count(ok_only=True) == 1  # the good result before the bad line
    with MeasurementStore(tmp_path / "m.db") as again:
        assert again.count() == 1


def test_version_mismatch_at_handshake_is_a_clear_error(sshd: Sshd) -> None:
    dev = remote(sshd, agent_command=[sys.executable, "-c", FAKE_AGENT, "version"])
    with pytest.raises(RemoteError, match=r"version mismatch: .*9\.9\.9.*hwloop devices deploy board"):
        dev.fingerprint()


def test_missing_agent_command_names_the_command_and_stderr(sshd: Sshd) -> None:
    dev = remote(sshd, agent_command=["/nonexistent/hwloop-agent"], max_reconnects=0)
    with pytest.raises(RemoteError, match="/nonexistent/hwloop-agent.*before its hello"):
        dev.fingerprint()


# ----------------------------------------------------------------------------- config
def test_connection_config_is_validated() -> None:
    from hwloop.remote import RemoteDevice

    with pytest.raises(ConfigError, match="agent_command"):
        RemoteDevice("x", connection={"host": "h", "agent_command": "hwloop agent; rm -rf /"})
    with pytest.raises(ConfigError, match="unknown connection key"):
        RemoteDevice("x", connection={"host": "h", "password": "hunter2"})
    with pytest.raises(ConfigError, match="env entry"):
        RemoteDevice("x", connection={"host": "h", "env": {"A B": "1"}})
    from hwloop.remote import ConnectionConfig

    cfg = ConnectionConfig(host="h", env={"PYTHONPATH": "/a b"}, agent_command=("py", "-m", "hwloop", "agent"))
    assert cfg.remote_command() == "env 'PYTHONPATH=/a b' py -m hwloop agent"


def test_jetson_profile_creates_a_remote_device_without_connecting() -> None:
    from hwloop.devices import create_device, load_profile
    from hwloop.remote import RemoteDevice

    prof = load_profile("jetson-orin")
    dev = create_device(prof)
    assert isinstance(dev, RemoteDevice) and dev.connection.backend["name"] == "cuda"
    assert dev.connection.known_hosts_path.name == "known_hosts" and ".ssh" not in str(dev.connection.known_hosts_path)


# ----------------------------------------------------------------------------- farm / threads
def test_farm_of_two_boards_and_one_device_shared_by_threads(sshd: Sshd, tmp_path: Path) -> None:
    from hwloop.store import MeasurementStore
    from hwloop.sweep import run_farm

    reqs = layer_reqs(12)
    store = MeasurementStore(tmp_path / "m.db")
    a, b = remote(sshd, "board-a"), remote(sshd, "board-b")
    try:
        summary = run_farm(reqs, [a, b], store, progress=False, batch_size=3)
        # both "boards" are this machine: same fingerprint, so they split one queue
        assert a.fingerprint().key == b.fingerprint().key
        assert summary.measured == len(reqs) and not summary.errors
        assert summary.per_device["board-a"]["measured"] > 0 and summary.per_device["board-b"]["measured"] > 0
        assert store.count(ok_only=True) == len(reqs)
        out: dict[int, list[str]] = {}

        def work(i: int) -> None:
            rs = layer_reqs(4, start=30 + 10 * i)
            out[i] = [r.request_key for r in a.measure(rs, FAST)]
            assert out[i] == [r.key for r in rs]

        ths = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert sorted(out) == [0, 1]
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- deploy
HOST_ONLY = ("pandas", "typer", "xgboost", "sqlalchemy", "paramiko")  # hwloop dependencies the agent must not need


def _board(tmp_path: Path, srv: Sshd, tag: str, exclude: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """A board: a Python with only torch and numpy (like a vendor image), reached over the real sshd."""
    from hwloop.devices.profiles import DeviceProfile

    py = board_python(tmp_path / f"{tag}-python", exclude=exclude)
    rdir = tmp_path / f"{tag}-home" / ".hwloop"
    rdir.parent.mkdir()
    conn = srv.connection(remote_dir=str(rdir), python=str(py))
    prof = DeviceProfile.from_dict({"name": tag, "backend": "remote", "connection": conn,
                                    "timing": {"warmup": 1, "repeats": 3}})
    return prof, py, rdir


@pytest.fixture(scope="module")
def hwloop_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hwloop.remote.deploy import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _importable(py: Path | str, *mods: str) -> dict[str, bool]:
    code = ("import importlib.util, json, sys; "
            "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    p = subprocess.run([str(py), "-c", code, *mods], capture_output=True, text=True, check=True, cwd="/",
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    import json

    return json.loads(p.stdout)


@pytest.mark.slow
def test_deploy_onto_a_bare_board_installs_no_host_dependencies_and_measures(sshd: Sshd, tmp_path: Path) -> None:
    from hwloop import __version__
    from hwloop.remote import RemoteDevice, deploy

    prof, py, rdir = _board(tmp_path, sshd, "bare")
    seen = _importable(py, "torch", "numpy", "hwloop", *HOST_ONLY)
    assert seen == {"torch": True, "numpy": True, "hwloop": False, **{m: False for m in HOST_ONLY}}, seen
    steps: list[str] = []
    out = deploy(prof, progress=steps.append)
    assert out["hwloop"] == __version__ and out["installed"] == []
    assert str(out["hwloop_path"]).startswith(str(rdir / "venv")), out["hwloop_path"]
    assert (rdir / "wheels" / out["wheel"]).is_file()
    assert any("uploading" in s for s in steps) and any("--no-deps" in s for s in steps)
    # the venv sees the board's torch and nothing of hwloop's host-side dependencies
    venv_py = rdir / "venv" / "bin" / "python"
    assert _importable(venv_py, "torch", "hwloop", *HOST_ONLY) == {"torch": True, "hwloop": True,
                                                                   **{m: False for m in HOST_ONLY}}
    ran = subprocess.run([str(venv_py), "-m", "hwloop", "profile", "x"], capture_output=True, text=True, cwd="/",
                         check=False)
    assert ran.returncode == 2 and "only the agent's dependencies" in ran.stderr and "Traceback" not in ran.stderr
    # the deployed agent measures: a layer and a whole model
    conn = {**dict(prof.connection), "agent_command": out["agent_command"], "env": {"OMP_NUM_THREADS": "1"}}
    dev = RemoteDevice("bare", timing=FAST, connection=conn)
    try:
        reqs = [*layer_reqs(1), MeasureRequest.for_model(ModelRef("small_cnn", {"widths": [4, 8, 8]}))]
        res = dev.measure(reqs)
        assert dev.agent_info["hwloop"] == __version__
    finally:
        dev.close()
    assert all(r.ok and r.latency_ms > 0 for r in res), [r.error for r in res]


@pytest.mark.slow
def test_deploy_names_a_missing_wheel_then_installs_it_from_a_wheelhouse(sshd: Sshd, tmp_path: Path,
                                                                         hwloop_wheel: Path) -> None:
    from hwloop.remote import deploy

    prof, py, rdir = _board(tmp_path, sshd, "nonumpy", exclude=("numpy",))
    assert _importable(py, "torch", "numpy") == {"torch": True, "numpy": False}
    empty = tmp_path / "empty-house"
    empty.mkdir()
    with pytest.raises(ConfigError) as ei:
        deploy(prof, wheel=hwloop_wheel, wheelhouse=empty)
    msg = str(ei.value)
    assert "\n" not in msg and "lacks numpy>=1.24" in msg and str(empty) in msg
    assert "hwloop devices wheelhouse nonumpy" in msg and "pip download --only-binary=:all:" in msg
    assert not (rdir / "venv").exists()  # refused before anything was installed
    with pytest.raises(ConfigError, match="is not a folder"):
        deploy(prof, wheel=hwloop_wheel, wheelhouse=tmp_path / "nowhere")
    # an offline wheel cache (here: this machine's numpy, packed as a wheel) -> a wheelhouse -> deploy
    cache = tmp_path / "cache"
    repack_wheel("numpy", cache)
    d = _profile_dir(tmp_path, sshd, remote_dir=str(rdir), python=str(py))
    (d / "board.toml").rename(d / "nonumpy.toml")
    text = (d / "nonumpy.toml").read_text().replace('name = "board"', 'name = "nonumpy"')
    (d / "nonumpy.toml").write_text(text)
    home = tmp_path / "home"
    bad = _hwloop(["devices", "wheelhouse", "nonumpy", "--find-links", str(tmp_path / "nope")], d, home)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    made = _hwloop(["devices", "wheelhouse", "nonumpy", "--find-links", str(cache)], d, home)
    assert made.returncode == 0, made.stderr + made.stdout
    house = home / "wheelhouse" / "nonumpy"
    assert [p.name.split("-")[0] for p in house.glob("*.whl")] == ["numpy"], made.stdout
    dep = _hwloop(["devices", "deploy", "nonumpy", "--wheel", str(hwloop_wheel)], d, home)  # default wheelhouse
    assert dep.returncode == 0, dep.stderr + dep.stdout
    assert "numpy>=1.24 from the wheelhouse" in dep.stdout and "deployed hwloop" in dep.stdout
    venv_py = rdir / "venv" / "bin" / "python"
    site = subprocess.run([str(venv_py), "-c", "import numpy, sys; print(numpy.__file__)"], capture_output=True,
                          text=True, check=True, cwd="/").stdout
    assert site.startswith(str(rdir / "venv")), site  # numpy came from the wheelhouse into the venv
    assert _importable(venv_py, *HOST_ONLY) == {m: False for m in HOST_ONLY}


# ----------------------------------------------------------------------------- network namespace
HOST_SIDE = r"""
import json, sys
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.remote import RemoteDevice
from hwloop.store import MeasurementStore
from hwloop.sweep import run_sweep
conn, store_path, progress, reqs = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
timing = TimingConfig.from_dict(json.loads(sys.argv[5]))
dev = RemoteDevice("netns-board", timing=timing, connection=conn)
log = open(progress, "a")
def on_result(req, res, stored):
    log.write(req.key + "\n"); log.flush()
s = run_sweep([MeasureRequest.from_dict(r) for r in reqs], dev, MeasurementStore(store_path), timing,
              progress=False, batch_size=len(reqs), on_result=on_result)
dev.close()
print(json.dumps({"measured": s.measured, "failed": s.failed, "reconnects": dev.reconnects}))
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture()
def netns_pair():  # type: ignore[no-untyped-def]
    """Two namespaces we create (board, host) joined by a veth pair; addresses exist only inside them."""
    tag = f"{os.getpid() % 100000}"
    board, host = f"hwlb{tag}", f"hwlh{tag}"
    if _ip("netns", "add", board).returncode != 0:
        pytest.skip("ip netns is not permitted here (needs root and iproute2)")
    try:
        if _ip("netns", "add", host).returncode != 0:
            pytest.skip("ip netns add failed for the second namespace")
        sub = 200 if os.getpid() % 2 else 201
        steps = [
            ("link", "add", "vh", "netns", host, "type", "veth", "peer", "name", "vb", "netns", board),
            ("-n", host, "addr", "add", f"10.{sub}.0.1/30", "dev", "vh"),
            ("-n", board, "addr", "add", f"10.{sub}.0.2/30", "dev", "vb"),
            ("-n", host, "link", "set", "vh", "up"), ("-n", board, "link", "set", "vb", "up"),
            ("-n", host, "link", "set", "lo", "up"), ("-n", board, "link", "set", "lo", "up"),
        ]
        for st in steps:
            p = _ip(*st)
            if p.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: ip {' '.join(st)}: {p.stderr.strip()}")
        yield board, host, f"10.{sub}.0.2"
    finally:
        _ip("netns", "del", host)
        _ip("netns", "del", board)


@pytest.mark.slow
def test_link_cut_inside_network_namespaces_resumes(netns_pair: tuple[str, str, str], tmp_path: Path) -> None:
    import json

    from hwloop.store import MeasurementStore

    board_ns, host_ns, addr = netns_pair
    srv = Sshd(tmp_path / "sshd", host=addr, port=2222, netns=board_ns)
    srv.start()
    reqs = layer_reqs(16)
    progress = tmp_path / "progress.txt"
    progress.write_text("")
    conn = srv.connection(heartbeat_timeout_s=3.0, connect_timeout_s=2.0, backoff_s=0.5, backoff_max_s=2.0,
                          max_reconnects=20)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["ip", "netns", "exec", host_ns, sys.executable, "-c", HOST_SIDE, json.dumps(conn),
                             str(tmp_path / "m.db"), str(progress), json.dumps([r.to_dict() for r in reqs]),
                             json.dumps(SLOW.to_dict())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        end = time.monotonic() + 90
        while len(progress.read_text().split()) < 3 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert _ip("-n", host_ns, "link", "set", "vh", "down").returncode == 0  # cut the board's link
        time.sleep(4.0)
        assert _ip("-n", host_ns, "link", "set", "vh", "up").returncode == 0
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.stop()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["measured"] == len(reqs) and summary["reconnects"] >= 1, (summary, err[-2000:])
    seen = progress.read_text().split()
    assert collections.Counter(seen) == collections.Counter(r.key for r in reqs)
    with MeasurementStore(tmp_path / "m.db") as st:
        assert st.count(ok_only=True) == len(reqs) == st.count()
