"""Typed plan actions: what a :class:`~hwloop.compress.plan.CompressionPlan` (format 2) does to a model.

A plan is a tuple of actions, replayed in order on the base model. Each action is a frozen, validated record
with a ``kind`` (its JSON tag) and a ``version``; the surgery is done by the handler registered for the
kind in :data:`HANDLERS` (see :mod:`hwloop.compress.handlers`), so a new kind of compression is a new action
class plus a handler, not a branch in ``compress_``.

============================  ======================================================================
``channel_prune``             ``ChannelPrune(group, kept)``: a coupled channel group keeps ``kept`` channels
``low_rank``                  ``LowRank(layer, form, ranks)``: ``svd`` (two layers, ``ranks=(r,)``) or
                              ``tucker2`` (1×1 → k×k core → 1×1, ``ranks=(r_in, r_out)``)
``quantize``                  ``Quantize(layer, w_bits, a_bits, scheme)``: weights rounded to ``w_bits``
                              (stored packed on export); activations read at ``a_bits``
``sparsify``                  ``Sparsify(layer, pattern, density, n, m, block)``: weights zeroed by a
                              magnitude mask: ``unstructured``, ``n:m`` or ``block``
============================  ======================================================================

Actions come from files (``plan.json``): :func:`action_from_dict` checks every field and names the bad one
in a one-line :class:`~hwloop.errors.CompressionError`; a kind is looked up in a fixed table, never imported.

Example:
    >>> from hwloop.compress.actions import LowRank, action_from_dict
    >>> a = LowRank("features.3", "tucker2", (4, 6))
    >>> a.to_dict()
    {'kind': 'low_rank', 'version': 1, 'layer': 'features.3', 'form': 'tucker2', 'ranks': [4, 6]}
    >>> action_from_dict(a.to_dict()) == a
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from hwloop.errors import CompressionError

__all__ = [
    "ACTION_TYPES",
    "HANDLERS",
    "QUANT_SCHEMES",
    "SPARSITY_PATTERNS",
    "Action",
    "ChannelPrune",
    "LowRank",
    "Quantize",
    "Sparsify",
    "action_from_dict",
]

LOWRANK_FORMS = ("svd", "tucker2")
QUANT_SCHEMES = ("symmetric_per_channel",)
SPARSITY_PATTERNS = ("unstructured", "n:m", "block")
_MAX_NAME = 1000


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > _MAX_NAME or not v.isprintable():
        raise CompressionError(f"plan action {what}={_short(v)} must be a non-empty printable string "
                               f"of at most {_MAX_NAME} characters")
    return v


def _int(v: Any, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        allowed = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        raise CompressionError(f"plan action {what}={_short(v)} must be {allowed}")
    return v


def _choice(v: Any, what: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed or not isinstance(v, str):
        raise CompressionError(f"plan action {what}={_short(v)} is unknown; allowed: {', '.join(allowed)}")
    return v


@dataclass(frozen=True)
class Action:
    """Base of every plan action: ``kind`` names it in JSON, ``version`` is its format version."""

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1

    @property
    def target(self) -> str:
        """The layer or group the action changes."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "version": self.version}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Action:
        names = [f.name for f in dataclasses.fields(cls)]
        extra = set(d) - set(names) - {"kind", "version"}
        if extra:
            raise CompressionError(f"plan action {cls.kind!r}: unknown field(s) {sorted(map(str, extra))}; "
                                   f"allowed: {sorted(names)}")
        v = d.get("version", cls.version)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cls.version:
            raise CompressionError(f"plan action {cls.kind!r} version {_short(v)} is not supported; "
                                   f"this hwloop reads 1..{cls.version}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise CompressionError(f"plan action {cls.kind!r} needs field(s) {missing}")
        kw = {n: (tuple(d[n]) if isinstance(d[n], list) else d[n]) for n in names if n in d}
        return cls(**kw)


@dataclass(frozen=True)
class ChannelPrune(Action):
    """Keep ``kept`` channels of the coupled channel group ``group`` (the largest by group L2 magnitude).

    A group key is the name of the group's first conv/linear; the channels between the factors of a low-rank
    layer are ``rank:<layer>`` (svd) or ``rank:<layer>:in`` / ``rank:<layer>:out`` (tucker2).
    """

    group: str
    kept: int
    kind: ClassVar[str] = "channel_prune"

    def __post_init__(self) -> None:
        _name(self.group, "group")
        _int(self.kept, f"channel_prune[{self.group!r}].kept", 1)

    @property
    def target(self) -> str:
        return self.group


@dataclass(frozen=True)
class LowRank(Action):
    """Replace ``layer`` by a low-rank form: ``svd`` → ``ranks=(r,)``; ``tucker2`` → ``ranks=(r_in, r_out)``."""

    layer: str
    form: str
    ranks: tuple[int, ...]
    kind: ClassVar[str] = "low_rank"

    def __post_init__(self) -> None:
        _name(self.layer, "layer")
        _choice(self.form, f"low_rank[{self.layer!r}].form", LOWRANK_FORMS)
        if isinstance(self.ranks, list):
            object.__setattr__(self, "ranks", tuple(self.ranks))
        need = 1 if self.form == "svd" else 2
        if not isinstance(self.ranks, tuple) or len(self.ranks) != need:
            raise CompressionError(f"plan action low_rank[{self.layer!r}].ranks={_short(self.ranks)} must be "
                                   f"a list of {need} int(s) for form {self.form!r}")
        for r in self.ranks:
            _int(r, f"low_rank[{self.layer!r}].ranks", 1)

    @property
    def target(self) -> str:
        return self.layer


@dataclass(frozen=True)
class Quantize(Action):
    """Round ``layer``'s weight to ``w_bits`` (per output channel, symmetric); its input activations are read
    at ``a_bits`` (None: float). Exported weights are stored as integers plus per-channel scales."""

    layer: str
    w_bits: int
    a_bits: int | None = None
    scheme: str = "symmetric_per_channel"
    kind: ClassVar[str] = "quantize"

    def __post_init__(self) -> None:
        _name(self.layer, "layer")
        _int(self.w_bits, f"quantize[{self.layer!r}].w_bits", 1, 32)
        if self.a_bits is not None:
            _int(self.a_bits, f"quantize[{self.layer!r}].a_bits", 1, 32)
        _choice(self.scheme, f"quantize[{self.layer!r}].scheme", QUANT_SCHEMES)

    @property
    def target(self) -> str:
        return self.layer


@dataclass(frozen=True)
class Sparsify(Action):
    """Zero the smallest weights of ``layer``: ``unstructured`` (keep the ``density`` share of largest
    magnitudes), ``n:m`` (keep ``n`` of every ``m`` consecutive input-channel weights; density is ``n/m``) or
    ``block`` (keep the ``density`` share of ``block=(out, in)`` channel tiles with the largest L2 norm)."""

    layer: str
    pattern: str
    density: float | None = None
    n: int | None = None
    m: int | None = None
    block: tuple[int, ...] | None = None
    kind: ClassVar[str] = "sparsify"

    def __post_init__(self) -> None:
        _name(self.layer, "layer")
        w = f"sparsify[{self.layer!r}]"
        _choice(self.pattern, f"{w}.pattern", SPARSITY_PATTERNS)
        if self.pattern == "n:m":
            if self.n is None or self.m is None:
                raise CompressionError(f"plan action {w} with pattern 'n:m' needs n and m")
            _int(self.m, f"{w}.m", 1, 1024)
            _int(self.n, f"{w}.n", 1, self.m)
            dens = self.n / self.m
            if self.density is not None and (not isinstance(self.density, (int, float)) or isinstance(self.density, bool)
                                             or abs(float(self.density) - dens) > 1e-9):
                raise CompressionError(f"plan action {w}.density={_short(self.density)} must equal n/m = {dens:g}")
            object.__setattr__(self, "density", dens)
        else:
            if self.n is not None or self.m is not None:
                raise CompressionError(f"plan action {w}: n and m belong to pattern 'n:m', not {self.pattern!r}")
            d = self.density
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or not 0 < d <= 1:
                raise CompressionError(f"plan action {w}.density={_short(d)} must be a number in (0, 1]")
            object.__setattr__(self, "density", float(d))
        if self.pattern == "block":
            b = tuple(self.block) if isinstance(self.block, (list, tuple)) else self.block
            if not isinstance(b, tuple) or len(b) != 2:
                raise CompressionError(f"plan action {w}.block={_short(self.block)} must be [out, in] channel counts")
            for x in b:
                _int(x, f"{w}.block", 1, 4096)
            object.__setattr__(self, "block", b)
        elif self.block is not None:
            raise CompressionError(f"plan action {w}: block belongs to pattern 'block', not {self.pattern!r}")

    @property
    def target(self) -> str:
        return self.layer


#: JSON kind → action class (a fixed table: a plan file can only name these)
ACTION_TYPES: Mapping[str, type[Action]] = MappingProxyType({
    c.kind: c for c in (ChannelPrune, LowRank, Quantize, Sparsify)})

#: kind → ``"module:Class"`` of its handler (hwloop's own modules; imported when a plan first uses the kind)
HANDLERS: Mapping[str, str] = MappingProxyType({
    "channel_prune": "hwloop.compress.handlers:ChannelPruneHandler",
    "low_rank": "hwloop.compress.handlers:LowRankHandler",
    "quantize": "hwloop.compress.handlers:QuantizeHandler",
    "sparsify": "hwloop.compress.sparsity:SparsifyHandler",
})


def action_from_dict(d: Any, types: Mapping[str, type[Action]] | None = None) -> Action:
    """Parse one action from its JSON object (``types`` adds kinds defined in Python; never from a file)."""
    table = {**ACTION_TYPES, **(types or {})}
    if not isinstance(d, Mapping):
        raise CompressionError(f"a plan action must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in table:
        raise CompressionError(f"plan action kind {_short(kind)} is unknown; known: {', '.join(sorted(table))}")
    return table[kind].from_dict(d)
