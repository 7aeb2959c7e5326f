"""HALOC's latency side: rank candidates from the device's latency staircase, and the expected latency.

Everything here reads the shared layer cost table (:mod:`hwloop.search.costtable`); nothing keeps its own
latency numbers. A HALOC table has one entry per factorised layer with the levels ``("dense",)`` (the layer as
it is) and ``("rank", r)`` (its Tucker-2 triple at equal ranks, :func:`~hwloop.search.costtable.tucker2_specs`,
or its SVD pair for a linear layer); every other op of the model (stem, batch norms, activations, adds, pooling,
classifier) is the table's ``passive`` part, so that ``table.model_cost(choice)`` is the whole model.

* :func:`rank_ladder` — HALOC's principle P1: candidates are multiples of the latency step ``c`` (at most
  ``max_candidates`` of them: the stride becomes a multiple of ``c`` when the layer has more);
* :func:`probe_steps` — each layer's ``c``: :func:`~hwloop.search.costtable.staircase_step` of its Tucker-2 cost
  over ranks ``1..r_max`` (probed once per distinct layer shape);
* :class:`ExpectedLatency` — ``E[LAT] = rest + Σ_l Σ_k p_{l,k}·T_l(r_k)``, differentiable in the logits.

Example:
    >>> rank_ladder(64, 8, 8), rank_ladder(64, 4, 8), rank_ladder(12, 16, 8)
    ([8, 16, 24, 32, 40, 48, 56, 64], [8, 16, 24, 32, 40, 48, 56, 64], [])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hwloop.compress.extract import get_module
from hwloop.errors import SearchError
from hwloop.methods.haloc.mixed import DENSE, Level, MixedLowRank, max_equal_rank, rank_level
from hwloop.workload import LayerSpec

__all__ = ["ExpectedLatency", "layer_specs", "level_specs", "probe_steps", "rank_ladder",
           "table_levels"]

def rank_ladder(r_max: int, step: int, max_candidates: int) -> list[int]:
    """Ranks ``s, 2s, … ≤ r_max`` with ``s`` the smallest multiple of ``step`` giving at most ``max_candidates``."""
    if step < 1 or max_candidates < 1:
        raise SearchError(f"step={step} and max_candidates={max_candidates} must be >= 1")
    n = r_max // step
    if n == 0:
        return []
    stride = step * math.ceil(n / max_candidates)
    return list(range(stride, r_max + 1, stride))


def layer_specs(model: nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    """The model's executed ops (:func:`hwloop.workload.extract_layers`), with their module names."""
    from hwloop.workload import WorkloadWarning, extract_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        return extract_layers(model, example)


def level_specs(spec: LayerSpec, level: Level) -> list[LayerSpec]:
    """The ops a layer runs at ``level`` (cost-table API: Tucker-2 triple for a conv, SVD pair for a linear)."""
    from hwloop.search.costtable import svd_specs, tucker2_specs

    if level == DENSE:
        return [spec]
    r = int(level[1])
    if spec.op == "conv2d":
        return list(tucker2_specs(spec, r, r))
    return list(svd_specs(spec, r))


def table_levels(specs: Sequence[LayerSpec], layers: Mapping[str, Sequence[Level]]
                 ) -> tuple[dict[str, dict[Level, list[LayerSpec]]], list[LayerSpec]]:
    """The cost-table request: each layer's levels (``("dense",)`` always included), and the passive ops (every
    other executed op of the model)."""
    by_name = {s.name: s for s in specs if s.op in ("conv2d", "linear")}
    missing = sorted(set(layers) - set(by_name))
    if missing:
        raise SearchError(f"layer(s) {missing} were not found among the model's executed ops")
    out: dict[str, dict[Level, list[LayerSpec]]] = {}
    for name, levels in layers.items():
        lv = [DENSE, *[tuple(x) for x in levels if tuple(x) != DENSE]]
        out[name] = {tuple(x): level_specs(by_name[name], tuple(x)) for x in lv}
    passive = [s for s in specs if s.name not in layers and s.op != "other"]
    return out, passive


def probe_steps(model: nn.Module, specs: Sequence[LayerSpec], names: Sequence[str], build: Any,
                probe_stride: int = 1) -> dict[str, int]:
    """Each layer's latency step: :func:`staircase_step` of its Tucker-2 cost at ranks ``1..r_max`` (every
    ``probe_stride``-th), probed once per distinct layer shape. ``build(levels, passive)`` builds a cost table."""
    from hwloop.search.costtable import staircase_step

    by_name = {s.name: s for s in specs}
    shapes: dict[LayerSpec, str] = {}
    probe: dict[str, dict[Level, list[LayerSpec]]] = {}
    for n in names:
        spec = by_name[n]
        if spec in shapes:
            continue
        shapes[spec] = n
        top = max_equal_rank(get_module(model, n))
        ranks = sorted({1, *range(probe_stride, top + 1, probe_stride), top})
        probe[n] = {rank_level(r): level_specs(spec, rank_level(r)) for r in ranks}
    table = build(probe, [])
    steps: dict[str, int] = {}
    for n in names:
        rep = shapes[by_name[n]]
        ranks = [int(lv[1]) for lv in probe[rep]]
        steps[n] = max(1, int(staircase_step(ranks, [float(table.cost(rep, rank_level(r))) for r in ranks])))
    return steps


class ExpectedLatency:
    """``E[LAT](α) = rest + Σ_l p_l·T_l`` over a wrapped model's mixed layers, from a cost table.

    ``rest`` is the original model's cost (passive ops included) minus its factorised layers' dense costs, so
    ``E`` at one-hot dense probabilities is the original's cost. :meth:`choice_cost` is the cost of a hard
    choice through ``table.model_cost`` (the device's calibration where the source has one).
    """

    def __init__(self, table: Any, layers: Mapping[str, MixedLowRank]) -> None:
        self.table = table
        self.layers = dict(layers)
        self.costs = {n: torch.tensor([float(table.cost(n, lv)) for lv in m.levels]) for n, m in self.layers.items()}
        dense = {n: DENSE for n in self.layers}
        self.original = self.choice_cost(dense)
        self.rest = self.original - sum(float(table.cost(n, DENSE)) for n in self.layers)
        self.unit = str(getattr(table, "unit", ""))

    def choice_cost(self, choice: Mapping[str, Level]) -> float:
        return float(self.table.model_cost(dict(choice)))

    def __call__(self) -> torch.Tensor:
        e = torch.tensor(self.rest)
        for n, m in self.layers.items():
            e = e + (m.probs() * self.costs[n]).sum()
        return e

    def argmax_choice(self) -> dict[str, Level]:
        return {n: m.levels[m.argmax()] for n, m in self.layers.items()}
