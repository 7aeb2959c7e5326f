"""Concurrent sweeps into one store share the work: each key is measured once, and a dead worker's
claims are taken over when their lease expires (SQLite and a real PostgreSQL 15 server).

The processes run the real CLI (``python -m hwloop sweep``-equivalent, ``hwloop.cli.main``) on the real
CPU backend; the runner only adds a fixed sleep before each request (a device that takes time, so that
the workers overlap) and counts the requests the device was asked to measure.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pg
import pytest
import sqlalchemy as sa

from hwloop.devices.base import MeasureRequest, MeasureResult, TimingConfig, summarize
from hwloop.devices.cpu import CpuDevice
from hwloop.errors import ConfigError
from hwloop.store import MeasurementStore
from hwloop.store._claims import ClaimQueue
from hwloop.store._schema import claims_t
from hwloop.sweep import SweepSpec, run_sweep

REPO = Path(__file__).resolve().parents[1]
T = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_retries=0)
N = 24
STORED = re.compile(r"^stored device=(\S+) workload=([0-9a-f]{16}) timing=([0-9a-f]{16}) status=(ok|failed|kept)$")
SUMMARY = re.compile(r"^sweep \S+: measured (\d+), already stored (\d+), stored by other workers (\d+), "
                     r"failed (\d+)(?:, took over (\d+) expired claim\(s\))?$")

RUNNER = r"""
import pathlib, sys, time
from hwloop.devices.cpu import CpuDevice

delay, go, argv = float(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
asked = 0
_measure = CpuDevice.measure

def slow(self, requests, timing=None):
    global asked
    out = []
    for r in requests:
        time.sleep(delay)
        asked += 1
        out += _measure(self, [r], timing)
    return out

CpuDevice.measure = slow
from hwloop.cli import main
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
rc = main(argv)
print("device-requests", asked, flush=True)
sys.exit(rc)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    return env


def _files(tmp_path: Path) -> tuple[Path, Path]:
    profile = tmp_path / "cpu1.toml"
    profile.write_text('name = "cpu1"\nbackend = "cpu"\n[options]\nthreads = 1\n'
                       "[timing]\nwarmup = 1\nrepeats = 3\nmin_repeat_ms = 0.2\nmax_retries = 0\n")
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'name = "shared"\nkind = "layers"\nsampling = "random"\nn = {N}\nseed = 5\n'
                    '[space]\nop = ["linear", "conv2d"]\nin_channels = {min = 4, max = 64}\n'
                    "out_channels = {min = 4, max = 64}\nkernel = [1, 3]\nresolution = [4, 8]\n")
    return profile, spec


def _start(tmp_path: Path, url: str, go: Path, *, delay: float, lease: float, batch: int) -> subprocess.Popen[str]:
    """Start a sweep process that imports everything, then waits for ``go`` to exist (see :func:`_ready`)."""
    profile, spec = _files(tmp_path)
    argv = ["sweep", str(spec), "--device", str(profile), "--store", url, "--no-progress", "--log-stored",
            "--batch-size", str(batch), "--lease", str(lease)]
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(delay), str(go), *argv], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ready(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.stderr else "")


def _parse(out: str) -> tuple[list[tuple[str, str]], tuple[int, ...], int]:
    """(workload key, status) per stored line; the summary's numbers; how many requests the device was asked."""
    stored = [(m.group(2), m.group(4)) for m in map(STORED.match, out.splitlines()) if m]
    summaries = [m for m in map(SUMMARY.match, out.splitlines()) if m]
    assert len(summaries) == 1, out
    nums = tuple(int(g or 0) for g in summaries[0].groups())
    asked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("device-requests ")]
    assert len(asked) == 1, out
    return stored, nums, asked[0]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    admin = request.getfixturevalue("postgres_url")
    db = pg.create_database(admin)
    try:
        yield db
    finally:
        pg.drop_database(admin, db)


def _rows_per_key(url: str) -> dict[str, int]:
    with MeasurementStore(url) as st:
        df = st.to_dataframe(ok_only=False)
        with st._read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(claims_t)).scalar_one() == 0
    return df.groupby("workload_key").size().to_dict()


# --------------------------------------------------------------------------- four processes, one store
def test_four_processes_measure_each_layer_once_and_summaries_add_up(tmp_path: Path, url: str) -> None:
    go = tmp_path / "go"
    procs = [_start(tmp_path, url, go, delay=0.1, lease=10, batch=2) for _ in range(4)]
    _ready(*procs)  # all four start measuring at the same moment
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    parsed = [_parse(o) for o, _ in outs]
    keys = [k for stored, _, _ in parsed for k, _ in stored]
    assert all(s == "ok" for stored, _, _ in parsed for _, s in stored)  # no "kept": nobody measured a key twice
    assert len(keys) == len(set(keys)) == N
    assert sum(asked for _, _, asked in parsed) == N  # the devices were asked N requests in all
    for stored, (measured, already, others, failed, took), asked in parsed:
        assert measured == len(stored) == asked and failed == 0 and took == 0
        assert measured + already + others + failed == N
    assert sum(1 for _, nums, _ in parsed if nums[0] > 0) >= 2, parsed  # the work was shared
    per_key = _rows_per_key(url)
    assert len(per_key) == N and set(per_key.values()) == {1} and set(per_key) == set(keys)


# --------------------------------------------------------------------------- a dead worker
def test_sigkilled_worker_claims_are_taken_over_after_the_lease(tmp_path: Path, url: str) -> None:
    go_a, go_b = tmp_path / "go-a", tmp_path / "go-b"
    b = _start(tmp_path, url, go_b, delay=0.0, lease=4, batch=4)
    a = _start(tmp_path, url, go_a, delay=0.4, lease=4, batch=4)
    _ready(a, b)
    go_a.touch()
    assert a.stdout is not None
    lines = []
    for line in a.stdout:
        lines.append(line)
        if STORED.match(line.strip()):
            os.kill(a.pid, signal.SIGKILL)  # mid-batch: one stored, the rest of its batch still claimed
            break
    a.wait(timeout=30)
    assert a.returncode == -signal.SIGKILL
    stored_by_a = {m.group(2) for m in map(STORED.match, [ln.strip() for ln in lines]) if m}
    with MeasurementStore(url) as st:
        with st._read() as conn:
            held = {k for k, w in conn.execute(sa.select(claims_t.c.workload_key, claims_t.c.worker))
                    if f":{a.pid}:" in w}
        stored_now = set(st.to_dataframe(ok_only=False)["workload_key"])
    assert stored_by_a <= stored_now and held, "the killed worker held no claim; nothing was tested"
    unfinished = held - stored_now
    assert unfinished, "every claimed key was already stored"

    t0 = time.monotonic()
    go_b.touch()
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    stored, (measured, already, others, failed, took), asked = _parse(out)
    assert took == len(unfinished)  # exactly the dead worker's unfinished keys were taken over
    assert {k for k, _ in stored} == set(_rows_per_key(url)) - stored_now  # nothing measured twice
    assert measured == asked == N - len(stored_now) and already == len(stored_now) and others == failed == 0
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- in-process checks
def _requests(n: int = 6) -> list[MeasureRequest]:
    spec = SweepSpec.from_dict({"name": "t", "kind": "layers", "sampling": "random", "n": n, "seed": 0,
                                "space": {"op": ["linear"], "in_channels": {"min": 4, "max": 32},
                                          "out_channels": {"min": 4, "max": 32}}})
    return spec.requests()


def _plant(st: MeasurementStore, fp_key: str, key: str, worker: str, expires_in: float) -> None:
    with st._write() as conn:
        now = time.time()
        conn.execute(claims_t.insert().values(device_key=fp_key, workload_key=key, timing_key=T.key, worker=worker,
                                              claimed_at=now - 100, expires_at=now + expires_in))


def test_planted_claims_expired_are_taken_over_and_live_ones_awaited(url: str) -> None:
    reqs = _requests(6)
    dev = CpuDevice("cpu1", threads=1)
    fp = dev.fingerprint()
    with MeasurementStore(url) as st:
        _plant(st, fp.key, reqs[0].key, "ghost:1:dead", -30)   # a dead worker's lease, long expired
        _plant(st, fp.key, reqs[1].key, "ghost:2:dead", -1)
        _plant(st, fp.key, reqs[2].key, "ghost:3:slow", 2.5)   # alive for 2.5 s more, then never renewed
        t0 = time.monotonic()
        s = run_sweep(reqs, dev, st, T, progress=False, batch_size=2, lease_s=3)
        waited = time.monotonic() - t0
        assert (s.measured, s.skipped, s.others, s.failed, s.taken_over) == (6, 0, 0, 0, 3)
        assert waited >= 1.5  # it waited for the live lease instead of measuring under it
        with st._read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(claims_t)).scalar_one() == 0
        assert st.count() == 6


def test_key_stored_by_another_worker_while_claimed_is_counted_not_measured(url: str) -> None:
    reqs = _requests(4)
    dev = CpuDevice("cpu1", threads=1)
    fp = dev.fingerprint()
    with MeasurementStore(url) as st:
        q = ClaimQueue(st, fp, T, [r.key for r in reqs], lease_s=5)
        other = ClaimQueue(st, fp, T, [r.key for r in reqs], lease_s=5)
        try:
            assert q.next_batch(2) == [reqs[0].key, reqs[1].key]
            assert other.claim(4) == [reqs[2].key, reqs[3].key]  # the first two are held
            assert q.claim(4) == []  # everything left is held by the other worker
            assert st.add(fp, reqs[2], summarize([1.0, 1.1], T, request_key=reqs[2].key))
            assert q.claim(4) == [] and q.by_others == 0 and q.pending == 2  # stored, but still held
            other.release([reqs[2].key])  # its batch is done
            assert q.claim(4) == [] and q.by_others == 1 and q.pending == 1
            other.close()  # it gives reqs[3] back unmeasured
            assert q.claim(4) == [reqs[3].key] and q.finished
        finally:
            q.close()
            other.close()


def test_failure_stored_by_another_worker_is_not_retried_twice(url: str) -> None:
    reqs = _requests(2)
    dev = CpuDevice("cpu1", threads=1)
    fp = dev.fingerprint()
    bad = MeasureResult.failure(reqs[0].key, T, "RuntimeError: boom")
    with MeasurementStore(url) as st:
        st.add(fp, reqs[0], bad)  # failed before both sweeps started: each may retry it, once in all
        a = ClaimQueue(st, fp, T, [r.key for r in reqs])
        b = ClaimQueue(st, fp, T, [r.key for r in reqs])
        assert a.todo == b.todo == [r.key for r in reqs]
        assert a.claim(1) == [reqs[0].key]
        time.sleep(0.01)
        st.add(fp, reqs[0], bad)  # a's retry fails again (a newer failure row)
        a.release([reqs[0].key])
        assert b.claim(2) == [reqs[1].key] and b.by_others == 1  # b does not measure reqs[0] again
        a.close()
        b.close()


def test_store_without_claims_table_gains_it_and_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    reqs = _requests(3)
    fp = CpuDevice("cpu1", threads=1).fingerprint()
    with MeasurementStore(db) as st:
        for r in reqs:
            st.add(fp, r, summarize([1.0, 1.2], T, request_key=r.key))
    con = sqlite3.connect(db)
    con.execute("DROP TABLE claims")  # a store written before claims existed
    con.commit()
    con.close()
    with MeasurementStore(db) as st:
        assert st.count() == 3 and st.opened_version == 1
        assert "claims" in sa.inspect(st._engine).get_table_names()
        s = run_sweep(reqs, CpuDevice("cpu1", threads=1), st, T, progress=False)
        assert (s.measured, s.skipped) == (0, 3)


@pytest.mark.parametrize("bad", [0, 0.5, -3, float("nan"), float("inf"), "x", True])
def test_bad_lease_is_a_one_line_config_error(bad: object) -> None:
    with MeasurementStore("sqlite://") as st, pytest.raises(ConfigError, match="must be a number of seconds") as ei:
        run_sweep(_requests(1), CpuDevice(threads=1), st, T, progress=False, lease_s=bad)  # type: ignore[arg-type]
    assert "\n" not in str(ei.value)
