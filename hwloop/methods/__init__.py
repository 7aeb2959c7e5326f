"""Compression methods as plug-ins: one contract, one registry.

Every compression method (today the ℓ1/ℓ2 latency-surrogate search, ``l1l2``; OBC, HALOC, SBS and LCS
next) is a :class:`~hwloop.methods.base.CompressionMethod`: a validated, JSON-able config dataclass and
one verb, ``run(context) -> MethodResult``. The pipeline, the CLI and the contract suite reach them only
through :data:`METHODS` (name → ``"module:Class"``, like ``BACKENDS`` and ``PREDICTORS``): a new method
is one module and one line here. A ``package.module:Class`` name from a spec is imported only under the
import opt-in of :mod:`hwloop.trust`. See ``docs/methods.md``.

Importing this package is cheap (no torch); the classes are imported when first used.

Example:
    >>> from hwloop.methods import METHODS, method_class, list_methods
    >>> sorted(METHODS)
    ['haloc', 'l1l2', 'lcs', 'obc', 'sbs']
    >>> method_class("l1l2").name
    'l1l2'
    >>> [name for name, _ in list_methods()]
    ['l1l2', 'obc', 'haloc', 'lcs', 'sbs']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hwloop.errors import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from hwloop.methods.base import CompressionMethod, MethodConfig

__all__ = ["DEFAULT_METHOD", "METHODS", "MethodSpec", "list_methods", "make_method", "method_class"]

#: method name -> "module:Class" (hwloop's own; imported lazily)
METHODS: dict[str, str] = {
    "l1l2": "hwloop.methods.l1l2:L1L2Method",
    "obc": "hwloop.methods.obc.method:ObcMethod",
    "haloc": "hwloop.methods.haloc:HalocMethod",
    "lcs": "hwloop.methods.lcs.method:LcsMethod",
    "sbs": "hwloop.methods.sbs:SbsMethod",
}
#: the method a spec without a ``[method]`` table runs
DEFAULT_METHOD = "l1l2"


def method_class(name: str, *, allow_import: bool | None = None) -> type[CompressionMethod]:
    """The :class:`CompressionMethod` subclass ``name`` stands for: a key of :data:`METHODS`, or
    ``package.module:Class`` (imported only with the opt-in of :mod:`hwloop.trust`).

    Raises:
        SearchError: unknown name, import refused, or not a CompressionMethod subclass (one line).
    """
    from hwloop.methods.base import CompressionMethod
    from hwloop.trust import resolve

    if not isinstance(name, str) or not name:
        raise SearchError(f"[method] name={name!r} must be a non-empty string; allowed: {', '.join(METHODS)}")
    cls = resolve(name, what="compression method", builtins=METHODS, allow_import=allow_import, error=SearchError)
    if not (isinstance(cls, type) and issubclass(cls, CompressionMethod)):
        raise SearchError(f"compression method {name!r} is not a hwloop.methods.CompressionMethod subclass")
    return cls


def make_method(name: str, config: Mapping[str, Any] | MethodConfig | None = None, *,
                defaults: Mapping[str, Any] | None = None, allow_import: bool | None = None) -> CompressionMethod:
    """An instance of method ``name`` with ``config`` (a mapping validated by the method's config class, or
    an instance of it); ``defaults`` fill the fields ``config`` does not set (keys the method does not
    have are ignored there, never in ``config``)."""
    cls = method_class(name, allow_import=allow_import)
    if config is not None and not isinstance(config, Mapping):
        return cls(config)
    return cls(cls.config_class.from_dict(config or {}, defaults=defaults, where=f"[method] {name}"))


def list_methods() -> list[tuple[str, str]]:
    """``(name, one-line summary)`` of every registered (built-in) method, in registry order."""
    return [(n, method_class(n).summary) for n in METHODS]


@dataclass(frozen=True)
class MethodSpec:
    """A spec's ``[method]`` table: ``name`` plus the method's own keys (``options``), validated on creation.

    ``defaults`` are the values the rest of the spec gives (``[budget]``, ``[schedule]``); the method's own
    keys override them. Specs without a ``[method]`` table get :data:`DEFAULT_METHOD`.

    Example:
        >>> MethodSpec.from_table({"name": "l1l2", "fill_budget": True}).to_table()
        {'name': 'l1l2', 'fill_budget': True}
        >>> MethodSpec.from_table({"name": "l1l2", "bogus": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hwloop.errors.SearchError: [method] l1l2: unknown key(s) ['bogus']; allowed: ...
    """

    name: str = DEFAULT_METHOD
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Any, *, defaults: Mapping[str, Any] | None = None,
                   target: float | None = None) -> MethodSpec:
        """Validate a ``[method]`` table (with the spec's ``defaults``, for its budget ``target``)."""
        if not isinstance(table, Mapping):
            raise SearchError(f"[method] must be a table, got {type(table).__name__}")
        opts = {k: v for k, v in table.items() if k != "name"}
        spec = cls(name=table.get("name", DEFAULT_METHOD), options=opts)
        spec.build(defaults).check(target)   # now: a bad key fails when the spec is read, not after pre-training
        return spec

    def build(self, defaults: Mapping[str, Any] | None = None) -> CompressionMethod:
        """The configured method instance."""
        return make_method(self.name, self.options, defaults=defaults)

    def to_table(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}
