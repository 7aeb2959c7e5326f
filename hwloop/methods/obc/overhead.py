"""A whole-model cost the joint DP can trust on a CPU: its op sum plus a fixed part fitted before the DP.

On eager PyTorch at batch 1 a small model's latency is not the sum of its layers' isolated timings: every op
call pays a dispatch cost (Python module call, tensor allocation, kernel selection) that does not shrink when
channels are removed, and batch-norms, activations, adds and pooling add their own. Channel pruning keeps every
op, so that part stays while the compute part falls. In ratio to the dense model

    r(choice) = α + (1 − α) · S(choice) / S(dense)

where ``S`` is the joint DP's op sum (:class:`~hwloop.methods.obc.joint.JointCost`, from the layer cost table
or a predictor) and ``α`` the share of the dense model that does not follow it. ``α`` is fitted by least squares
through the dense point (``r = s = 1``) from ``K`` whole-model measurements of *probe* architectures (every
channel group at the same level of its ladder, :func:`probe_choices`) measured on the device *before* the DP,
so the DP's first answer is made under the calibrated cost (``calibrate = K`` in ``[method] obc``). For a
target ``t`` the DP's budget on ``S`` is ``S(dense) · (t − α) / (1 − α)`` (:func:`budget_fraction`); ``α = 0``
is the plain op sum (asic-tpu32, whose whole model *is* the sum of its ops).

One fixed share cannot see *where* the op sum is wrong: uniform probes shrink every part of the model together,
so a cost that splits the dense model's time wrongly between its parts fits them and still misleads the DP, which
shrinks the parts it believes expensive. :func:`calibrate_segments` (``calibrate_by = "resolution"``) fits one
scale per feature-map resolution (:attr:`Term.segment`) from the uniform probes plus one *deep-cut* probe per
resolution (that resolution's channel groups at the bottom of their ladders, the rest full). (On the CPU it was
built for a stage-split reading of the quiet measurements that its own deep-cut probes then refuted: the scales
came out nearly equal and the DP's answers were the fixed share's; the CPU's miss is in the DP's non-uniform
answers, see docs/obc.md, "Why the CPU cost was optimistic at deep cuts".)

    C(choice) = c₀ + Σ_k b_k · S_k(choice),   c₀ = S(dense) − Σ_k b_k · S_k(dense)

(``S_k``: the op sum of the terms at resolution ``k``; ``b_k ≥ 0`` by non-negative least squares on
``r − 1 = Σ_k b_k (S_k − S_k(dense)) / S(dense)``), a cost the DP uses as it is (one scaled term per op, plus
``c₀``); with one resolution it is the fixed-share fit above.

Example:
    >>> a = fit_overhead([0.8, 0.5, 0.3], [0.86, 0.65, 0.51])      # r = 0.3 + 0.7 s
    >>> round(a, 9), round(overhead_ratio(a, 0.5), 9), round(budget_fraction(a, 0.65), 9)
    (0.3, 0.65, 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hwloop.errors import SearchError
from hwloop.methods.wholemodel import RatioMap, budget_fraction, fit_overhead, overhead_ratio

__all__ = ["RatioMap", "budget_fraction", "budget_of", "calibrate_dp", "calibrate_overhead", "calibrate_segments", "fit_overhead", "fit_segments",
           "home_segments", "overhead_ratio", "probe_choices", "ratio_of", "segment_probes", "term_segments"]


def ratio_of(alpha: float | RatioMap, s: float) -> float:
    """The calibrated whole-model ratio of an op-sum ratio ``s`` under a fixed share or a :class:`RatioMap`."""
    return alpha.ratio(s) if isinstance(alpha, RatioMap) else overhead_ratio(alpha, s)


def budget_of(alpha: float | RatioMap, target: float) -> float:
    """The op-sum ratio whose calibrated whole-model ratio is ``target`` (fixed share or :class:`RatioMap`)."""
    return alpha.budget(target) if isinstance(alpha, RatioMap) else budget_fraction(alpha, target)


def probe_choices(n_levels: Sequence[int], groups: Sequence[int], k: int) -> list[list[int]]:
    """``k`` probe choices (level indices per unit; level 0 = full): every unit in ``groups`` at the ``j/(k+1)``
    point of its ladder (``j = 1..k``), the other units (bit-widths) at full."""
    if k < 1:
        raise SearchError(f"calibrate={k!r} must be an int >= 1 (whole-model probes)")
    out = []
    for j in range(1, k + 1):
        ch = [0] * len(n_levels)
        for u in groups:
            ch[u] = min(n_levels[u] - 1, max(1, round(j * (n_levels[u] - 1) / (k + 1))))
        out.append(ch)
    return out


def calibrate_overhead(cost: Any, groups: Sequence[int], k: int,
                       measure: Callable[[list[int]], tuple[float, dict[str, Any]]],
                       say: Callable[[str], None] | None = None) -> tuple[float, dict[str, Any]]:
    """``(α, info)``: ``k`` probes (:func:`probe_choices`) measured by ``measure(choice) -> (whole-model ratio
    against the dense model, details)``, the op-sum ratio of each from ``cost`` (a
    :class:`~hwloop.methods.obc.joint.JointCost`), ``α`` from :func:`fit_overhead`. ``info`` has every probe
    (op-sum ratio, measured, fitted, residual), ``alpha`` and ``max_abs_residual``."""
    rows: list[dict[str, Any]] = []
    full = cost.full()
    for ch in probe_choices(cost.n_levels, groups, k):
        s = cost.total(ch) / full
        r, how = measure(ch)
        rows.append({"choice": [int(v) for v in ch], "op_sum_ratio": float(s), "measured_ratio": float(r), **how})
        if say is not None:
            say(f"obc: overhead probe {len(rows)}/{k}: op sum {s:.4f} x, whole model measured {r:.4f} x")
    return _fit_rows(rows, k, say)


def calibrate_dp(cost: Any, groups: Sequence[int], k: int, solve: Callable[[float], Sequence[int] | None],
                 measure: Callable[[list[int]], tuple[float, dict[str, Any]]],
                 say: Callable[[str], None] | None = None) -> tuple[RatioMap, dict[str, Any]]:
    """``(map, info)`` as :func:`calibrate_overhead`, the probes being *the DP's own answers* (``calibrate_by =
    "dp"``): ``solve(budget) -> choice`` (the DP on the plain op sum ``cost``, None when nothing fits) at the op-sum
    budgets of the ``k`` uniform probes (:func:`probe_choices`; fixed points, not the targets), each answer measured
    whole. An optimiser picks the choices whose costs are most optimistic, so a cost fitted on other choices (uniform
    probes) leaves its answers slower than predicted; fitted on its answers, the fixed share carries that bias. With
    one fixed share the calibrated DP at any target is the plain DP at another budget, so its answer is of the
    family the probes sampled. The result is a :class:`RatioMap` through the probes (the fixed share fitted on
    them, ``info["alpha"]``, beyond their range): the bias is not one share at every budget. ``info["probes"]``
    rows have ``probe_kind`` ``"dp"`` and ``budget_ratio``; ``info["map"]`` the map's points."""
    rows: list[dict[str, Any]] = []
    full = cost.full()
    budgets = sorted({round(cost.total(ch) / full, 12) for ch in probe_choices(cost.n_levels, groups, k)},
                     reverse=True)
    for b in budgets:
        ch = solve(full * b)
        if ch is None:
            continue
        s = cost.total(ch) / full
        r, how = measure([int(v) for v in ch])
        rows.append({"probe_kind": "dp", "budget_ratio": float(b), "choice": [int(v) for v in ch],
                     "op_sum_ratio": float(s), "measured_ratio": float(r), **how})
        if say is not None:
            say(f"obc: DP-answer probe {len(rows)}/{len(budgets)} (op-sum budget {b:.4f}): op sum {s:.4f} x, whole "
                f"model measured {r:.4f} x")
    if not rows:
        raise SearchError(f"calibrate_by='dp': the DP found no answer at any of the {len(budgets)} probe budgets")
    alpha, info = _fit_rows(rows, k, say)
    rmap = RatioMap.fit([p["op_sum_ratio"] for p in rows], [p["measured_ratio"] for p in rows], alpha)
    return rmap, {**info, "by": "dp", "map": {"op_sum_ratio": list(rmap.s), "measured_ratio": list(rmap.r)}}


def _fit_rows(rows: list[dict[str, Any]], k: int, say: Callable[[str], None] | None) -> tuple[float, dict[str, Any]]:
    alpha = fit_overhead([p["op_sum_ratio"] for p in rows], [p["measured_ratio"] for p in rows])
    for p in rows:
        p["fitted_ratio"] = overhead_ratio(alpha, p["op_sum_ratio"])
        p["residual"] = p["measured_ratio"] - p["fitted_ratio"]
    info = {"alpha": alpha, "probes": rows, "max_abs_residual": max(abs(p["residual"]) for p in rows), "k": k}
    if say is not None:
        say(f"obc: fixed share of the dense model {alpha:.4f} (whole = {alpha:.3f} + {1 - alpha:.3f} x op sum; "
            f"largest probe residual {info['max_abs_residual']:.4f})")
    return alpha, info


def term_segments(cost: Any, groups: Sequence[int]) -> list[str | None]:
    """Each term's segment: its :attr:`Term.segment`, else the home segment (:func:`home_segments`) of its first
    group; ``"all"`` where nothing is labelled; ``None`` for a term no group changes (a constant)."""
    homes = home_segments(cost, groups)
    out: list[str | None] = []
    for t in cost.terms:
        gs = [d for d in t.deps if d in homes]
        out.append(None if not gs else (t.segment or homes[gs[0]]))
    return out


def home_segments(cost: Any, groups: Sequence[int]) -> dict[int, str]:
    """``{group: segment}``: the labelled segment holding most of the dense cost of the terms the group changes
    (``"all"`` for every group when no term is labelled)."""
    full = cost.full_choice
    out = {}
    for g in groups:
        by: dict[str, float] = {}
        for t in cost.terms:
            if g in t.deps and t.segment:
                by[t.segment] = by.get(t.segment, 0.0) + abs(t.at(full))
        out[int(g)] = max(by, key=lambda k: (by[k], k)) if by else "all"
    return out


def segment_probes(cost: Any, groups: Sequence[int]) -> list[tuple[str, list[int]]]:
    """One deep-cut probe per segment (sorted): its home groups at their ladder's last level, the rest at full."""
    homes = home_segments(cost, groups)
    out = []
    for seg in sorted(set(homes.values())):
        ch = [0] * len(cost.n_levels)
        for g, h in homes.items():
            if h == seg:
                ch[g] = cost.n_levels[g] - 1
        out.append((seg, ch))
    return out


def fit_segments(z: Sequence[Sequence[float]], y: Sequence[float]) -> list[float]:
    """``b ≥ 0`` minimising ``Σ_p (y_p − Σ_k b_k z_pk)²`` (non-negative least squares): ``z_pk`` a probe's change of
    segment ``k``'s op sum and ``y_p`` its measured change, both as fractions of the dense model."""
    from scipy.optimize import nnls

    Z = np.asarray(z, dtype=np.float64)
    Y = np.asarray(y, dtype=np.float64)
    if Z.ndim != 2 or len(Z) != len(Y) or len(Y) == 0 or not (np.isfinite(Z).all() and np.isfinite(Y).all()):
        raise SearchError(f"fit_segments: need finite changes, one row per probe (got {Z.shape} and {Y.shape})")
    if np.linalg.matrix_rank(Z) < Z.shape[1]:
        raise SearchError(f"fit_segments: the {len(Y)} probes do not separate the {Z.shape[1]} segments (rank "
                          f"{np.linalg.matrix_rank(Z)}); add probes")
    b, _ = nnls(Z, Y)
    if not np.any(b > 0):
        raise SearchError(f"fit_segments: the probes measured no speed-up (changes {np.round(Y, 4).tolist()})")
    return [float(v) for v in b]


def calibrate_segments(cost: Any, groups: Sequence[int], k: int,
                       measure: Callable[[list[int]], tuple[float, dict[str, Any]]],
                       say: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(calibrated cost, info)``: ``k`` uniform probes (:func:`probe_choices`) and one deep-cut probe per
    segment (:func:`segment_probes`) measured by ``measure(choice) -> (whole-model ratio, details)``; one scale
    per segment by :func:`fit_segments`; the calibrated :class:`~hwloop.methods.obc.joint.JointCost` (every term
    scaled by its segment's ``b``, constants kept, plus the fixed part ``c₀``; its dense total is the plain op
    sum's, so a target ``t`` is the budget ``t · full()``). ``info``: every probe (op-sum ratio, measured,
    fitted, residual), the scales, ``alpha`` (``c₀`` as a share of the dense model) and ``max_abs_residual``."""
    from hwloop.methods.obc.joint import JointCost, Term

    seg_of = term_segments(cost, groups)
    segs = sorted({x for x in seg_of if x is not None})
    full = cost.full_choice
    s0 = cost.full()

    def parts(ch: list[int]) -> list[float]:
        v = dict.fromkeys(segs, 0.0)
        for t, sg in zip(cost.terms, seg_of):
            if sg is not None:
                v[sg] += t.at(ch)
        return [v[x] for x in segs]

    p0 = parts(full)
    probes = [("uniform", ch) for ch in probe_choices(cost.n_levels, groups, k)] if k > 0 else []
    probes += [(f"deep {sg}", ch) for sg, ch in segment_probes(cost, groups)]
    rows: list[dict[str, Any]] = []
    for kind, ch in probes:
        r, how = measure(ch)
        rows.append({"probe_kind": kind, "choice": [int(v) for v in ch], "op_sum_ratio": cost.total(ch) / s0,
                     "segments": [(a - b) / s0 for a, b in zip(parts(ch), p0)], "measured_ratio": float(r), **how})
        if say is not None:
            say(f"obc: probe {len(rows)}/{len(probes)} ({kind}): op sum {rows[-1]['op_sum_ratio']:.4f} x, whole "
                f"model measured {r:.4f} x")
    b = fit_segments([p["segments"] for p in rows], [p["measured_ratio"] - 1.0 for p in rows])
    scale = dict(zip(segs, b))
    c0 = s0 - sum(bk * pk for bk, pk in zip(b, p0))
    terms = [t if sg is None else Term(t.name, t.deps, t.cost * scale[sg], t.segment)
             for t, sg in zip(cost.terms, seg_of)]
    kept = sum(t.at(full) for t, sg in zip(cost.terms, seg_of) if sg is None)     # constants, already in c0
    cal = JointCost([*terms, Term("fixed share (calibrated)", (), np.asarray(c0 - kept))], cost.n_levels)
    for p in rows:
        p["fitted_ratio"] = cal.total(p["choice"]) / s0
        p["residual"] = p["measured_ratio"] - p["fitted_ratio"]
    info = {"by": "resolution", "alpha": c0 / s0, "scales": scale,
            "dense_share": {sg: pk / s0 for sg, pk in zip(segs, p0)},
            "calibrated_share": {sg: scale[sg] * pk / s0 for sg, pk in zip(segs, p0)},
            "probes": rows, "max_abs_residual": max(abs(p["residual"]) for p in rows), "k": k}
    if say is not None:
        say("obc: per-resolution scales " + ", ".join(f"{sg} {scale[sg]:.3f} (share {info['dense_share'][sg]:.3f} "
                                                       f"-> {info['calibrated_share'][sg]:.3f})" for sg in segs)
            + f"; fixed share {c0 / s0:.4f}; largest probe residual {info['max_abs_residual']:.4f}")
    return cal, info
