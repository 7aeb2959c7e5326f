"""Read a TOML file for a spec or profile, with the one-line errors every hwloop config gives."""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:  # Python >= 3.11; on 3.10 (JetPack 6) the tomli backport (a host dependency there; the agent reads no TOML)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - only on Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

from hwloop.errors import ConfigError, HwloopError

__all__ = ["describe_type", "fits_type", "read_toml"]


def read_toml(path: str | Path, what: str, error: type[HwloopError] = ConfigError) -> dict[str, Any]:
    """The parsed TOML at ``path``; ``what`` names it in errors ("sweep spec", "device profile").

    Raises:
        error: the file is missing, a folder, or not valid TOML (one line naming the file).

    Example:
        >>> read_toml("no-such.toml", "sweep spec")
        Traceback (most recent call last):
        hwloop.errors.ConfigError: sweep spec no-such.toml does not exist
    """
    p = Path(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise error(f"reading the {what} {p} needs the tomli package on Python < 3.11 (pip install tomli)")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise error(f"{what} {p} does not exist") from e
    except IsADirectoryError as e:
        raise error(f"{what} {p} is a folder, not a TOML file") from e
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                    "TOML files must be UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {p} is not valid TOML: {str(e).splitlines()[0]}") from e
    except PermissionError as e:
        raise error(f"{what} {p} cannot be read (permission denied)") from e


def fits_type(v: Any, tp: Any) -> bool:
    """Whether ``v`` (a parsed TOML value) fits the type annotation ``tp`` (numbers must be finite).

    Example:
        >>> fits_type("abc", float | None), fits_type([2, 4], list[int]), fits_type(True, int)
        (False, True, False)
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if tp is str:
        return isinstance(v, str)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(v, (list, tuple)) and all(fits_type(x, args[0]) for x in v) if args else True
    if origin in (dict, collections.abc.Mapping) or tp in (dict, collections.abc.Mapping):
        return isinstance(v, Mapping)
    return True


def describe_type(tp: Any) -> str:
    """What ``tp`` allows, in words: ``float | None`` → ``"a finite number (or omitted)"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (or omitted)" if type(None) in args else "")
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if tp in names:
        return names[tp]
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a table"
    return str(tp)
