"""The DP on the whole model's cost (``dp = "joint"``): exact where the device's latency is a sum of op costs.

The additive DP (:func:`~hwloop.methods.obc.dp.solve_savings`) gives each unit's level its saving with every
other unit at full size and adds them. A conv's cost depends on its input *and* output width (and its bits), so
two groups shrinking one conv each count a saving the conv only has once: the additive model believes the
model is faster than it is, most of all at small targets (docs/obc.md, "The 0.5 target").

Here the cost is a sum of *terms*, one per op of the model (every conv, linear, batch-norm and passive op the
device runs): a term depends on at most the units that set its input channels, output channels and bits, and
its cost at every combination of their levels comes from the shared cost table. On a device whose whole-model
latency is the sum of its ops (the ``asic`` backend, ``hwloop.search.costtable``) this sum *is* the whole model.

The solver (:func:`solve_joint`) fixes a few *hub* units (chosen greedily, most-connected first, until every
remaining connected component of units has at most ``comp_limit`` joint levels; on ResNet-20 the three stage
groups tied by the residual adds), enumerates their level combinations, and for each combination solves a
knapsack over the components, each a joint unit whose levels are its members' level combinations with exact
cost given the hubs. The answer minimises the summed error (still additive, as OBC's) under the exact summed
cost: exact for that error model, up to the buckets' rounding.

Example:
    >>> import numpy as np
    >>> # two groups feeding one conv (cost = product of kept fractions), errors 0 / 1 / 3 per level
    >>> t = JointCost([Term("conv", (0, 1), np.outer([1.0, 0.5, 0.25], [1.0, 0.5, 0.25]))], [3, 3])
    >>> t.total([1, 1]), t.additive_total([1, 1])          # the additive model counts the saving twice
    (0.25, 0.0)
    >>> solve_joint([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]], t, 0.6)[0]
    [0, 1]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.errors import SearchError

#: joint levels a component may have before a hub is fixed (:func:`plan_hubs`)
COMP_LIMIT = 4096

__all__ = ["COMP_LIMIT", "JointCost", "Term", "knapsack_fast", "op_costs", "plan_hubs", "solve_joint", "solve_joint_top"]


@dataclass(frozen=True)
class Term:
    """One op's cost: ``cost[l_1, ..., l_k]`` with units ``deps[i]`` at level index ``l_i`` (no deps: a scalar).
    ``segment``: the feature-map resolution the op runs at (``"16x16"``; ``""`` unknown), which
    :func:`~hwloop.methods.obc.overhead.calibrate_segments` fits one scale per."""

    name: str
    deps: tuple[int, ...]
    cost: np.ndarray
    segment: str = ""

    def at(self, choice: Sequence[int]) -> float:
        return float(self.cost[tuple(int(choice[d]) for d in self.deps)])


class JointCost:
    """The whole-model cost as a sum of :class:`Term` s over ``n_levels[u]`` levels per unit (level 0 = full)."""

    def __init__(self, terms: Sequence[Term], n_levels: Sequence[int]) -> None:
        self.terms = list(terms)
        self.n_levels = [int(n) for n in n_levels]
        for t in self.terms:
            if len(set(t.deps)) != len(t.deps) or t.cost.shape != tuple(self.n_levels[d] for d in t.deps):
                raise ValueError(f"term {t.name}: cost shape {t.cost.shape} does not match its units {t.deps}")

    @property
    def full_choice(self) -> list[int]:
        return [0] * len(self.n_levels)

    def total(self, choice: Sequence[int]) -> float:
        return float(sum(t.at(choice) for t in self.terms))

    def full(self) -> float:
        return self.total(self.full_choice)

    def single_savings(self) -> list[list[float]]:
        """``s[u][l]``: the cost drop with only unit ``u`` at level ``l`` (what the additive DP adds up)."""
        out = [[0.0] * n for n in self.n_levels]
        for t in self.terms:
            f = t.at(self.full_choice)
            for i, d in enumerate(t.deps):
                idx = [0] * len(t.deps)
                for lv in range(self.n_levels[d]):
                    idx[i] = lv
                    out[d][lv] += f - float(t.cost[tuple(idx)])
        return out

    def additive_total(self, choice: Sequence[int]) -> float:
        """The additive model's cost of ``choice``: full minus the single savings summed."""
        s = self.single_savings()
        return self.full() - sum(s[u][li] for u, li in enumerate(choice))

    def breakdown(self, choice: Sequence[int]) -> list[dict[str, Any]]:
        """Per term: full cost, cost at ``choice`` (whole), and the saving the additive model credits it with."""
        full = self.full_choice
        rows = []
        for t in self.terms:
            f = t.at(full)
            credited = 0.0
            for d in t.deps:
                one = list(full)
                one[d] = int(choice[d])
                credited += f - t.at(one)
            rows.append({"term": t.name, "units": list(t.deps), "full": f, "whole": t.at(choice),
                         "saving": f - t.at(choice), "additive_saving": credited})
        return rows


def knapsack_fast(errors: Sequence[Any], costs: Sequence[Any], budget: float,
                  buckets: int) -> tuple[list[int], float] | None:
    """:func:`hwloop.methods.obc.dp.knapsack` (vectorised there; kept under this name for callers)."""
    from hwloop.methods.obc.dp import knapsack

    return knapsack(errors, costs, budget, buckets)


def _frontier(cost: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Indices of the joint levels no other level beats on both cost and error (cheapest first)."""
    order = np.lexsort((err, cost))
    keep, best = [], math.inf
    for i in order.tolist():
        if err[i] < best:
            keep.append(i)
            best = float(err[i])
    return np.asarray(keep, dtype=np.int64)


def plan_hubs(cost: JointCost, candidates: Sequence[int], *, comp_limit: int = COMP_LIMIT
              ) -> tuple[list[int], list[list[int]]]:
    """``(hubs, components)``: hub units (from ``candidates``, most-connected first) until every connected
    component of the other units (linked by sharing a term) has at most ``comp_limit`` joint levels."""
    n = len(cost.n_levels)
    hubs: list[int] = []
    while True:
        free = [u for u in range(n) if u not in hubs]
        adj: dict[int, set[int]] = {u: set() for u in free}
        for t in cost.terms:
            ds = [d for d in t.deps if d not in hubs]
            for a in ds:
                adj[a].update(b for b in ds if b != a)
        comps, seen = [], set()
        for u in free:
            if u in seen:
                continue
            stack, comp = [u], []
            seen.add(u)
            while stack:
                v = stack.pop()
                comp.append(v)
                for w in adj[v] - seen:
                    seen.add(w)
                    stack.append(w)
            comps.append(sorted(comp))
        big = [c for c in comps if math.prod(cost.n_levels[u] for u in c) > comp_limit]
        if not big:
            return hubs, comps
        pick = [u for u in big[0] if u in candidates]
        if not pick:
            raise SearchError(f"dp='joint': a component of {len(big[0])} units has no unit left to fix; "
                              "use dp='additive'")
        hubs.append(max(pick, key=lambda u: (len(adj[u]), -u)))


def solve_joint(errors: Sequence[Sequence[float]], cost: JointCost, budget: float, buckets: int = 10_000, *,
                candidates: Sequence[int] | None = None, comp_limit: int | None = None, hub_limit: int = 20_000
                ) -> tuple[list[int], float] | None:
    """The level per unit minimising ``Σ errors`` with ``cost.total(choice) <= budget`` (bucketed as the additive
    DP: never over the budget); None when nothing fits. ``candidates``: the units that may be hubs (default all).
    """
    top = solve_joint_top(errors, cost, budget, buckets, candidates=candidates, comp_limit=comp_limit,
                          hub_limit=hub_limit, top=1)
    return top[0] if top else None


def solve_joint_top(errors: Sequence[Sequence[float]], cost: JointCost, budget: float, buckets: int = 10_000, *,
                    candidates: Sequence[int] | None = None, comp_limit: int | None = None,
                    hub_limit: int = 20_000, top: int = 1) -> list[tuple[list[int], float]]:
    """The ``top`` best answers of :func:`solve_joint`, best first: each the best of one combination of the hub
    units' levels (so they differ in at least one hub), ``[]`` when nothing fits."""
    n = len(cost.n_levels)
    if len(errors) != n or any(len(e) != k for e, k in zip(errors, cost.n_levels)):
        raise ValueError("errors must have one list per unit with one error per level")
    hubs, comps = plan_hubs(cost, range(n) if candidates is None else candidates,
                            comp_limit=COMP_LIMIT if comp_limit is None else comp_limit)
    combos = math.prod(cost.n_levels[h] for h in hubs)
    if combos > hub_limit:
        raise SearchError(f"dp='joint': {combos} level combinations of the {len(hubs)} hub units exceed "
                          f"{hub_limit}; use dp='additive' or fewer channel_levels")
    err = [np.asarray(e, dtype=np.float64) for e in errors]
    hub_pos = {h: i for i, h in enumerate(hubs)}
    comp_of = {u: ci for ci, c in enumerate(comps) for u in c}
    # each component's joint levels: member level indices, error vector
    grids = []
    for c in comps:
        idx = np.array(list(product(*[range(cost.n_levels[u]) for u in c])), dtype=np.int64).reshape(-1, len(c))
        grids.append(idx)
    comp_err = [sum((err[u][g[:, j]] for j, u in enumerate(c)), np.zeros(len(g))) for c, g in zip(comps, grids)]
    const_terms: list[Any] = []
    comp_terms: list[list[Any]] = [[] for _ in comps]
    for t in cost.terms:
        free = {comp_of[d] for d in t.deps if d not in hub_pos}
        if not free:
            const_terms.append(t)
        else:
            assert len(free) == 1, "a term spans two components"
            comp_terms[free.pop()].append(t)
    best: list[tuple[float, int, list[int]]] = []      # a max-heap of the `top` lowest errors (negated)
    seq = 0
    for hl in product(*[range(cost.n_levels[h]) for h in hubs]):
        const = sum(float(t.cost[tuple(hl[hub_pos[d]] for d in t.deps)]) for t in const_terms)
        ccost = []
        for c, g, terms in zip(comps, grids, comp_terms):
            v = np.zeros(len(g))
            pos = {u: j for j, u in enumerate(c)}
            for t in terms:
                v += t.cost[tuple(np.full(len(g), hl[hub_pos[d]]) if d in hub_pos else g[:, pos[d]]
                                  for d in t.deps)]
            ccost.append(v)
        lo = [float(v.min()) for v in ccost]
        room = budget - const - sum(lo)
        if room < -1e-12 * max(1.0, abs(budget)):
            continue
        herr = sum(float(err[h][hl[i]]) for i, h in enumerate(hubs))
        if not math.isfinite(herr):
            continue
        keep = [_frontier(v, e) for v, e in zip(ccost, comp_err)]   # dominated joint levels dropped
        got = knapsack_fast([e[k] for e, k in zip(comp_err, keep)], [v[k] - m for v, k, m in zip(ccost, keep, lo)],
                            max(room, 0.0), buckets)
        if got is None:
            continue
        total = herr + got[1]
        if len(best) < top or total < -best[0][0]:
            choice = [0] * n
            for i, h in enumerate(hubs):
                choice[h] = hl[i]
            for c, g, k, j in zip(comps, grids, keep, got[0]):
                for m, u in enumerate(c):
                    choice[u] = int(g[k[j], m])
            seq += 1
            item = (-total, -seq, choice)      # the root: the worst kept (largest error, latest on a tie)
            if len(best) < top:
                heapq.heappush(best, item)
            else:
                heapq.heapreplace(best, item)
    return [(c, -t) for t, _, c in sorted(best, key=lambda b: (-b[0], -b[1]))]


def op_costs(space: Any, units: Sequence[Any], device: Any, *, progress: bool = False, source: str = "measure",
             predictor: Any = None) -> tuple[JointCost, Any]:
    """``(JointCost, cost table)``: one term per op of ``space`` (its conv/linear/batch-norm slots and passive ops)
    over the levels of the units (OBC database units: ``group`` levels = channels kept, ``layer`` levels =
    ``("float",)``, ``("bits", b)``, sparse levels costed as dense) that set its input channels, output channels
    and bits, each combination costed by the shared layer cost table on ``device``: ``source="measure"`` (live),
    or ``"predictor"`` (``predictor``, default the one shipped for the device). A predictor with a whole-model
    aggregation (per-kind scales, per-op overhead, a constant: linear in the ops, :mod:`hwloop.predict.aggregate`)
    gives each term its aggregated cost and one constant term, so the sum is that aggregation's whole model
    (checked on the dense model; one line if it is not additive)."""
    from hwloop.search.costtable import build_cost_table

    a_bits = space.options.a_bits
    gi = {u.name: i for i, u in enumerate(units) if u.kind == "group"}
    li = {u.name: i for i, u in enumerate(units) if u.kind == "layer"}
    levels: dict[str, dict[Any, list[Any]]] = {}
    deps_of: dict[str, tuple[int, ...]] = {}
    for slot in [*space.slots, *space.passive_slots()]:
        deps = tuple(dict.fromkeys(d for d in (gi.get(slot.in_key or ""), gi.get(slot.out_key or ""),
                                                li.get(slot.name)) if d is not None))
        name = f"op:{slot.name}"
        deps_of[name] = deps
        table: dict[Any, list[Any]] = {}
        for combo in product(*[range(len(units[d].levels)) for d in deps]):
            at = dict(zip(deps, combo))
            ci = units[gi[slot.in_key]].levels[at[gi[slot.in_key]]] if slot.in_key in gi else None
            co = units[gi[slot.out_key]].levels[at[gi[slot.out_key]]] if slot.out_key in gi else None
            lv: tuple[Any, ...] = units[li[slot.name]].levels[at[li[slot.name]]] if slot.name in li else ("float",)
            bits = int(lv[1]) if lv[0] == "bits" else None
            table[combo] = [slot.spec_at(ci, co, bits, a_bits if bits is not None else None)]
        levels[name] = table
    if source == "predictor" and (predictor is None or isinstance(predictor, (str, Path))):
        predictor = _load_predictor(device, predictor)
    tab = build_cost_table(levels, device=device, source=source, predictor=predictor, progress=progress)
    agg = getattr(predictor, "aggregator_", None) if tab.calibration == "aggregator" else None
    weigh = _aggregated(predictor, agg, levels) if agg is not None else None
    terms = []
    for name, deps in deps_of.items():
        arr = np.zeros(tuple(len(units[d].levels) for d in deps))
        for combo in levels[name]:
            ms = tab.cost(name, combo)
            arr[combo] = ms if weigh is None else weigh(levels[name][combo][0], ms)
        terms.append(Term(name, deps, arr, _resolution(levels[name][tuple([0] * len(deps))][0])))
    if weigh is not None:
        terms.append(Term("aggregation constant", (), np.asarray(weigh(None, 0.0))))
    cost = JointCost(terms, [len(u.levels) for u in units])
    if agg is not None:   # the terms' sum must be the aggregation of the dense model's ops
        from hwloop.search.latency import aggregate_predictions

        zero = {name: tuple([0] * len(deps)) for name, deps in deps_of.items()}
        dense = [levels[name][zero[name]][0] for name in deps_of]
        codes = np.asarray(predictor.layer_predictions(dense)[0]).reshape(-1)
        want = aggregate_predictions(agg, codes, np.asarray([tab.cost(name, zero[name]) for name in deps_of]))
        if not math.isclose(cost.full(), want, rel_tol=1e-6, abs_tol=1e-12):
            raise SearchError(f"dp='joint': the predictor's whole-model aggregation is not a sum over ops "
                              f"({cost.full():.6g} summed vs {want:.6g}); use joint_source='measure'")
    return cost, tab


def _resolution(spec: Any) -> str:
    """``"HxW"`` of the op's output feature map (of its input where the output has none, e.g. global pooling);
    ``""`` for an op without one (a linear layer)."""
    for shape in (spec.out_shape, spec.in_shape):
        if shape is not None and len(shape) >= 4 and math.prod(shape[2:]) > 1:
            return "x".join(str(int(v)) for v in shape[2:])
    return ""


def _load_predictor(device: Any, path: Any) -> Any:
    from hwloop.predict.io import load_predictor
    from hwloop.search.costtable import CostTableError, shipped_predictor

    name = device if isinstance(device, str) else str(getattr(device, "name", device))
    if path is None:
        path = shipped_predictor(name)
        if path is None:
            raise CostTableError(f"joint_source='predictor': no predictor shipped for device {name!r} "
                                 f"(measurements/{name}/predictor.json); use joint_source='measure'")
    return load_predictor(str(path))


def _aggregated(predictor: Any, agg: Any, levels: dict[str, dict[Any, list[Any]]]) -> Any:
    """``weigh(spec, ms)``: what one op of ``spec`` predicted at ``ms`` adds to the aggregation (``spec=None``: the
    aggregation of no ops, its constant)."""
    from hwloop.search.latency import aggregate_predictions

    specs = list({s.key: s for lv in levels.values() for ss in lv.values() for s in ss}.values())
    codes = np.asarray(predictor.layer_predictions(specs)[0]).reshape(-1)
    code_of = {s.key: int(c) for s, c in zip(specs, codes)}
    empty = np.zeros(0, dtype=np.int64)
    base = aggregate_predictions(agg, empty, np.zeros(0))

    def weigh(spec: Any, ms: float) -> float:
        if spec is None:
            return base
        return aggregate_predictions(agg, np.asarray([code_of[spec.key]]), np.asarray([ms])) - base

    return weigh
