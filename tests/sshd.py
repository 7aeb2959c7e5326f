"""A real OpenSSH server for tests: ``/usr/sbin/sshd -D -e -f cfg`` on a free loopback port.

Host and client keys are generated with ``ssh-keygen`` in a temp dir; the config there
points ``AuthorizedKeysFile`` at it (StrictModes no, UsePAM no, key auth only,
``PermitRootLogin prohibit-password`` since the tests run as root). :meth:`Sshd.stop`
kills the server *and* its per-connection children (a board going down);
:meth:`Sshd.start` brings it back on the same port with the same keys.

Example::

    with Sshd(tmp_path) as srv:
        conn = srv.connection(agent_command=[sys.executable, "-m", "hwloop", "agent"])
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Sshd", "free_port", "SSHD", "REPO", "board_python", "repack_wheel"]

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (sessions call setsid, so a process group is not enough)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: list[int] = []
    frontier = [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "hwloop-test", "-f", str(path)], check=True)
    return path


class Sshd:
    """One sshd on ``host:port`` with its own keys and config under ``root``.

    Args:
        root: a temp dir for keys, config, pid file and the known_hosts written for hwloop.
        host: listen address (127.0.0.1, or an address inside a network namespace).
        netns: run sshd inside this network namespace (``ip netns exec``).
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.netns = netns
        self.port = port or (free_port() if netns is None else 2222)
        self.host_key = keygen(self.root / "host_ed25519")
        self.client_key = keygen(self.root / "client_ed25519")
        (self.root / "authorized_keys").write_text((self.root / "client_ed25519.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        self.config = self.root / "sshd_config"
        self.config.write_text("\n".join([
            f"ListenAddress {host}", f"Port {self.port}", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", f"PidFile {self.root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "ChallengeResponseAuthentication no",
            "ClientAliveInterval 1", "ClientAliveCountMax 3", "MaxStartups 50", "MaxSessions 50",
            "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 10.0) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir (the package creates it)
        argv = [SSHD, "-D", "-e", "-f", str(self.config)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"),
                                     start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {(self.root / 'sshd.log').read_text()}")
            if self._banner():
                return self
            time.sleep(0.05)
        raise RuntimeError("sshd did not come up")

    def _banner(self) -> bool:
        if self.netns:
            p = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                f"import socket; s=socket.create_connection(('{self.host}', {self.port}), 1); "
                                "assert s.recv(4) == b'SSH-'"], capture_output=True, check=False)
            return p.returncode == 0
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(4) == b"SSH-"
        except OSError:
            return False

    def stop(self) -> None:
        """Kill sshd and every process it forked, agents included (the board goes down)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ client side
    def host_public_key(self) -> str:
        return (self.root / "host_ed25519.pub").read_text().split()[1]

    def write_known_hosts(self, path: Path | None = None) -> Path:
        """A known_hosts file trusting this server's host key."""
        path = path or self.known_hosts
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        path.write_text(f"{name} ssh-ed25519 {self.host_public_key()}\n")
        return path

    def connection(self, **overrides: Any) -> dict[str, Any]:
        """A ``[connection]`` table for this server, running the checkout's agent with this Python."""
        conn: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": "root", "key_file": str(self.client_key),
            "known_hosts": str(self.write_known_hosts()), "allow_agent": False,
            "backend": {"name": "cpu", "options": {"threads": 1}},
            "agent_command": [sys.executable, "-m", "hwloop", "agent"],
            "env": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
            "connect_timeout_s": 5.0, "heartbeat_timeout_s": 10.0, "backoff_s": 0.3, "max_reconnects": 8,
        }
        conn.update(overrides)
        return conn


# ----------------------------------------------------------------------------- a board's Python
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: tuple[str, ...]) -> list[object]:
    """The installed distributions ``names`` need (their non-extra requirements, recursively)."""
    from importlib.metadata import PackageNotFoundError, distribution

    seen: dict[str, object] = {}
    todo = list(names)
    while todo:
        n = todo.pop()
        if _norm(n) in seen:
            continue
        try:
            d = distribution(n)
        except PackageNotFoundError:
            continue  # an optional platform dependency this machine does not have
        seen[_norm(n)] = d
        for r in d.requires or []:
            if "extra ==" not in r:
                todo.append(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
    return list(seen.values())


def board_python(root: Path, packages: tuple[str, ...] = ("torch", "numpy"), exclude: tuple[str, ...] = ()) -> Path:
    """A stand-alone Python install at ``root`` whose site-packages hold only ``packages`` and their deps.

    Like a vendor image (JetPack: the system Python with torch and numpy): its interpreter is a copy of
    this machine's base interpreter binary, its standard library is linked from the base install, and
    its own ``lib/pythonX.Y/site-packages`` links just the named distributions (files and
    ``.dist-info``) from the test venv, minus ``exclude``. Neither the test venv's other packages nor
    the base interpreter's site-packages are visible, also not to a ``venv --system-site-packages``
    made from it. Returns the interpreter's path.
    """
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    base = Path(os.path.realpath(sys._base_executable))  # type: ignore[attr-defined]
    stdlib = Path(sys.base_prefix) / "lib" / ver
    (root / "bin").mkdir(parents=True)
    shutil.copy2(base, root / "bin" / ver)
    os.symlink(ver, root / "bin" / "python3")
    lib = root / "lib" / ver
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages"):
            os.symlink(entry, lib / entry.name)
    site = lib / "site-packages"
    site.mkdir()
    skip = {_norm(e) for e in exclude}
    for dist in _closure(packages):
        if _norm(dist.metadata["Name"]) in skip:  # type: ignore[attr-defined]
            continue
        for top in {f.parts[0] for f in dist.files or []}:  # type: ignore[attr-defined]
            src = Path(dist.locate_file(top))  # type: ignore[attr-defined]
            if top not in ("..", "__pycache__") and src.exists() and not (site / top).exists():
                os.symlink(src, site / top)
    return root / "bin" / "python3"


def repack_wheel(dist_name: str, out_dir: Path) -> Path:
    """Re-pack an installed distribution (this machine's numpy, say) into a wheel, as a wheel cache holds.

    Writes ``out_dir/<name>-<version>-<tags>.whl`` from the files its RECORD lists (bytecode and
    scripts left out) with a fresh RECORD, for tests that must install a dependency offline.
    """
    import base64
    import hashlib
    import zipfile
    from importlib.metadata import distribution

    d = distribution(dist_name)
    info = next(f for f in d.files or [] if f.name == "WHEEL" and f.parent.name.endswith(".dist-info"))
    tags = [ln.split(":", 1)[1].strip() for ln in Path(d.locate_file(info)).read_text().splitlines()
            if ln.startswith("Tag:")]
    pys, abis, plats = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    name = re.sub(r"[-_.]+", "_", d.metadata["Name"])
    whl = out_dir / f"{name}-{d.version}-{'.'.join(pys)}-{'.'.join(abis)}-{'.'.join(plats)}.whl"
    drop = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
    record: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in d.files or []:
            arc = f.as_posix()
            if arc.startswith("..") or "__pycache__" in f.parts or (f.parent.name.endswith(".dist-info")
                                                                    and f.name in drop):
                continue
            data = Path(d.locate_file(f)).read_bytes()
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        rec = f"{info.parent.as_posix()}/RECORD"
        z.writestr(rec, "\n".join([*record, f"{rec},,"]) + "\n")
    return whl
