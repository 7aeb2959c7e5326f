""":class:`CompressionPlan`: a JSON record that rebuilds a compressed model from its base architecture.

A plan (format 2) names the base model (a :class:`~hwloop.models.ModelRef` description) and a tuple of typed
actions (:mod:`hwloop.compress.actions`): ``ChannelPrune``, ``LowRank`` (svd or tucker2), ``Quantize`` and
``Sparsify``, replayed in order by ``compress_(base_model, plan)`` (see :mod:`hwloop.compress.extract`), each by
the handler registered for its kind. The weights travel separately as safetensors. No pickle anywhere.

Format-1 plans (``lowrank``/``widths``/``w_bits``/``a_bits`` fields) still load: they become
``LowRank(svd)`` actions, then ``ChannelPrune`` actions, then ``Quantize`` actions, each in sorted name order,
which is the order the format-1 replay used, so they rebuild the same model bit for bit. The same keywords
build a plan in Python (``CompressionPlan(base, widths=..., w_bits=...)``), and the properties ``lowrank``,
``widths``, ``w_bits`` and ``a_bits`` read those views back from the actions.

Example:
    >>> from hwloop.compress.plan import CompressionPlan
    >>> p = CompressionPlan(base={"name": "small_cnn"}, widths={"features.0": 8})
    >>> p.actions
    (ChannelPrune(group='features.0', kept=8),)
    >>> CompressionPlan.from_json(p.to_json()) == p
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hwloop.compress.actions import Action, ChannelPrune, LowRank, Quantize, action_from_dict
from hwloop.errors import CompressionError
from hwloop.models import ModelRef

__all__ = ["PLAN_VERSION", "READS", "CompressionPlan"]

#: the format this hwloop writes
PLAN_VERSION = 2
#: the formats it reads (1 is upgraded on load)
READS = (1, 2)
_MAX_ACTIONS = 100_000
_V1_FIELDS = {"type", "version", "base", "lowrank", "widths", "w_bits", "a_bits", "meta"}
_V2_FIELDS = {"type", "version", "base", "actions", "meta"}


def _int_map(d: Any, what: str, lo: int, hi: int | None = None) -> dict[str, int]:
    if not isinstance(d, Mapping):
        raise CompressionError(f"plan {what} must be a mapping of name -> int, got {type(d).__name__}")
    out: dict[str, int] = {}
    for k, v in d.items():
        if (not isinstance(k, str) or not k or isinstance(v, bool) or not isinstance(v, int) or v < lo
                or (hi is not None and v > hi)):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise CompressionError(f"plan {what}[{k!r}]={v!r} must be an int {rng}")
        out[k] = v
    return dict(sorted(out.items()))


def v1_actions(lowrank: Any = None, widths: Any = None, w_bits: Any = None, a_bits: Any = None) -> tuple[Action, ...]:
    """The actions of a format-1 plan, in the order the format-1 replay applied them."""
    lr = _int_map(lowrank or {}, "lowrank", 1)
    wd = _int_map(widths or {}, "widths", 1)
    wb = _int_map(w_bits or {}, "w_bits", 1, 32)
    if a_bits is not None and (isinstance(a_bits, bool) or not isinstance(a_bits, int) or not 1 <= a_bits <= 32):
        raise CompressionError(f"plan a_bits={a_bits!r} must be an int in [1, 32] or None")
    return (*(LowRank(k, "svd", (r,)) for k, r in lr.items()),
            *(ChannelPrune(k, v) for k, v in wd.items()),
            *(Quantize(k, b, a_bits) for k, b in wb.items()))


@dataclass(frozen=True, init=False)
class CompressionPlan:
    """The base model and the actions that turn it into the compressed one.

    Args:
        base: the base model as a :meth:`ModelRef.to_dict` mapping, or None for a user model that has no
            :class:`ModelRef` (such a plan is replayed with ``compress_`` on the user's model).
        lowrank, widths, w_bits, a_bits: the format-1 shorthand (layer → svd rank, group key → channels kept,
            layer → weight bits, activation bits of every quantized layer); they build the actions.
        meta: free-form JSON context (search settings, predicted latency, ``a_amax``...); not used to rebuild.
        version: 1 or 2 (the plan is always held, and written, as format 2).
        actions: the typed actions, in replay order (not together with the shorthand).
    """

    base: Mapping[str, Any] | None
    actions: tuple[Action, ...]
    meta: Mapping[str, Any]

    def __init__(self, base: Mapping[str, Any] | None, lowrank: Mapping[str, int] | None = None,
                 widths: Mapping[str, int] | None = None, w_bits: Mapping[str, int] | None = None,
                 a_bits: int | None = None, meta: Mapping[str, Any] | None = None, version: int = PLAN_VERSION,
                 actions: Iterable[Action] | None = None) -> None:
        set_ = object.__setattr__
        if isinstance(version, bool) or version not in READS:
            raise CompressionError(f"plan version {version!r} is not supported; this hwloop reads "
                                   f"{' and '.join(map(str, READS))}")
        if base is not None:
            try:
                ref = ModelRef.from_dict(base)
            except Exception as e:  # ConfigError or malformed mapping
                raise CompressionError(f"plan base {base!r} is not a valid model description: {e}") from e
            base = ref.to_dict()
        shorthand = any(x for x in (lowrank, widths, w_bits)) or a_bits is not None
        if actions is not None:
            if shorthand:
                raise CompressionError("a plan takes either actions or lowrank/widths/w_bits/a_bits, not both")
            acts = tuple(actions)
            bad = [a for a in acts if not isinstance(a, Action)]
            if bad:
                raise CompressionError(f"plan actions must be Action records, got {type(bad[0]).__name__}")
        else:
            acts = v1_actions(lowrank, widths, w_bits, a_bits)
        if len(acts) > _MAX_ACTIONS:
            raise CompressionError(f"plan has {len(acts)} actions; at most {_MAX_ACTIONS}")
        seen: set[tuple[str, str]] = set()
        for a in acts:
            if (a.kind, a.target) in seen:
                raise CompressionError(f"plan has two {a.kind!r} actions on {a.target!r}; one per target")
            seen.add((a.kind, a.target))
        try:
            meta_ = json.loads(json.dumps(dict(meta or {}), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise CompressionError(f"plan meta must be JSON-serialisable: {e}") from e
        set_(self, "base", base)
        set_(self, "actions", acts)
        set_(self, "meta", meta_)

    @property
    def version(self) -> int:
        """The plan format (always :data:`PLAN_VERSION`; format-1 files are upgraded when read)."""
        return PLAN_VERSION

    def of_kind(self, kind: type[Action] | str) -> list[Action]:
        """The actions of one kind (a class or its JSON ``kind``), in order."""
        k = kind if isinstance(kind, str) else kind.kind
        return [a for a in self.actions if a.kind == k]

    @property
    def lowrank(self) -> dict[str, int]:
        """Layer → rank of the ``svd`` low-rank actions."""
        return {a.layer: a.ranks[0] for a in self.actions if isinstance(a, LowRank) and a.form == "svd"}

    @property
    def widths(self) -> dict[str, int]:
        """Group key → channels kept."""
        return {a.group: a.kept for a in self.actions if isinstance(a, ChannelPrune)}

    @property
    def w_bits(self) -> dict[str, int]:
        """Layer → weight bits of the quantize actions."""
        return {a.layer: a.w_bits for a in self.actions if isinstance(a, Quantize)}

    @property
    def a_bits(self) -> int | None:
        """The activation bits shared by every quantize action (None without any; an error when they differ:
        read ``Quantize.a_bits`` per layer then)."""
        bits = {a.a_bits for a in self.actions if isinstance(a, Quantize)}
        if len(bits) > 1:
            raise CompressionError(f"plan quantize actions have different a_bits {sorted(bits, key=str)}; "
                                   "read each Quantize action's a_bits")
        return next(iter(bits), None)

    @property
    def model_ref(self) -> ModelRef:
        """The base model's :class:`ModelRef` (CompressionError if the plan has none)."""
        if self.base is None:
            raise CompressionError("this plan has no base model description; replay it with "
                                   "compress_(your_model, plan) instead")
        return ModelRef.from_dict(self.base)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hwloop.CompressionPlan", "version": PLAN_VERSION,
                "base": dict(self.base) if self.base is not None else None,
                "actions": [a.to_dict() for a in self.actions], "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Any, *, action_types: Mapping[str, type[Action]] | None = None) -> CompressionPlan:
        """Read a plan of format 1 or 2 (``action_types`` adds action kinds defined in Python)."""
        if not isinstance(d, Mapping):
            raise CompressionError(f"a plan must be a JSON object, got {type(d).__name__}")
        if d.get("type", "hwloop.CompressionPlan") != "hwloop.CompressionPlan":
            raise CompressionError(f"plan type {d.get('type')!r} is not 'hwloop.CompressionPlan'")
        version = d.get("version", 2 if "actions" in d else 1)
        if isinstance(version, bool) or version not in READS:
            raise CompressionError(f"plan version {version!r} is not supported; this hwloop reads "
                                   f"{' and '.join(map(str, READS))}")
        allowed = _V1_FIELDS if version == 1 else _V2_FIELDS
        extra = set(d) - allowed
        if extra:
            raise CompressionError(f"unknown plan field(s) {sorted(map(str, extra))} for version {version}; "
                                   f"allowed: {sorted(allowed)}")
        if "base" not in d:
            raise CompressionError("a plan needs a 'base' model description")
        meta = d.get("meta", {})
        if not isinstance(meta, Mapping):
            raise CompressionError(f"plan meta must be a JSON object, got {type(meta).__name__}")
        if version == 1:
            return cls(base=d["base"], lowrank=d.get("lowrank", {}), widths=d.get("widths", {}),
                       w_bits=d.get("w_bits", {}), a_bits=d.get("a_bits"), meta=meta)
        raw = d.get("actions", [])
        if not isinstance(raw, list):
            raise CompressionError(f"plan actions must be a JSON list, got {type(raw).__name__}")
        if len(raw) > _MAX_ACTIONS:
            raise CompressionError(f"plan has {len(raw)} actions; at most {_MAX_ACTIONS}")
        return cls(base=d["base"], actions=[action_from_dict(a, action_types) for a in raw], meta=meta)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, action_types: Mapping[str, type[Action]] | None = None) -> CompressionPlan:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CompressionError(f"plan is not valid JSON: {e}") from e
        return cls.from_dict(d, action_types=action_types)
