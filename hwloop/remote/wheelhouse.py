"""What the board's agent needs, what the board has, and the wheelhouse that fills the gap.

The agent (``python -m hwloop agent``) imports only the standard library, torch and numpy
(:data:`AGENT_REQUIREMENTS`); every other hwloop dependency (pandas, typer, XGBoost, ...) is
host-side. ``deploy`` therefore installs the hwloop wheel with ``--no-deps`` and then the
agent's requirements with ``pip install --no-index --find-links <remote_dir>/wheels``: what
the board's Python already has (a vendor image's torch) is used as is, and anything missing
must come from a *wheelhouse*, a local folder of wheels for the board's platform uploaded
over SFTP. :func:`build_wheelhouse` fills one (``hwloop devices wheelhouse``): it asks the
board what it has and which wheel tags it accepts, then runs ``pip download
--only-binary=:all: --platform … --python-version …`` on the host, from PyPI or from a local
wheel cache (``--find-links``, fully offline).

Example (needs a board)::

    from hwloop.devices import load_profile
    from hwloop.remote.wheelhouse import build_wheelhouse
    print(build_wheelhouse(load_profile("jetson-orin"))["saved"])
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError, RemoteError

__all__ = ["AGENT_REQUIREMENTS", "BoardPython", "query_board", "default_wheelhouse", "wheel_tags",
           "missing_requirements", "find_wheel", "build_wheelhouse", "download_hint", "remote_run",
           "parse_requirement"]

#: What ``python -m hwloop agent`` imports beyond the standard library and hwloop itself
#: (checked by tests/test_remote.py on a board Python that has nothing else).
AGENT_REQUIREMENTS: tuple[str, ...] = ("torch>=2.2", "numpy>=1.24")

#: Run on the board as ``python -c _PROBE name...``: its Python version, wheel tags, and the
#: installed version of each named distribution (null when absent). A fixed program.
_PROBE = r"""
import json, platform, sys, sysconfig
from importlib import metadata
try:
    from pip._vendor.packaging import tags as _tags
    tags = [str(t) for t in _tags.sys_tags()]
except Exception:
    tags = []
have = {}
for n in sys.argv[1:]:
    try:
        have[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
        have[n] = None
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "implementation": sys.implementation.name,
                  "platform": sysconfig.get_platform(), "libc": list(platform.libc_ver()),
                  "executable": sys.executable, "tags": tags, "have": have}))
"""


def _packaging() -> Any:
    import importlib

    try:
        base = "packaging"
        packaging = importlib.import_module(base)
    except ImportError:  # pragma: no cover - pip always vendors it
        base = "pip._vendor.packaging"
        packaging = importlib.import_module(base)
    for sub in ("requirements", "specifiers", "version"):  # attributes of the package once imported
        importlib.import_module(f"{base}.{sub}")
    return packaging


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> Any:
    """A ``packaging`` Requirement, or a one-line ConfigError naming the bad text."""
    req_mod = _packaging().requirements
    try:
        req = req_mod.Requirement(text)
    except req_mod.InvalidRequirement as e:
        raise ConfigError(f"requirement {text!r} is not a valid pip requirement ({str(e).splitlines()[0]}); "
                          "expected e.g. 'numpy>=1.24'") from None
    if req.url:
        raise ConfigError(f"requirement {text!r} is a URL; the wheelhouse takes names with versions only")
    return req


class BoardPython:
    """What :data:`_PROBE` reported about one Python on the board."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.python: str = str(info["python"])
        self.implementation: str = str(info.get("implementation", "cpython"))
        self.platform: str = str(info.get("platform", ""))
        self.executable: str = str(info.get("executable", ""))
        self.have: dict[str, str | None] = dict(info.get("have") or {})
        libc = info.get("libc") or ["", ""]
        self.tags: list[str] = list(info.get("tags") or []) or _fallback_tags(self.python, self.platform, libc)

    @property
    def nodot(self) -> str:
        return self.python.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        """The board's platform tags, most specific first (``manylinux_2_35_aarch64``, …, ``linux_aarch64``)."""
        out: list[str] = []
        for t in self.tags:
            p = t.split("-")[-1]
            if p != "any" and p not in out:
                out.append(p)
        return out

    @property
    def abis(self) -> list[str]:
        out: list[str] = []
        for t in self.tags:
            a = t.split("-")[1]
            if a not in out:
                out.append(a)
        return out

    def describe(self) -> str:
        return f"Python {self.python} on {self.platforms[0] if self.platforms else self.platform}"


def _fallback_tags(python: str, platform: str, libc: Sequence[str]) -> list[str]:
    """cp3X tags when the board's Python has no pip to ask (glibc Linux only; otherwise pure wheels)."""
    nodot = python.replace(".", "")
    arch = platform.split("-", 1)[-1].replace("-", "_").replace(".", "_") if platform else ""
    plats: list[str] = []
    m = re.fullmatch(r"2\.(\d+)", str(libc[1])) if len(libc) > 1 and libc[0] == "glibc" else None
    if platform.startswith("linux") and m:
        for minor in range(int(m.group(1)), 4, -1):
            plats.append(f"manylinux_2_{minor}_{arch}")
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(minor)
            if legacy:
                plats.append(f"{legacy}_{arch}")
    if arch:
        plats.append(f"linux_{arch}" if platform.startswith("linux") else f"{platform.replace('-', '_')}")
    tags = [f"cp{nodot}-{abi}-{p}" for abi in (f"cp{nodot}", "abi3", "none") for p in plats]
    return tags + [f"py3-none-{p}" for p in plats] + [f"py{nodot}-none-any", "py3-none-any"]


def remote_run(client: Any, argv: Sequence[str], what: str, timeout_s: float = 900.0) -> str:
    """Run a fixed argv on the board (shell-quoted); a non-zero exit is a RemoteError naming it."""
    cmd = shlex.join(list(argv))
    _, stdout, stderr = client.exec_command(cmd, timeout=timeout_s)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    status = stdout.channel.recv_exit_status()
    if status != 0:
        raise RemoteError(f"{what} failed on the board (exit {status}, `{cmd}`): {_last_error_line(err or out)}")
    return out


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("ERROR:") or "Error" in ln.split(":")[0]]
    return (errs or lines or ["no output"])[-1]


def query_board(client: Any, python: str, names: Iterable[str]) -> BoardPython:
    """Ask ``python`` on the board for its version, wheel tags and the versions of ``names``."""
    out = remote_run(client, [python, "-c", _PROBE, *names], f"probing {python}", timeout_s=120.0)
    try:
        return BoardPython(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise RemoteError(f"{python} on the board printed no readable probe result: {out.strip()[:200]!r}") from None


def default_wheelhouse(device: str) -> Path:
    """``$HWLOOP_HOME/wheelhouse/<device>`` (``HWLOOP_HOME`` defaults to ``~/.hwloop``)."""
    from hwloop.paths import hwloop_home

    return hwloop_home() / "wheelhouse" / device


def wheel_tags(filename: str) -> tuple[str, str, set[str]] | None:
    """``(normalized name, version, {python-abi-platform tags})`` of a wheel file name, or None."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return None
    name, ver, pys, abis, plats = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
    tags = {f"{p}-{a}-{pl}" for p in pys.split(".") for a in abis.split(".") for pl in plats.split(".")}
    return _norm(name), ver, tags


def missing_requirements(board: BoardPython, requirements: Iterable[str]) -> list[str]:
    """The requirements the board's Python does not satisfy (absent, or a version outside the range)."""
    version = _packaging().version
    out: list[str] = []
    for text in requirements:
        req = parse_requirement(text)
        have = board.have.get(req.name)
        if have is None:
            have = next((v for k, v in board.have.items() if _norm(k) == _norm(req.name)), None)
        ok = False
        if have is not None:
            try:
                ok = req.specifier.contains(version.Version(have), prereleases=True)
            except version.InvalidVersion:
                ok = False
        if not ok:
            out.append(text)
    return out


def find_wheel(requirement: str, wheels: Iterable[str], board: BoardPython) -> str | None:
    """A wheel file name in ``wheels`` that installs ``requirement`` on ``board``, or None."""
    req = parse_requirement(requirement)
    version = _packaging().version
    accepted = set(board.tags)
    for fn in wheels:
        parsed = wheel_tags(fn)
        if parsed is None or parsed[0] != _norm(req.name) or not (parsed[2] & accepted):
            continue
        try:
            if req.specifier.contains(version.Version(parsed[1]), prereleases=True):
                return fn
        except version.InvalidVersion:
            continue
    return None


def download_hint(device: str, requirement: str, board: BoardPython, wheelhouse: Path) -> str:
    """How to get a wheel for ``requirement``: the hwloop command, or pip download by hand."""
    plats = " ".join(f"--platform {p}" for p in board.platforms[:3])
    names = {_norm(parse_requirement(r).name) for r in AGENT_REQUIREMENTS}
    add = "" if _norm(parse_requirement(requirement).name) in names else f" --add {shlex.quote(requirement)}"
    return (f"run `hwloop devices wheelhouse {device} --dir {wheelhouse}{add}` on a machine with internet access (or "
            f"`pip download --only-binary=:all: --python-version {board.python} {plats} -d {wheelhouse} "
            f"{shlex.quote(requirement)}`), then deploy again")


def _pip_download(board: BoardPython, requirements: Sequence[str], dest: Path, find_links: Path | None,
                  say: Callable[[str], None]) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--dest", str(dest), "--python-version", board.python,
           "--implementation", "cp" if board.implementation == "cpython" else board.implementation[:2]]
    for a in board.abis:
        cmd += ["--abi", a]
    for p in board.platforms:
        cmd += ["--platform", p]
    env = None
    if find_links is not None:  # only this folder: no pip.conf or PIP_* index/find-links of this machine
        cmd[3:3] = ["--isolated"]
        cmd += ["--no-index", "--find-links", str(find_links)]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    cmd += list(requirements)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(("Collecting", "Saved", "File was already downloaded", "  Downloading")):
            say(line.strip())
    if proc.wait() != 0:
        src = f"the wheel cache {find_links}" if find_links is not None else "the package index"
        raise RemoteError(f"pip download for {board.describe()} from {src} failed: "
                          f"{_last_error_line(chr(10).join(lines))}")


def build_wheelhouse(profile: Any, dest: str | Path | None = None, *, find_links: str | Path | None = None,
                     add: Sequence[str] = (), include_present: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Download the wheels the board lacks for the agent into a local wheelhouse ``deploy`` uploads.

    Args:
        profile: a ``remote`` :class:`~hwloop.devices.profiles.DeviceProfile`; its board is asked
            (over SSH, no internet needed there) for its Python, wheel tags and installed packages.
        dest: the wheelhouse folder (default :func:`default_wheelhouse`).
        find_links: take wheels from this local folder instead of the package index (offline).
        add: more requirements to put in the wheelhouse (e.g. a dependency the board's torch lacks).
        include_present: download every agent requirement, also those the board already has.
        progress: called with a line per step.

    Returns:
        ``{"wheelhouse", "board", "missing", "saved"}`` (``saved``: wheel file names now there).
    """
    from hwloop.remote._ssh import ConnectionConfig, connect_ssh

    say = progress or (lambda _m: None)
    reqs = list(AGENT_REQUIREMENTS) + [str(a) for a in add]
    for r in reqs:
        parse_requirement(r)
    links = None
    if find_links is not None:
        links = Path(find_links).expanduser()
        if not links.is_dir():
            raise ConfigError(f"wheel cache {links} is not a folder; --find-links takes a folder of .whl files")
    out_dir = Path(dest).expanduser() if dest is not None else default_wheelhouse(profile.name)
    cfg = ConnectionConfig.from_dict(profile.connection)
    client = connect_ssh(cfg, profile.name)
    try:
        say(f"asking {cfg.python} on {cfg.address} what it has")
        board = query_board(client, cfg.python, [parse_requirement(r).name for r in reqs])
    finally:
        client.close()
    missing = reqs if include_present else missing_requirements(board, reqs[:len(AGENT_REQUIREMENTS)]) + list(add)
    out_dir.mkdir(parents=True, exist_ok=True)
    if missing:
        say(f"downloading {', '.join(missing)} for {board.describe()} into {out_dir}")
        _pip_download(board, missing, out_dir, links, say)
    else:
        say(f"the board's {board.describe()} already has {', '.join(AGENT_REQUIREMENTS)}; nothing to download")
    saved = sorted(p.name for p in out_dir.glob("*.whl"))
    return {"wheelhouse": str(out_dir), "board": board.describe(), "missing": missing, "saved": saved}
