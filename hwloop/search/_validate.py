"""Validation helpers shared by the search spec (:mod:`hwloop.search.spec`) and the evidence-harness spec
(:mod:`hwloop.search.harness_spec`): every problem is one :class:`~hwloop.errors.SearchError` line that names
the section, the key, the bad value and what is allowed.

Example:
    >>> from hwloop.search._validate import check_choice, check_int, check_number
    >>> check_int("schedule", "max_steps", None, none=True)
    >>> check_number("schedule", "lr", 0.0)
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [schedule] lr=0.0 must be a finite number > 0
    >>> check_choice("cost", "aggregate", "mean", ("auto", "sum", "calibrated"))
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [cost] aggregate='mean' is unknown; allowed: auto, sum, calibrated
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hwloop._toml import describe_type, fits_type
from hwloop.errors import SearchError

__all__ = ["check_choice", "check_int", "check_number", "check_table"]


def check_table(section: str, cls: type, d: Any, hints: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keys of ``[section]``, each checked against the dataclass ``cls``'s field types.

    Args:
        section: the table's name (in the message).
        cls: the dataclass whose fields are the allowed keys.
        d: the table as read.
        hints: key -> what it allows, named in the message instead of the bare type.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class T:
        ...     n: int = 1
        >>> check_table("t", T, {"m": 2})
        Traceback (most recent call last):
        ...
        hwloop.errors.SearchError: [t] has unknown key(s) ['m']; allowed: ['n']
    """
    if not isinstance(d, Mapping):
        raise SearchError(f"[{section}] must be a table, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - known
    if extra:
        raise SearchError(f"[{section}] has unknown key(s) {sorted(extra)}; allowed: {sorted(known)}")
    types = typing.get_type_hints(cls)
    for k, v in d.items():
        if not fits_type(v, types[k]):
            what = (hints or {}).get(k) or describe_type(types[k])
            raise SearchError(f"[{section}] {k}={v!r} must be {what}")
    return dict(d)


def check_int(section: str, name: str, v: Any, low: int = 1, *, none: bool = False, why: str = "") -> None:
    """``v`` is an integer ``>= low`` (not a bool); None too with ``none``; ``why`` is appended to the message."""
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise SearchError(f"[{section}] {name}={v!r} must be an integer >= {low}{' (or omitted)' if none else ''}"
                          f"{why}")


def check_number(section: str, name: str, v: Any, low: float = 0.0, *, inclusive: bool = False) -> None:
    """``v`` is a finite number ``> low`` (``>= low`` with ``inclusive``), not a bool."""
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and (v >= low if inclusive else v > low))
    if not ok:
        raise SearchError(f"[{section}] {name}={v!r} must be a finite number {'>=' if inclusive else '>'} {low:g}")


def check_choice(section: str, name: str, v: Any, allowed: Sequence[str], note: str = "") -> None:
    """``v`` is one of ``allowed``; ``note`` is appended to the message."""
    if v not in allowed:
        raise SearchError(f"[{section}] {name}={v!r} is unknown; allowed: {', '.join(allowed)}{note}")
