"""``deploy``: install this exact hwloop version on a board and check the handshake.

Steps: build (or take) the wheel of the running hwloop, upload it over SFTP to
``<remote_dir>/wheels/``, create ``<remote_dir>/venv`` with ``--system-site-packages`` (so
the board's system torch, e.g. JetPack's, stays visible), ``pip install`` the wheel there,
then start ``<remote_dir>/venv/bin/python -m hwloop agent`` and check its hello reports
this hwloop version. Every remote command is a fixed argv, shell-quoted; nothing comes
from job data.

Example (needs a board)::

    from hwloop.devices import load_profile
    from hwloop.remote import deploy
    print(deploy(load_profile("jetson-orin"))["agent_command"])
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError, RemoteError

__all__ = ["deploy", "build_wheel", "venv_agent_command"]


def venv_agent_command(remote_dir: str) -> tuple[str, ...]:
    """The argv that starts the deployed agent."""
    return (f"{remote_dir.rstrip('/')}/venv/bin/python", "-m", "hwloop", "agent")


def build_wheel(out_dir: Path) -> Path:
    """Build the wheel of the running hwloop from its source checkout (``pip wheel --no-deps``).

    Raises:
        ConfigError: hwloop is not running from a checkout whose version matches.
    """
    from hwloop import __version__

    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"hwloop {__version__} is not running from a source checkout ({root}); pass --wheel "
                          "with the wheel of this exact version")
    import shutil

    src = out_dir / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    shutil.copytree(root / "hwloop", src / "hwloop", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir),
           str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"building the hwloop wheel failed: {tail[0]}")
    wheels = sorted(out_dir.glob(f"hwloop-{__version__}-*.whl"))
    if not wheels:
        raise RemoteError(f"pip built no hwloop-{__version__} wheel in {out_dir}")
    return wheels[-1]


def _run(client: Any, argv: Sequence[str], what: str, timeout_s: float = 900.0) -> str:
    cmd = shlex.join(list(argv))
    _, stdout, stderr = client.exec_command(cmd, timeout=timeout_s)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    status = stdout.channel.recv_exit_status()
    if status != 0:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"{what} failed on the board (exit {status}, `{cmd}`): {tail[0]}")
    return out


def deploy(profile: Any, *, wheel: str | Path | None = None, offline: bool = False,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install this hwloop on the board of a ``remote`` profile and check the agent's handshake.

    Args:
        profile: a :class:`~hwloop.devices.profiles.DeviceProfile` with ``backend = "remote"``.
        wheel: a prebuilt wheel of this exact version (default: build one from the checkout).
        offline: pass ``--no-index`` to pip on the board (dependencies must already be there).
        progress: called with a line per step (the CLI prints them).

    Returns:
        ``{"wheel", "venv", "agent_command", "hwloop", "fingerprint"}``.
    """
    from hwloop import __version__
    from hwloop.remote._ssh import ConnectionConfig, connect_ssh
    from hwloop.remote.device import RemoteDevice

    say = progress or (lambda _m: None)
    if getattr(profile, "backend", None) != "remote":
        raise ConfigError(f"device {getattr(profile, 'name', profile)!r} is not a remote device; deploy needs "
                          "backend = 'remote'")
    cfg = ConnectionConfig.from_dict(profile.connection)
    with tempfile.TemporaryDirectory(prefix="hwloop-wheel-") as tmp:
        if wheel is None:
            say("building the hwloop wheel")
            whl = build_wheel(Path(tmp))
        else:
            whl = Path(wheel)
            if not whl.is_file():
                raise ConfigError(f"wheel {whl} does not exist")
            if f"-{__version__}-" not in whl.name:
                raise ConfigError(f"wheel {whl.name} is not hwloop {__version__}; deploy installs the host's version")
        rdir = cfg.remote_dir.rstrip("/")
        remote_whl = f"{rdir}/wheels/{whl.name}"
        client = connect_ssh(cfg, profile.name)
        try:
            say(f"uploading {whl.name} to {cfg.address}:{remote_whl}")
            sftp = client.open_sftp()
            try:
                for d in (rdir, f"{rdir}/wheels"):
                    try:
                        sftp.stat(d)
                    except OSError:
                        sftp.mkdir(d)
                sftp.put(str(whl), remote_whl)
            finally:
                sftp.close()
            venv = f"{rdir}/venv"
            say(f"creating {venv} (system site packages visible: the board's torch)")
            _run(client, [cfg.python, "-m", "venv", "--system-site-packages", venv], "creating the venv")
            # venv (Python < 3.12) seeds its own old setuptools, which would shadow the system one that
            # the board's torch requires; drop it so the system packages show through
            _run(client, [f"{venv}/bin/python", "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
                 "removing the venv's seeded setuptools")
            pip = [f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            if offline:
                pip.append("--no-index")
            say("installing the wheel and missing dependencies")
            _run(client, [*pip, remote_whl], "pip install")
            _run(client, [*pip, "--force-reinstall", "--no-deps", remote_whl], "pip install (exact files)")
        finally:
            client.close()
    cmd = venv_agent_command(rdir)
    env = {k: v for k, v in cfg.env.items() if k != "PYTHONPATH"}  # the venv must run its installed copy
    say("checking the handshake with the deployed agent")
    conn = {**dict(profile.connection), "agent_command": list(cmd), "env": env}
    dev = RemoteDevice(profile.name, timing=profile.timing, connection=conn)
    try:
        fp = dev.fingerprint()
        hello = dev.agent_info
    finally:
        dev.close()
    return {"wheel": whl.name, "venv": f"{rdir}/venv", "agent_command": list(cmd), "hwloop": hello.get("hwloop"),
            "hwloop_path": hello.get("capabilities", {}).get("hwloop_path"), "fingerprint": fp.to_dict()}
