"""The budget: a knapsack dynamic program over units × levels (OBC's ``spdy.py`` DP), on latency costs.

Each unit (a coupled channel group, or a layer's bit-width) has levels with an error ``e[u][l]`` (the
calibration loss with only that unit at that level) and a cost ``c[u][l] ≥ 0``. :func:`knapsack` minimises
``Σ e`` subject to ``Σ c ≤ budget`` with the costs rounded *up* to ``buckets`` integer buckets of
``budget/buckets`` (so an answer is never over the budget in the additive model), ``O(units·levels·buckets)``
with numpy over the buckets, back-pointers per unit.

:func:`unit_savings_from_latency` / :func:`unit_savings_from_table` give each level's *saving* against the
dense model, from the context's latency model (the whole-model value with only that unit changed) or from the
shared layer cost table (:mod:`hwloop.search.costtable`: the specs of the layers the unit touches, others at
full size); :func:`solve_savings` turns savings into the DP's costs for a required saving.

Example:
    >>> knapsack([[0.0, 1.0, 3.0], [0.0, 2.0, 2.5]], [[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]], 2.0)
    ([0, 2], 2.5)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["knapsack", "solve_savings", "unit_savings_from_latency", "unit_savings_from_table"]


def knapsack(errors: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
             buckets: int = 10_000) -> tuple[list[int], float] | None:
    """The level per unit minimising the summed error with the summed (bucketed) cost within ``budget``;
    ``(levels, error)`` or None when even the cheapest levels do not fit. Vectorised over each unit's levels;
    ties go to the lowest level index."""
    if len(errors) != len(costs) or any(len(e) != len(c) for e, c in zip(errors, costs)):
        raise ValueError("errors and costs must have the same units and levels")
    if budget < 0:
        return None
    step = budget / buckets if budget > 0 else 1.0
    B = buckets if budget > 0 else 0
    dp = np.full(B + 1, np.inf)
    dp[0] = 0.0
    back = []
    for e, c in zip(errors, costs):
        cost = np.asarray(c, dtype=np.float64)
        ic = np.where(cost > 0, np.ceil(cost / step - 1e-9), 0).astype(np.int64)
        cand = np.full((len(ic), B + 1), np.inf)
        for li, ci in enumerate(ic.tolist()):
            if ci <= B:
                cand[li, ci:] = dp[:B + 1 - ci] + float(e[li])
        arg = np.argmin(cand, axis=0)
        dp = cand[arg, np.arange(B + 1)]
        back.append((arg, ic))
    t = int(np.argmin(dp))
    if not np.isfinite(dp[t]):
        return None
    total = float(dp[t])
    levels = []
    for arg, ic in reversed(back):
        li = int(arg[t])
        levels.append(li)
        t -= int(ic[li])
    return levels[::-1], total


def solve_savings(errors: Sequence[Sequence[float]], savings: Sequence[Sequence[float]], required: float,
                  buckets: int = 10_000) -> tuple[list[int], float] | None:
    """Minimise the error with ``Σ saving ≥ required``: costs ``max_l s[u][l] − s[u][l]`` within
    ``Σ max − required`` (None when the largest savings together fall short)."""
    smax = [max(s) for s in savings]
    costs = [[m - x for x in s] for m, s in zip(smax, savings)]
    return knapsack(errors, costs, sum(smax) - required, buckets)


def unit_savings_from_latency(latency: Any, full: Mapping[str, float],
                              changes: Sequence[Sequence[Mapping[str, float]]]) -> tuple[float, list[list[float]]]:
    """``(whole-model cost at full size, savings[u][l])``: ``changes[u][l]`` are the sizes (``ch:<group>``,
    ``bits:<layer>``) a level sets; the saving is the latency model's drop with only that change."""
    base = float(latency(dict(full)).detach())
    out = []
    for unit in changes:
        row = []
        for ch in unit:
            row.append(base - float(latency({**full, **ch}).detach()) if ch else 0.0)
        out.append(row)
    return base, out


def unit_savings_from_table(level_specs: Mapping[str, Mapping[Hashable, Sequence[Any]]], full_level: Mapping[str, Hashable],
                            *, device: Any, source: str = "auto", store: Any = None, progress: bool = False,
                            say: Callable[[str], None] | None = None) -> tuple[Any, list[list[float]]]:
    """``(table, savings[u][l])`` from the shared layer cost table: ``level_specs[u][level]`` are the specs of
    every layer unit ``u`` touches at that level (others at full size); the saving is
    ``cost(u, full) − cost(u, level)``."""
    from hwloop.search.costtable import build_cost_table

    table = build_cost_table(level_specs, device=device, source=source, store=store, progress=progress)
    if say is not None:
        say(f"obc: cost table on {table.device} ({table.source}, {table.unit}); {table.note}")
    out = []
    for u, lvs in level_specs.items():
        f = table.cost(u, full_level[u])
        out.append([f - table.cost(u, lv) for lv in lvs])
    return table, out
