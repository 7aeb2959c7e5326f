"""A device's whole-model latency as a function of a cost table's sum, fitted on probe models measured whole.

Shared by the methods that optimise a sum of per-layer costs and must land on a *measured* whole-model latency
(OBC's ``calibrate``, HALOC's ``calibrate``). On eager PyTorch at batch 1 a model's latency is not the sum of its
layers' isolated timings (dispatch, batch norms, activations, adds; small factorised convs use the CPU worse than
their isolated timings say), so a sum ratio ``s`` and the measured ratio ``r`` of the same model differ.

* :func:`fit_overhead`: one fixed share ``α`` of the dense model that does not follow the sum,
  ``r = α + (1 − α)·s`` (least squares through the dense point);
* :class:`RatioMap`: ``r`` as a monotone piecewise-linear function of ``s`` through the probes and the dense
  point, ``α``'s slope below the lowest probe; ``budget(target)`` is the sum ratio to aim at.

Example:
    >>> a = fit_overhead([0.8, 0.5, 0.3], [0.86, 0.65, 0.51])      # r = 0.3 + 0.7 s
    >>> round(a, 9), round(overhead_ratio(a, 0.5), 9), round(budget_fraction(a, 0.65), 9)
    (0.3, 0.65, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hwloop.errors import SearchError

__all__ = ["RatioMap", "budget_fraction", "fit_overhead", "overhead_ratio"]


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


@dataclass(frozen=True)
class RatioMap:
    """The whole-model ratio as a monotone piecewise-linear function of the op-sum ratio, through the dense point
    ``(1, 1)`` and the probes ``(s_k, r_k)`` (measured ratios made non-decreasing in ``s`` by pooling adjacent
    violators); below the lowest probe the fixed-share slope ``1 - alpha`` through that probe (continuous, so
    ``budget`` inverts ``ratio`` everywhere). What ``calibrate_by = "dp"`` gives the
    DP: the DP's answers at nearby budgets measure as the probes did, so a target between two probes is read off
    the segment between them instead of one line fitted through all.

    Example:
        >>> m = RatioMap((0.4, 0.7, 1.0), (0.5, 0.8, 1.0), 0.1)
        >>> round(m.ratio(0.55), 9), round(m.budget(0.65), 9), round(m.budget(0.3), 9)
        (0.65, 0.55, 0.177777778)
    """

    s: tuple[float, ...]
    r: tuple[float, ...]
    alpha: float

    def ratio(self, s: float) -> float:
        if s < self.s[0]:   # below the lowest probe: the fixed-share slope through that probe (continuous)
            return self.r[0] + (1.0 - self.alpha) * (s - self.s[0])
        return float(np.interp(s, self.s, self.r))

    def budget(self, target: float) -> float:
        if target < self.r[0]:   # the inverse of ratio() below the lowest probe
            return self.s[0] + (target - self.r[0]) / (1.0 - self.alpha)
        return float(np.interp(target, self.r, self.s))

    @classmethod
    def fit(cls, s: Sequence[float], r: Sequence[float], alpha: float) -> RatioMap:
        """From probes ``(s, r)`` (not including the dense point) and the fallback ``alpha``."""
        pts = sorted(zip([float(v) for v in s], [min(float(v), 1.0) for v in r]))
        # a probe costed at or above the dense sum says nothing below it; one that *measured* at or above the dense
        # model (s < 1) says the whole model is no faster there: kept, capped at 1 (a flat segment, not dropped)
        pts = [p for p in pts if p[0] < 1.0] + [(1.0, 1.0)]
        blocks: list[list[float]] = []           # pool adjacent violators: [sum of s, sum of r, count]
        for a, b in pts:
            blocks.append([a, b, 1.0])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
                x = blocks.pop()
                blocks[-1] = [blocks[-1][0] + x[0], blocks[-1][1] + x[1], blocks[-1][2] + x[2]]
        merged: list[list[float]] = []           # identical DP answers (equal s): one point, r averaged
        for bl in blocks:
            if merged and merged[-1][0] / merged[-1][2] == bl[0] / bl[2]:
                merged[-1] = [merged[-1][0] + bl[0], merged[-1][1] + bl[1], merged[-1][2] + bl[2]]
            else:
                merged.append(bl)
        xs = [bl[0] / bl[2] for bl in merged]
        ys = [bl[1] / bl[2] for bl in merged]
        if xs[-1] != 1.0:                       # the dense point pooled with a probe: keep it exact
            xs.append(1.0)
            ys.append(1.0)
        return cls(tuple(xs), tuple(ys), float(alpha))
