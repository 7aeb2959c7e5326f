"""A rank-gated layer costed the way extraction will export it: the cheaper of factorised and dense.

With ``[space] lowrank = true`` every eligible layer of the search space is held factorised (``k×k C_in→r``, then
``1×1 r→C_out``) and carries a rank gate. Extraction (:func:`hwloop.compress.gated.extract` with the
differentiable search's ``merge_if``) merges a factorised layer back into one dense layer when the latency model
says dense is not slower. A search that costs every rank-gated layer factorised therefore prices a model it will not
export: where the factorised form is slower than the dense layer (on ``asic-tpu32`` the SVD form never pays), the
search spends its budget on an overhead that extraction then removes, and the exported model lands far below the
target (issue 18: 0.481× / 0.387× measured for targets 0.7 / 0.6).

:class:`MergedLowRankLatency` wraps the search's :class:`~hwloop.search.latency.LatencyModel` so the search and
extraction apply **one rule**, :meth:`MergedLowRankLatency.merged`: at the sizes it is given, a rank-gated layer
counts as dense when the whole model with that layer dense is not slower than with it factorised (every other
rank-gated layer factorised), exactly the comparison extraction's merge made before this wrapper existed. Each call
then costs the model with those layers dense. The choice is *hard* (not a smooth minimum): the chosen form carries
the value and the gradient, so a rank gate feels a latency pull only while its layer is priced factorised; the
channel gates feed both forms (the dense layer at the current input/output widths). During the search the loss is
evaluated at the gates' effective sizes (the choice follows them) and the hinge's value, the budget repairs and
extraction at the hard sizes, so the latency the search ends at is the latency model's prediction of the exported
model. ``plan_latency`` and ``original`` are the wrapped model's (a plan states which layers are factorised).

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace, SpaceOptions
    >>> from hwloop.search.latency import SurrogateLatency
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(lowrank=True))
    >>> lat = MergedLowRankLatency(SurrogateLatency(space), space.lowrank)
    >>> full = space.full_sizes()     # every rank at full: the factorised form costs more MACs than dense
    >>> sorted(lat.merged(full)) == sorted(space.lowrank), float(lat(full)) == lat.original()
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hwloop.compress.plan import CompressionPlan
from hwloop.search.latency import LatencyModel, PredictorLatency, Sizes

__all__ = ["MergedLowRankLatency"]


class MergedLowRankLatency:
    """``latency(sizes, dense)`` with every rank-gated layer that is not slower dense counted dense (module docstring).

    Args:
        inner: the latency model built on the search space (its ``dense`` argument says which factorised layers
            run dense).
        layers: the rank-gated (factorised) layers, ``SearchSpace.lowrank``.
    """

    def __init__(self, inner: LatencyModel, layers: Sequence[str]) -> None:
        self.inner = inner
        self.layers = tuple(layers)
        self.kind = inner.kind
        self.unit = inner.unit

    def merged(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> frozenset[str]:
        """The rank-gated layers (beyond ``dense``) whose dense form is not slower at ``sizes``: the whole model with
        the layer dense ≤ with it factorised. For a :class:`PredictorLatency` that sums its ops (the ``asic``
        devices, ``aggregate = "sum"``) the same comparison is made on the layer's own ops (one batched
        interpolation instead of one whole-model call per layer)."""
        todo = [n for n in self.layers if n not in dense]
        if not todo:
            return frozenset()
        with torch.no_grad():
            inner = self.inner
            if isinstance(inner, PredictorLatency) and inner.aggregate == "sum":
                fac = [s for s in inner.space.slots if s.factor_of in todo]
                den = [s.dense for s in fac if s.dense is not None]
                ms = inner.slot_ms([*fac, *den], sizes).tolist()
                cost: dict[str, list[float]] = {n: [0.0, 0.0] for n in todo}
                for s, v in zip(fac, ms[:len(fac)]):
                    assert s.factor_of is not None
                    cost[s.factor_of][0] += v
                for s, v in zip(den, ms[len(fac):]):
                    cost[s.name][1] += v
                return frozenset(n for n in todo if cost[n][1] <= cost[n][0])
            base = float(inner(sizes, dense))
            return frozenset(n for n in todo if float(inner(sizes, dense | {n})) <= base)

    def __call__(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> torch.Tensor:
        return self.inner(sizes, dense | self.merged(sizes, dense))

    def original(self) -> float:
        return self.inner.original()

    def plan_latency(self, plan: CompressionPlan) -> float:
        return self.inner.plan_latency(plan)

    def choice(self, sizes: Mapping[str, torch.Tensor | float]) -> dict[str, str]:
        """``layer -> "dense" | "factorised"`` at ``sizes`` (for logs and tests)."""
        m = self.merged(sizes)
        return {n: "dense" if n in m else "factorised" for n in self.layers}
