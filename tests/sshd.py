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
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Sshd", "free_port", "SSHD", "REPO"]

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
