"""HALOC's cost table against the device's whole-model latency (``calibrate = K`` in ``[method] haloc``).

The search optimises the table's sum of layer costs. Where the device's whole model is that sum (asic-tpu32) the
table's ratio is the measured one; on the CPU it is not: layers timed alone miss what the whole model pays around
them, and small factorised convs (a Tucker-2 is three convs) use the CPU worse in the model than alone (HALOC's
local-cpu cells, docs/haloc.md: 0.685× in the table measured 0.846×). With ``calibrate = K``, K probe models are
built and measured whole on the device before the search — every factorised layer at the same position of its
rank ladder (:func:`probe_choices`), from the smallest rank up — and a
:class:`~hwloop.methods.wholemodel.RatioMap` through them maps a table ratio to a whole-model ratio. The search
(and the repair, and ``ranks = "uniform"``'s pick) then aims at ``map.budget(target)`` in the table, and the
candidate's predicted ratio is the mapped one, so the budget verdict is about the whole model.

Example:
    >>> from hwloop.methods.haloc.mixed import DENSE, rank_level
    >>> levels = {"a": [DENSE, rank_level(2), rank_level(4), rank_level(8)], "b": [rank_level(4), rank_level(16)]}
    >>> [{n: lv[1] for n, lv in ch.items()} for ch in probe_choices(levels, 2)]
    [{'a': 2, 'b': 4}, {'a': 4, 'b': 4}]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hwloop.errors import SearchError
from hwloop.methods.haloc.mixed import DENSE, Level, extract, wrap_model
from hwloop.methods.wholemodel import RatioMap, fit_overhead

__all__ = ["calibrate_table", "measure_choice", "probe_choices"]


def probe_choices(levels: Mapping[str, Sequence[Level]], k: int) -> list[dict[str, Level]]:
    """``k`` probes: probe ``j`` (``j = 0..k−1``) puts every layer at position ``round(j·(n−1)/k)`` of its rank
    candidates (the dense level left out, smallest rank first), so probe 0 is the smallest rank everywhere and the
    last is ``(k−1)/k`` of the way up; identical probes are kept once."""
    if k < 1:
        raise SearchError(f"calibrate={k!r} must be an int >= 1 (whole-model probes)")
    ranks = {n: sorted((lv for lv in lvs if lv != DENSE), key=lambda lv: lv[1]) for n, lvs in levels.items()}
    ranks = {n: r for n, r in ranks.items() if r}
    if not ranks:
        raise SearchError("calibrate: no layer has a rank candidate to probe")
    out: list[dict[str, Level]] = []
    for j in range(k):
        ch = {n: r[round(j * (len(r) - 1) / k)] for n, r in ranks.items()}
        if ch not in out:
            out.append(ch)
    return out


def measure_choice(context: Any, base: Any, choice: Mapping[str, Level]) -> tuple[float, dict[str, Any]]:
    """The whole-model ratio of ``choice`` (each layer's Tucker-2 / SVD factors from ``base``'s weights) against
    ``base`` on the context's device: :func:`~hwloop.search.report.compare_compressed` (interleaved on the CPU)."""
    from hwloop.compress.plan import CompressionPlan
    from hwloop.search.report import compare_compressed

    net, actions = extract(wrap_model(base, {n: [lv] for n, lv in choice.items()}), dict(choice))
    plan = CompressionPlan(base=context.ref.to_dict(), actions=actions)
    t = time.perf_counter()
    m = compare_compressed(context.device, net.eval(), plan, base, example=context.example())
    # device measurements as measure_candidates counts them: two models per round, in each comparison pass
    n = 2 * int(m.get("rounds", 1) or 1) * int(m.get("passes", 1) or 1)
    return float(m["ratio"]), {"ratio_ci": list(m["ratio_ci"]), "unstable": bool(m["unstable"]),
                               "device_s": time.perf_counter() - t, "device_measurements": n}


def calibrate_table(levels: Mapping[str, Sequence[Level]], table_ratio: Callable[[Mapping[str, Level]], float], k: int,
                    measure: Callable[[Mapping[str, Level]], tuple[float, dict[str, Any]]],
                    say: Callable[[str], None] | None = None) -> tuple[RatioMap, dict[str, Any]]:
    """``(map, info)``: the :func:`probe_choices` of ``levels`` costed by ``table_ratio(choice)`` (the table's ratio
    to the dense model) and measured by ``measure(choice) -> (whole-model ratio, details)``; the map through them
    (:meth:`RatioMap.fit`, the fixed share of :func:`~hwloop.methods.wholemodel.fit_overhead` below the lowest
    probe). ``info``: ``probes`` (choice as ranks, table ratio, measured ratio, details), ``alpha``, ``map``."""
    rows: list[dict[str, Any]] = []
    probes = probe_choices(levels, k)
    for ch in probes:
        s = float(table_ratio(ch))
        r, how = measure(ch)
        rows.append({"ranks": {n: int(lv[1]) for n, lv in ch.items()}, "table_ratio": s, "measured_ratio": float(r),
                     **how})
        if say is not None:
            say(f"haloc: calibration probe {len(rows)}/{len(probes)}: table {s:.4f} x, whole model measured "
                f"{r:.4f} x")
    s_all, r_all = [p["table_ratio"] for p in rows], [p["measured_ratio"] for p in rows]
    alpha = fit_overhead(s_all, r_all)
    rmap = RatioMap.fit(s_all, r_all, alpha)
    return rmap, {"probes": rows, "alpha": alpha, "map": {"table_ratio": list(rmap.s), "measured_ratio": list(rmap.r)}}
