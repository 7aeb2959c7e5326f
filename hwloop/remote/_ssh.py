"""SSH plumbing for remote devices: the connection config, host-key policy and connecting.

paramiko is imported lazily. Host keys live in hwloop's own ``known_hosts`` file
(``$HWLOOP_HOME/known_hosts``, default ``~/.hwloop/known_hosts``), never ``~/.ssh``; an
unknown or changed key is refused with its SHA256 fingerprint (``RejectPolicy`` semantics,
never auto-add). Authentication is by key file or SSH agent only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError, HostKeyError, RemoteError

__all__ = ["ConnectionConfig", "ConnectionLost", "default_known_hosts", "host_key_fingerprint", "connect_ssh",
           "fetch_host_key", "trust_host_key", "known_host_key", "DEFAULT_AGENT_COMMAND"]

DEFAULT_AGENT_COMMAND = (".hwloop/venv/bin/python", "-m", "hwloop", "agent")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConnectionLost(RemoteError):
    """The link to the board dropped (refused, reset, silent); the host may reconnect."""


def default_known_hosts() -> Path:
    """``$HWLOOP_HOME/known_hosts`` when ``HWLOOP_HOME`` is set, else ``~/.hwloop/known_hosts``."""
    from hwloop.paths import hwloop_home

    return hwloop_home() / "known_hosts"


def host_key_fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach a board (the ``[connection]`` table of a ``remote`` profile).

    Attributes:
        host / port / user: where to log in (``user`` defaults to the local user name).
        key_file: private key; when unset, the SSH agent (``allow_agent``) and default keys are used.
        known_hosts: hwloop's host-key file (default :func:`default_known_hosts`).
        backend: the board's local backend, ``"cpu"`` / ``"cuda"`` or ``{name = "cuda", options = {...}}``.
        agent_command: argv that starts the agent on the board (joined with shell quoting, from the
            profile only); default: the venv ``hwloop devices deploy`` creates.
        env: environment variables for the agent (``env K=V`` is prefixed to the argv).
        connect_timeout_s / handshake_timeout_s: limits to open SSH and to get the agent's hello.
        job_timeout_s: per-job limit the agent enforces by killing its worker (0: from the timing).
        heartbeat_timeout_s: silence after which the link counts as dropped.
        max_reconnects / backoff_s / backoff_max_s: reconnect attempts without progress, and their backoff.
        batch_size: jobs per ``measure`` message (two batches are kept in flight).
        remote_dir: where ``deploy`` puts wheels and the venv (relative to the login directory).
        python: the board's Python used to create the venv.

    Example:
        >>> ConnectionConfig.from_dict({"host": "orin.local", "user": "nvidia"}).port
        22
    """

    host: str
    port: int = 22
    user: str = ""
    key_file: str | None = None
    known_hosts: str | None = None
    allow_agent: bool = True
    backend: Mapping[str, Any] = field(default_factory=lambda: {"name": "cpu", "options": {}})
    agent_command: tuple[str, ...] = DEFAULT_AGENT_COMMAND
    env: Mapping[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 10.0
    handshake_timeout_s: float = 120.0
    job_timeout_s: float = 0.0
    heartbeat_timeout_s: float = 15.0
    max_reconnects: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    batch_size: int = 32
    remote_dir: str = ".hwloop"
    python: str = "python3"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"connection host={self.host!r} must be a non-empty string")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ConfigError(f"connection port={self.port!r} must be an integer in 1..65535")
        if not self.user:
            import getpass

            set_(self, "user", getpass.getuser())
        b = self.backend
        if isinstance(b, str):
            b = {"name": b, "options": {}}
        if not isinstance(b, Mapping) or not isinstance(b.get("name"), str) or set(b) - {"name", "options"} \
                or not isinstance(b.get("options", {}), Mapping):
            raise ConfigError(f"connection backend={self.backend!r} must be a name like 'cuda' or "
                              "{name = 'cuda', options = {...}}")
        if b["name"] == "remote":
            raise ConfigError("connection backend 'remote' is not allowed; name the board's local backend "
                              "(cpu, cuda, tvm)")
        set_(self, "backend", {"name": b["name"], "options": dict(b.get("options", {}))})
        cmd = self.agent_command
        if isinstance(cmd, str) or not cmd or not all(isinstance(a, str) and a for a in cmd):
            raise ConfigError(f"connection agent_command={cmd!r} must be a non-empty list of strings (argv), "
                              "not a shell string")
        set_(self, "agent_command", tuple(cmd))
        if not isinstance(self.env, Mapping):
            raise ConfigError(f"connection env={self.env!r} must be a table of NAME = 'value'")
        for k, v in self.env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k) or not isinstance(v, str):
                raise ConfigError(f"connection env entry {k!r}={v!r}: names must match [A-Za-z_][A-Za-z0-9_]* "
                                  "and values must be strings")
        set_(self, "env", dict(self.env))
        for n in ("connect_timeout_s", "handshake_timeout_s", "heartbeat_timeout_s", "backoff_s", "backoff_max_s"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"connection {n}={v!r} must be a number > 0")
            set_(self, n, float(v))
        if not isinstance(self.job_timeout_s, (int, float)) or self.job_timeout_s < 0:
            raise ConfigError(f"connection job_timeout_s={self.job_timeout_s!r} must be a number >= 0")
        set_(self, "job_timeout_s", float(self.job_timeout_s))
        for n, lo in (("max_reconnects", 0), ("batch_size", 1)):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"connection {n}={v!r} must be an integer >= {lo}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConnectionConfig:
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown connection key(s) {sorted(extra)}; allowed: {sorted(known)}")
        if "host" not in d:
            raise ConfigError("a remote device's [connection] needs 'host'")
        kw = dict(d)
        if isinstance(kw.get("agent_command"), list):
            kw["agent_command"] = tuple(kw["agent_command"])
        return cls(**kw)

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts).expanduser() if self.known_hosts else default_known_hosts()

    @property
    def address(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        """The known_hosts entry name (``[host]:port`` off port 22, as OpenSSH writes it)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def remote_command(self, argv: tuple[str, ...] | None = None) -> str:
        """The exec string: the argv (profile data only) shell-quoted, with ``env K=V`` in front."""
        args = list(argv or self.agent_command)
        if self.env:
            args = ["env", *(f"{k}={v}" for k, v in sorted(self.env.items())), *args]
        return shlex.join(args)


def known_host_key(cfg: ConnectionConfig) -> Any | None:
    """The key stored for the board in hwloop's known_hosts, or None."""
    import paramiko

    hk = paramiko.HostKeys()
    if cfg.known_hosts_path.is_file():
        hk.load(str(cfg.known_hosts_path))
    entry = hk.lookup(cfg.host_key_name)
    if not entry:
        return None
    return next(iter(entry.values()))


def _missing_policy() -> Any:
    import paramiko

    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        """RejectPolicy with a useful message: the fingerprint and how to trust it."""

        def __init__(self, cfg: ConnectionConfig, name: str) -> None:
            self.cfg, self.name = cfg, name

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyError(f"host key of {hostname} ({key.get_name()} {host_key_fingerprint(key)}) is not in "
                               f"{self.cfg.known_hosts_path}; check it and run `hwloop devices trust {self.name}`")

    return RefuseUnknown


def connect_ssh(cfg: ConnectionConfig, name: str) -> Any:
    """An authenticated ``paramiko.SSHClient``; host keys from hwloop's known_hosts only.

    Raises:
        HostKeyError: unknown or changed host key (never auto-added).
        RemoteError: authentication failed (key or agent only; no passwords).
        ConnectionLost: refused, unreachable, timed out, reset (worth retrying).
    """
    import paramiko

    client = paramiko.SSHClient()
    kh = cfg.known_hosts_path
    if kh.is_file():
        client.load_host_keys(str(kh))
    client.set_missing_host_key_policy(_missing_policy()(cfg, name))
    key_file = str(Path(cfg.key_file).expanduser()) if cfg.key_file else None
    if key_file and not Path(key_file).is_file():
        raise ConfigError(f"device {name!r}: key_file {key_file} does not exist")
    try:
        client.connect(cfg.host, port=cfg.port, username=cfg.user, key_filename=key_file,
                       allow_agent=cfg.allow_agent, look_for_keys=key_file is None and cfg.allow_agent,
                       timeout=cfg.connect_timeout_s, banner_timeout=cfg.connect_timeout_s,
                       auth_timeout=cfg.connect_timeout_s, channel_timeout=cfg.connect_timeout_s,
                       password=None, passphrase=None)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(f"host key of {cfg.host_key_name} CHANGED: the board offers {e.key.get_name()} "
                           f"{host_key_fingerprint(e.key)} but {kh} has {host_key_fingerprint(e.expected_key)}; "
                           f"if the board was reinstalled run `hwloop devices trust {name}`") from e
    except paramiko.PasswordRequiredException as e:
        client.close()
        raise RemoteError(f"key {key_file} is encrypted; load it into ssh-agent instead") from e
    except paramiko.AuthenticationException as e:
        client.close()
        how = f"key {key_file}" if key_file else "the SSH agent / default keys"
        raise RemoteError(f"authentication as {cfg.address} with {how} failed (key or agent only): {e}") from e
    except (OSError, socket.timeout, EOFError, paramiko.SSHException) as e:
        client.close()
        raise ConnectionLost(f"cannot reach {cfg.address}: {type(e).__name__}: {e}") from e
    return client


def fetch_host_key(cfg: ConnectionConfig) -> Any:
    """The host key the board presents (no authentication happens)."""
    import paramiko

    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s)
    except OSError as e:
        raise RemoteError(f"cannot reach {cfg.host}:{cfg.port}: {e}") from e
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=cfg.connect_timeout_s)
        return t.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as e:
        raise RemoteError(f"SSH handshake with {cfg.host}:{cfg.port} failed: {e}") from e
    finally:
        t.close()


def trust_host_key(cfg: ConnectionConfig, key: Any) -> Path:
    """Record ``key`` for the board in hwloop's known_hosts (replacing an old key); returns the file."""
    import paramiko

    path = cfg.known_hosts_path
    path.parent.mkdir(parents=True, exist_ok=True)
    hk = paramiko.HostKeys()
    if path.is_file():
        hk.load(str(path))
    name = cfg.host_key_name
    if name in hk:
        del hk[name]
    hk.add(name, key.get_name(), key)
    tmp = path.with_suffix(".tmp")
    hk.save(str(tmp))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
