"""Which names in a file may turn into code: the one import policy of hwloop.

Files arrive from other people (``plan.json`` of a run folder, store rows and exports, sweep,
search and compare specs, predictor metadata, Optuna storages). A name of the form
``package.module:attr`` in such a file would import a module (running its top-level code) and
call it, so hwloop imports one only after an explicit opt-in:

* on the command line, ``hwloop --allow-import <command> ...`` (a global option);
* in the environment, ``HWLOOP_ALLOW_IMPORT=1`` (also inherited by worker processes);
* in Python, ``allow_import=True`` where an API takes it (``ModelRef(..., allow_import=True)``,
  ``load_predictor(path, allow_import=True)``, ``run_worker(..., allow_import=True)``), or the
  :func:`allowing_imports` context manager around any call.

Without it only built-in names resolve: the built-in models, predictor kinds, objectives and
backends, and a short list of hwloop's own factories (:data:`HWLOOP_FACTORIES`) that build
models from JSON without importing anything named by the file. Any other ``module:attr`` is a
:class:`~hwloop.errors.ConfigError` (exit 2 on the CLI) that says how to opt in.

Example:
    >>> from hwloop.trust import resolve
    >>> resolve("os.path:join", what="model")
    Traceback (most recent call last):
    ...
    hwloop.errors.ConfigError: model 'os.path:join' would import and run code from module 'os.path'; ...
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from hwloop.errors import ConfigError, HwloopError

__all__ = ["ENV_VAR", "HWLOOP_FACTORIES", "OPT_IN", "allowing_imports", "import_allowed", "import_builtin",
           "is_import_name", "preserved", "resolve", "set_allow_import"]

#: environment variable that opts in to importing ``module:attr`` names (``1``/``true``/``yes``)
ENV_VAR = "HWLOOP_ALLOW_IMPORT"
#: how to opt in, quoted by every refusal
OPT_IN = f"pass --allow-import (hwloop --allow-import ...), set {ENV_VAR}=1, or allow_import=True in Python"
#: hwloop's own ``module:factory`` names that resolve without opt-in (they import nothing a file names)
HWLOOP_FACTORIES: frozenset[str] = frozenset({
    "hwloop.compress:from_plan",
    "hwloop.devices.asic.reference:resnet18",
})

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = ("1", "true", "yes", "on")
_flag = False


def import_allowed(explicit: bool | None = None) -> bool:
    """True when importing named code is allowed: ``explicit``, the CLI flag, or :data:`ENV_VAR`."""
    if explicit:
        return True
    return _flag or os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


def set_allow_import(on: bool) -> None:
    """Set the process-wide opt-in (the CLI's ``--allow-import``); also exported to child processes."""
    global _flag
    _flag = bool(on)
    if on:
        os.environ[ENV_VAR] = "1"


@contextlib.contextmanager
def preserved() -> Iterator[None]:
    """Restore the opt-in (flag and environment variable) as it was when the block ends."""
    global _flag
    old_flag, old_env = _flag, os.environ.get(ENV_VAR)
    try:
        yield
    finally:
        _flag = old_flag
        if old_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old_env


@contextlib.contextmanager
def allowing_imports(on: bool = True) -> Iterator[None]:
    """Allow (or, with ``on=False``, forbid) importing named code inside the ``with`` block."""
    global _flag
    with preserved():
        _flag = on
        if on:
            os.environ[ENV_VAR] = "1"
        else:
            os.environ.pop(ENV_VAR, None)
        yield


def is_import_name(name: str) -> bool:
    """True when ``name`` is syntactically ``package.module:attr``."""
    return isinstance(name, str) and bool(_NAME.match(name))


def import_builtin(target: str) -> Any:
    """Import one of hwloop's own registry entries (``hwloop.x:Attr`` taken from a table in the code).

    Never pass a string read from a file here: a non-hwloop module is refused.
    """
    mod_name, _, attr = target.partition(":")
    if not (mod_name == "hwloop" or mod_name.startswith("hwloop.")) or not attr:
        raise ConfigError(f"{target!r} is not one of hwloop's own names")
    return getattr(importlib.import_module(mod_name), attr)


def resolve(name: str, *, what: str, builtins: Mapping[str, str] | Collection[str] = (),
            allow_import: bool | None = None, error: type[HwloopError] = ConfigError) -> Any:
    """The object a name from a spec or file stands for, under the import policy.

    Args:
        name: a built-in name (a key of ``builtins``), one of :data:`HWLOOP_FACTORIES`, or
            ``package.module:attr`` (imported only when allowed).
        what: what the name is, for messages (``"model"``, ``"objective"``, ``"predictor class"``).
        builtins: built-in names (for the message); a mapping's values are the hwloop ``module:attr``
            each name stands for, resolved without opt-in.
        allow_import: the caller's explicit opt-in (None/False: the CLI flag or the environment decide).
        error: the :class:`~hwloop.errors.HwloopError` subclass to raise.
    """
    if isinstance(builtins, Mapping) and name in builtins:
        return import_builtin(builtins[name])
    if name in HWLOOP_FACTORIES:
        return import_builtin(name)
    allowed = ", ".join(sorted(builtins)) or "none"
    if not is_import_name(name):
        raise error(f"{what} {name!r} is unknown; allowed: {allowed} or 'package.module:attr' (with --allow-import)")
    mod_name, _, attr = name.partition(":")
    if not import_allowed(allow_import):
        raise error(f"{what} {name!r} would import and run code from module {mod_name!r}; this file may come from "
                    f"someone else, so only built-ins resolve ({allowed}); if you trust it, {OPT_IN}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise error(f"{what} {name!r}: cannot import module {mod_name!r} ({e})") from e
    obj = getattr(mod, attr, None)
    if obj is None:
        raise error(f"{what} {name!r}: module {mod_name!r} has no attribute {attr!r}")
    return obj
