"""Device profiles: one TOML file per device in ``devices/``, validated into :class:`DeviceProfile`.

A profile says how to reach the device, which backend measures it, default timing, and
(for accelerators) the hardware spec. Example ``devices/local-cpu.toml``::

    name = "local-cpu"
    backend = "cpu"
    description = "PyTorch on this machine's CPU"
    [options]
    threads = 2
    [timing]
    repeats = 20

Profiles are looked up in ``$HWLOOP_DEVICES_DIR``, then ``./devices``, then the
``devices/`` folder of the hwloop checkout; ``local-cpu`` always exists (the embedded default).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwloop._toml import read_toml
from hwloop.devices.base import Device, TimingConfig
from hwloop.errors import ConfigError

__all__ = ["BACKENDS", "DeviceProfile", "backend_options", "load_profile", "list_profiles", "create_device", "profile_dirs"]

#: backend name -> "module:Class"; imported lazily so optional dependencies stay optional.
BACKENDS: dict[str, str] = {
    "cpu": "hwloop.devices.cpu:CpuDevice",
    "cuda": "hwloop.devices.cuda:CudaDevice",
    "tvm": "hwloop.devices.tvm:TvmDevice",
    "asic": "hwloop.devices.asic:AsicDevice",
    "remote": "hwloop.remote:RemoteDevice",
}

_ALLOWED_KEYS = {"name", "backend", "description", "options", "timing", "connection", "spec"}
_DEFAULT = {"name": "local-cpu", "backend": "cpu", "description": "PyTorch on this machine's CPU (built-in default)"}


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile.

    Attributes:
        name: unique device name.
        backend: one of :data:`BACKENDS`.
        options: keyword arguments for the backend's constructor.
        timing: default timing for this device.
        connection: how to reach a remote device (host, port, user, key_file, known_hosts...).
        spec: accelerator specification (simulated ASIC) or other hardware facts.
        path: the TOML file it came from (None for the built-in default).
    """

    name: str
    backend: str
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    timing: TimingConfig = field(default_factory=TimingConfig)
    connection: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"device profile {self.path}: 'name' must be a non-empty string")
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ConfigError(f"device {self.name!r}: backend {self.backend!r} is unknown; "
                              f"allowed: {', '.join(BACKENDS)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> DeviceProfile:
        where = str(path) if path else "device profile"
        extra = set(d) - _ALLOWED_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(_ALLOWED_KEYS)}")
        for k in ("name", "backend"):
            if k not in d:
                raise ConfigError(f"{where}: missing required key {k!r}")
        for k in ("options", "timing", "connection", "spec"):
            if k in d and not isinstance(d[k], Mapping):
                raise ConfigError(f"{where}: [{k}] must be a table")
        try:
            timing = TimingConfig.from_dict(d.get("timing", {}))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        _check_backend_keys(where, d)
        return cls(name=d["name"], backend=d["backend"], description=str(d.get("description", "")),
                   options=dict(d.get("options", {})), timing=timing, connection=dict(d.get("connection", {})),
                   spec=dict(d.get("spec", {})), path=path)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "description": self.description,
                "options": dict(self.options), "timing": self.timing.to_dict(),
                "connection": dict(self.connection), "spec": dict(self.spec),
                "path": str(self.path) if self.path else None}


_NOT_OPTIONS = ("self", "name", "timing", "connection", "spec")


def backend_options(backend: str) -> tuple[list[str], bool] | None:
    """The ``[options]`` keys a backend's constructor takes, and whether it takes ``[spec]``.

    None when the backend's module cannot be imported here (its options cannot be checked).

    Example:
        >>> backend_options("cpu")[0]
        ['clock', 'preemption', 'priority', 'threads']
    """
    mod_name, _, cls_name = BACKENDS[backend].partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except ImportError:
        return None
    params = inspect.signature(cls.__init__).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return sorted(n for n in named if n not in _NOT_OPTIONS), "spec" in named


def _check_backend_keys(where: str, d: Mapping[str, Any]) -> None:
    """Unknown ``[options]`` keys (a typo would silently change what is measured), and tables the backend takes not."""
    backend = d["backend"]
    if not isinstance(backend, str) or backend not in BACKENDS:
        return  # __post_init__ names the allowed backends
    if d.get("connection") and backend != "remote":
        raise ConfigError(f"{where}: [connection] is only for backend 'remote', not {backend!r}; allowed: remove it "
                          "or set backend = \"remote\"")
    known = backend_options(backend)
    if known is None:
        return
    allowed, takes_spec = known
    unknown = sorted(set(d.get("options", {})) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: [options] has unknown key(s) {unknown} for backend {backend!r}; "
                          f"allowed: {', '.join(allowed) or 'none'}")
    if d.get("spec") and not takes_spec:
        raise ConfigError(f"{where}: [spec] is not used by backend {backend!r}; allowed: remove it "
                          "(only 'asic' takes a hardware [spec])")


def profile_dirs() -> list[Path]:
    """Folders searched for ``*.toml`` profiles, in order."""
    dirs = []
    env = os.environ.get("HWLOOP_DEVICES_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd() / "devices")
    dirs.append(Path(__file__).resolve().parents[2] / "devices")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def _read(path: Path) -> DeviceProfile:
    return DeviceProfile.from_dict(read_toml(path, "device profile"), path)


def list_profiles() -> list[DeviceProfile]:
    """Every profile found (first folder wins on name clashes), plus the built-in ``local-cpu``."""
    found: dict[str, DeviceProfile] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.toml")):
            prof = _read(p)
            found.setdefault(prof.name, prof)
    found.setdefault("local-cpu", DeviceProfile.from_dict(_DEFAULT))
    return list(found.values())


def load_profile(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """A profile by name (searched in :func:`profile_dirs`) or by path to a TOML file."""
    s = str(name_or_path)
    if s.endswith(".toml") or os.sep in s:
        return _read(Path(s))
    for d in profile_dirs():
        p = d / f"{s}.toml"
        if p.is_file():
            prof = _read(p)
            if prof.name != s:
                raise ConfigError(f"device profile {p} is named {prof.name!r}, not {s!r}; file and name must match")
            return prof
    names = [p.name for p in list_profiles()]
    if s == "local-cpu":
        return DeviceProfile.from_dict(_DEFAULT)
    raise ConfigError(f"device {s!r} is unknown; known devices: {', '.join(sorted(names))}")


def create_device(profile: DeviceProfile | str) -> Device:
    """Instantiate the backend a profile names (``name``, ``timing``, ``options``, and
    ``connection``/``spec`` when present are passed as keyword arguments)."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    mod_name, _, cls_name = BACKENDS[prof.backend].partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except ImportError as e:
        raise ConfigError(f"device {prof.name!r}: backend {prof.backend!r} needs a missing package ({e.name}); "
                          f"install hwloop's extra for it") from e
    kwargs: dict[str, Any] = {"name": prof.name, "timing": prof.timing, **dict(prof.options)}
    if prof.connection:
        kwargs["connection"] = dict(prof.connection)
    if prof.spec:
        kwargs["spec"] = dict(prof.spec)
    try:
        dev: Device = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"device {prof.name!r}: bad options for backend {prof.backend!r}: {e}") from e
    return dev
