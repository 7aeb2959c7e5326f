"""``deploy``: install this exact hwloop version on a board and check the handshake.

Steps: build (or take) the wheel of the running hwloop, upload it over SFTP to
``<remote_dir>/wheels/`` together with the wheels of a local wheelhouse (see
:mod:`hwloop.remote.wheelhouse`), create ``<remote_dir>/venv`` with ``--system-site-packages``
(so the board's system torch, e.g. JetPack's, stays visible), install the wheel there with
``--no-deps`` and the agent's few requirements with ``--no-index --find-links`` (no internet
on the board, nothing taken from the host), then start ``<remote_dir>/venv/bin/python -m
hwloop agent`` and check its hello reports this hwloop version. Every remote command is a
fixed argv, shell-quoted; nothing comes from job data.

Example (needs a board)::

    from hwloop.devices import load_profile
    from hwloop.remote import deploy
    print(deploy(load_profile("jetson-orin"))["agent_command"])
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError, RemoteError
from hwloop.remote.wheelhouse import (
    AGENT_REQUIREMENTS,
    default_wheelhouse,
    download_hint,
    find_wheel,
    missing_requirements,
    parse_requirement,
    query_board,
    remote_run,
)

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


def _wheelhouse_files(wheelhouse: str | Path | None, device: str) -> tuple[Path, list[Path]]:
    if wheelhouse is None:
        path = default_wheelhouse(device)
        return path, sorted(path.glob("*.whl")) if path.is_dir() else []
    path = Path(wheelhouse).expanduser()
    if not path.is_dir():
        raise ConfigError(f"wheelhouse {path} is not a folder; pass a folder of .whl files (made by "
                          f"`hwloop devices wheelhouse {device}`)")
    return path, sorted(path.glob("*.whl"))


def _upload(sftp: Any, local: Path, remote: str) -> None:
    """Upload a wheelhouse wheel unless one of that name and size is there (released wheels do not change)."""
    try:
        if sftp.stat(remote).st_size == local.stat().st_size:
            return
    except OSError:
        pass
    sftp.put(str(local), remote)


def deploy(profile: Any, *, wheel: str | Path | None = None, wheelhouse: str | Path | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install this hwloop on the board of a ``remote`` profile, offline, and check the agent's handshake.

    The board needs no internet and nothing of hwloop's host-side dependencies: the hwloop wheel
    is installed with ``--no-deps``, then :data:`~hwloop.remote.wheelhouse.AGENT_REQUIREMENTS`
    with ``pip install --no-index --find-links <remote_dir>/wheels``, satisfied by the board's
    own packages (its system torch) or by the wheelhouse's wheels uploaded next to hwloop's.

    Args:
        profile: a :class:`~hwloop.devices.profiles.DeviceProfile` with ``backend = "remote"``.
        wheel: a prebuilt wheel of this exact version (default: build one from the checkout).
        wheelhouse: a folder of wheels for the board (default ``$HWLOOP_HOME/wheelhouse/<device>``
            when it exists; see :func:`~hwloop.remote.wheelhouse.build_wheelhouse`).
        progress: called with a line per step (the CLI prints them).

    Returns:
        ``{"wheel", "venv", "agent_command", "hwloop", "hwloop_path", "installed", "fingerprint"}``
        (``installed``: the agent requirements that came from the wheelhouse).

    Raises:
        ConfigError: not a remote profile, a bad wheel or wheelhouse, or a requirement the board
            lacks with no wheel for it in the wheelhouse (the message names it and how to get it).
    """
    from hwloop import __version__
    from hwloop.remote._ssh import ConnectionConfig, connect_ssh
    from hwloop.remote.device import RemoteDevice

    say = progress or (lambda _m: None)
    if getattr(profile, "backend", None) != "remote":
        raise ConfigError(f"device {getattr(profile, 'name', profile)!r} is not a remote device; deploy needs "
                          "backend = 'remote'")
    cfg = ConnectionConfig.from_dict(profile.connection)
    house, extra = _wheelhouse_files(wheelhouse, profile.name)
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
        extra = [p for p in extra if not p.name.startswith("hwloop-")]
        rdir = cfg.remote_dir.rstrip("/")
        rwheels = f"{rdir}/wheels"
        remote_whl = f"{rwheels}/{whl.name}"
        client = connect_ssh(cfg, profile.name)
        try:
            sftp = client.open_sftp()
            try:
                for d in (rdir, rwheels):
                    try:
                        sftp.stat(d)
                    except OSError:
                        sftp.mkdir(d)
                say(f"uploading {whl.name}" + (f" and {len(extra)} wheels from {house}" if extra else "")
                    + f" to {cfg.address}:{rwheels}/")
                sftp.put(str(whl), remote_whl)  # always: a rebuilt checkout keeps its version
                for p in extra:
                    _upload(sftp, p, f"{rwheels}/{p.name}")
                uploaded = sftp.listdir(rwheels)
            finally:
                sftp.close()
            # before touching the venv: what the board's Python (seen through --system-site-packages) has
            board = query_board(client, cfg.python, [parse_requirement(r).name for r in AGENT_REQUIREMENTS])
            missing = missing_requirements(board, AGENT_REQUIREMENTS)
            for req in missing:
                if find_wheel(req, uploaded, board) is None:
                    raise ConfigError(f"the board's {board.describe()} lacks {req}, which the agent needs, and the "
                                      f"wheelhouse {house} has no wheel of it for that platform: "
                                      + download_hint(profile.name, req, board, house))
            venv = f"{rdir}/venv"
            vpy = f"{venv}/bin/python"
            say(f"creating {venv} (system site packages visible: the board's torch)")
            remote_run(client, [cfg.python, "-m", "venv", "--system-site-packages", venv], "creating the venv")
            # venv (Python < 3.12) seeds its own old setuptools, which would shadow the system one that
            # the board's torch requires; drop it so the system packages show through
            # pip on the board reads no pip.conf and no PIP_* variables: only the uploaded wheels count
            vpip = ["env", "PIP_CONFIG_FILE=/dev/null", vpy, "-m", "pip", "--isolated"]
            remote_run(client, [*vpip, "uninstall", "-y", "-q", "setuptools"],
                       "removing the venv's seeded setuptools")
            pip = [*vpip, "install", "-q", "--disable-pip-version-check", "--no-index"]
            say("installing hwloop (--no-deps)" + (f" and {', '.join(missing)} from the wheelhouse" if missing else
                                                    f"; the board's own {', '.join(AGENT_REQUIREMENTS)} serve"))
            remote_run(client, [*pip, "--force-reinstall", "--no-deps", remote_whl], "pip install (hwloop)")
            try:  # also checks that what the board has (torch's own dependencies included) is consistent
                remote_run(client, [*pip, "--find-links", rwheels, *AGENT_REQUIREMENTS],
                           "pip install (agent requirements)")
            except RemoteError as e:
                m = re.search(r"No matching distribution found for (\S+)", str(e))
                if m is None:
                    raise
                raise ConfigError(f"the board lacks {m.group(1)} (needed by the agent's {', '.join(AGENT_REQUIREMENTS)}) "
                                  f"and the wheelhouse {house} has no wheel of it for {board.describe()}: "
                                  + download_hint(profile.name, m.group(1), board, house)) from None
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
            "hwloop_path": hello.get("capabilities", {}).get("hwloop_path"), "installed": missing,
            "fingerprint": fp.to_dict()}
