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

Example:
    >>> a = fit_overhead([0.8, 0.5, 0.3], [0.86, 0.65, 0.51])      # r = 0.3 + 0.7 s
    >>> round(a, 9), round(overhead_ratio(a, 0.5), 9), round(budget_fraction(a, 0.65), 9)
    (0.3, 0.65, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from hwloop.errors import SearchError

__all__ = ["budget_fraction", "calibrate_overhead", "fit_overhead", "overhead_ratio", "probe_choices"]


def fit_overhead(s: Sequence[float], r: Sequence[float]) -> float:
    """``α`` minimising ``Σ (r_k − α − (1 − α) s_k)²``: the fixed share of the dense model's latency, from probes
    with op-sum ratios ``s`` and measured whole-model ratios ``r`` (both against the dense model)."""
    if len(s) != len(r) or not s:
        raise SearchError(f"fit_overhead: {len(s)} op-sum ratios and {len(r)} measured ratios (need as many, >= 1)")
    if not all(math.isfinite(x) and x > 0 for x in [*s, *r]):
        raise SearchError(f"fit_overhead: ratios must be finite and > 0, got s={list(s)!r} r={list(r)!r}")
    den = sum((1.0 - a) ** 2 for a in s)
    if den < 1e-12:
        raise SearchError(f"fit_overhead: every probe has the dense model's op sum (s={list(s)!r}); nothing to fit")
    alpha = sum((1.0 - a) * (b - a) for a, b in zip(s, r)) / den
    if alpha >= 1.0:
        raise SearchError(f"fit_overhead: the probes measured no speed-up (fixed share {alpha:.3f} >= 1; "
                          f"s={[round(a, 4) for a in s]}, r={[round(b, 4) for b in r]})")
    return float(alpha)


def overhead_ratio(alpha: float, s: float) -> float:
    """The calibrated whole-model ratio of an op-sum ratio ``s``."""
    return alpha + (1.0 - alpha) * s


def budget_fraction(alpha: float, target: float) -> float:
    """The op-sum ratio whose calibrated whole-model ratio is ``target`` (<= 0: no answer can reach it)."""
    return (target - alpha) / (1.0 - alpha)


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
    alpha = fit_overhead([p["op_sum_ratio"] for p in rows], [p["measured_ratio"] for p in rows])
    for p in rows:
        p["fitted_ratio"] = overhead_ratio(alpha, p["op_sum_ratio"])
        p["residual"] = p["measured_ratio"] - p["fitted_ratio"]
    info = {"alpha": alpha, "probes": rows, "max_abs_residual": max(abs(p["residual"]) for p in rows), "k": k}
    if say is not None:
        say(f"obc: fixed share of the dense model {alpha:.4f} (whole = {alpha:.3f} + {1 - alpha:.3f} x op sum; "
            f"largest probe residual {info['max_abs_residual']:.4f})")
    return alpha, info
