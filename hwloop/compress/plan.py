""":class:`CompressionPlan`: a JSON record that rebuilds a compressed model from its base architecture.

A plan names the base model (a :class:`~hwloop.models.ModelRef` description) and the
decisions taken on it:

* ``lowrank`` — layer name → rank for layers replaced by two smaller layers;
* ``widths`` — coupled channel group key → channels kept (a group key is the name of
  the group's first conv/linear; rank groups are ``rank:<layer>``);
* ``w_bits`` — layer name → weight bit-width; ``a_bits`` — activation bit-width or None.

``compress_(base_model, plan)`` replays it (see :mod:`hwloop.compress.extract`); the
weights travel separately as safetensors. No pickle anywhere.

Example:
    >>> from hwloop.compress.plan import CompressionPlan
    >>> p = CompressionPlan(base={"name": "small_cnn"}, widths={"features.0": 8})
    >>> CompressionPlan.from_json(p.to_json()) == p
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hwloop.errors import CompressionError
from hwloop.models import ModelRef

__all__ = ["PLAN_VERSION", "CompressionPlan"]

PLAN_VERSION = 1


def _int_map(d: Mapping[str, Any], what: str, lo: int) -> dict[str, int]:
    if not isinstance(d, Mapping):
        raise CompressionError(f"plan {what} must be a mapping of name -> int, got {type(d).__name__}")
    out: dict[str, int] = {}
    for k, v in d.items():
        if not isinstance(k, str) or not k or isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise CompressionError(f"plan {what}[{k!r}]={v!r} must be an int >= {lo}")
        out[k] = v
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class CompressionPlan:
    """Which layers are factorised, how many channels each coupled group keeps, and the bit-widths.

    Attributes:
        base: the base model as a :meth:`ModelRef.to_dict` mapping, or None for a user model that
            has no :class:`ModelRef` (such a plan is replayed with ``compress_`` on the user's model).
        lowrank: layer name → kept rank.
        widths: group key → channels kept.
        w_bits: layer name → weight bits (layers not listed keep float weights).
        a_bits: activation bits for every quantized layer, or None.
        meta: free-form JSON context (search settings, predicted latency...); not used to rebuild.
        version: plan format version.
    """

    base: Mapping[str, Any] | None
    lowrank: Mapping[str, int] = field(default_factory=dict)
    widths: Mapping[str, int] = field(default_factory=dict)
    w_bits: Mapping[str, int] = field(default_factory=dict)
    a_bits: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.base is not None:
            try:
                ref = ModelRef.from_dict(self.base)
            except Exception as e:  # ConfigError or malformed mapping
                raise CompressionError(f"plan base {self.base!r} is not a valid model description: {e}") from e
            set_(self, "base", ref.to_dict())
        set_(self, "lowrank", _int_map(self.lowrank, "lowrank", 1))
        set_(self, "widths", _int_map(self.widths, "widths", 1))
        set_(self, "w_bits", _int_map(self.w_bits, "w_bits", 1))
        if any(v > 32 for v in self.w_bits.values()):
            raise CompressionError(f"plan w_bits {dict(self.w_bits)} must be <= 32")
        if self.a_bits is not None and (isinstance(self.a_bits, bool) or not isinstance(self.a_bits, int)
                                        or not 1 <= self.a_bits <= 32):
            raise CompressionError(f"plan a_bits={self.a_bits!r} must be an int in [1, 32] or None")
        if self.version != PLAN_VERSION:
            raise CompressionError(f"plan version {self.version!r} is not supported; this hwloop reads {PLAN_VERSION}")
        try:
            set_(self, "meta", json.loads(json.dumps(dict(self.meta))))
        except TypeError as e:
            raise CompressionError(f"plan meta must be JSON-serialisable: {e}") from e

    @property
    def model_ref(self) -> ModelRef:
        """The base model's :class:`ModelRef` (CompressionError if the plan has none)."""
        if self.base is None:
            raise CompressionError("this plan has no base model description; replay it with "
                                   "compress_(your_model, plan) instead")
        return ModelRef.from_dict(self.base)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hwloop.CompressionPlan", "version": self.version, "base": dict(self.base) if self.base is not None else None,
                "lowrank": dict(self.lowrank), "widths": dict(self.widths), "w_bits": dict(self.w_bits),
                "a_bits": self.a_bits, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionPlan:
        if not isinstance(d, Mapping):
            raise CompressionError(f"a plan must be a JSON object, got {type(d).__name__}")
        allowed = {"type", "version", "base", "lowrank", "widths", "w_bits", "a_bits", "meta"}
        extra = set(d) - allowed
        if extra:
            raise CompressionError(f"unknown plan field(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        if d.get("type", "hwloop.CompressionPlan") != "hwloop.CompressionPlan":
            raise CompressionError(f"plan type {d.get('type')!r} is not 'hwloop.CompressionPlan'")
        if "base" not in d:
            raise CompressionError("a plan needs a 'base' model description")
        return cls(base=d["base"], lowrank=d.get("lowrank", {}), widths=d.get("widths", {}),
                   w_bits=d.get("w_bits", {}), a_bits=d.get("a_bits"), meta=d.get("meta", {}),
                   version=int(d.get("version", PLAN_VERSION)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise CompressionError(f"plan is not valid JSON: {e}") from e
