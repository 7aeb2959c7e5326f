"""The ``flops-matched`` control's target logic: which FLOPs target to try next, when to stop, and the accuracy
interpolated at the method's measured latency. Pure functions of ``(FLOPs target, measured ratio)`` pairs (no
training), so the harness's loop (:meth:`hwloop.search.harness.Harness._flops_matched_row`) is tested with scripted
responses.

The control runs the method with the FLOPs (MACs) cost source at a FLOPs *target*, measures the result on the device
and moves the target until one run lands within the tolerance of the method's measured latency ratio, or its runs
**bracket** it (one run at or under it, one over) with both bracketing runs within :data:`BRACKET_SPAN` times the
tolerance (a wider bracket is narrowed first: the linear interpolation below is only trusted over a short span), up
to ``max_runs`` runs (``[controls] flops_runs``). The accuracy at the method's measured latency is then linearly
interpolated (in measured latency) between the two bracketing runs nearest it on each side; the nearest run is kept
as the row.

Example:
    >>> runs = match_flops_target(lambda t: 0.2 + 0.7 * t, start=0.6, goal=0.5, tolerance=0.003, max_runs=6)
    >>> runs.stop, [round(t, 3) for t, _ in runs.tried], runs.bracket
    ('bracketed', [0.6, 0.484, 0.432, 0.426], (3, 2))
    >>> interpolate([(0.5, 0.65, 80.0), (0.3, 0.55, 70.0)], 0.6)
    75.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BRACKET_SPAN", "FlopsMatch", "bracket", "interpolate", "match_flops_target", "next_flops_target"]

#: a bracket ends the search when both of its runs are within this many tolerances of the goal
BRACKET_SPAN = 3.0

#: why the target search stopped (``FlopsMatch.stop``)
STOPS = {"within": "a run within the tolerance",
         "bracketed": f"runs on both sides of the method's measured latency, each within {BRACKET_SPAN:g} tolerances",
         "cap": "the run cap", "bound": "the FLOPs target at its bound (the goal is out of reach)",
         "unmeasured": "a run without a measured latency"}


def _pts(tried: Sequence[Sequence[Any]]) -> list[tuple[float, float]]:
    return [(float(p[0]), float(p[1])) for p in tried]


def bracket(tried: Sequence[Sequence[Any]], goal: float) -> tuple[int, int] | None:
    """Indices ``(under, over)`` of the runs nearest ``goal`` on each side (``under``: measured <= goal, ``over``:
    measured > goal), or None when every run is on one side."""
    pts = _pts(tried)
    under = [i for i, (_, m) in enumerate(pts) if m <= goal]
    over = [i for i, (_, m) in enumerate(pts) if m > goal]
    if not under or not over:
        return None
    return max(under, key=lambda i: pts[i][1]), min(over, key=lambda i: pts[i][1])


def next_flops_target(tried: Sequence[Sequence[Any]], goal: float, lo: float = 0.02, hi: float = 1.0) -> float:
    """The next FLOPs target from ``(target, measured ratio, ...)`` runs so far, clipped to [lo, hi].

    * bracketed (runs on both sides of ``goal``): false position in log(measured) vs log(target) between the
      nearest run on each side, kept inside the middle 80% of their log(target) interval (so it cannot stall at an
      end; a flat pair gives the midpoint);
    * one run: move in proportion (``target * goal / measured``);
    * otherwise a secant on log(measured) vs log(target) through the two runs nearest the goal (the slope kept in
      [0.2, 5]); from the third run on one side its step is doubled per further run (a secant that fell short
      twice meets a flattening response: overshooting gives the bracket the interpolation needs).
    """
    pts = _pts(tried)
    if not pts:
        raise ValueError("next_flops_target needs at least one run")
    b = bracket(pts, goal)
    if b is not None:
        (ta, ma), (tb, mb) = pts[b[0]], pts[b[1]]
        la, lb = math.log(ta), math.log(tb)
        if la == lb or ma == mb:
            return float(min(hi, max(lo, math.sqrt(ta * tb))))
        w = (math.log(goal) - math.log(ma)) / (math.log(mb) - math.log(ma))
        w = min(0.9, max(0.1, w))
        return float(min(hi, max(lo, math.exp(la + w * (lb - la)))))
    near = sorted(pts, key=lambda x: abs(math.log(x[1] / goal)))[:2]
    t0, m0 = near[0]
    slope = 1.0
    if len(near) == 2 and near[1][0] != t0 and near[1][1] != m0:
        slope = (math.log(near[1][1]) - math.log(m0)) / (math.log(near[1][0]) - math.log(t0))
        slope = min(5.0, max(0.2, slope))
    step = (math.log(goal) - math.log(m0)) / slope
    if len(pts) >= 3:
        step *= 2.0 ** (len(pts) - 2)
    return float(min(hi, max(lo, math.exp(math.log(t0) + step))))


@dataclass
class FlopsMatch:
    """The runs of one target search: ``tried`` ``(target, measured)`` in order, why it stopped, the nearest run's
    index, the bracketing pair (or None) and whether the nearest run is within the tolerance."""

    tried: list[tuple[float, float]] = field(default_factory=list)
    stop: str = "cap"
    nearest: int = 0
    bracket: tuple[int, int] | None = None
    within: bool = False


def match_flops_target(run: Callable[[float], float | None], start: float, goal: float, *, tolerance: float,
                       max_runs: int, lo: float = 0.02, hi: float = 1.0) -> FlopsMatch:
    """Call ``run(target) -> measured ratio`` from ``start`` until a run is within ``tolerance`` of ``goal``
    (relative), or the runs bracket ``goal`` with both bracketing runs within ``BRACKET_SPAN * tolerance``, or
    ``max_runs`` runs, or the next target repeats one (clipped at a bound), or a run is not measured (None)."""
    if not goal > 0:
        raise ValueError(f"goal={goal!r} must be > 0")
    res = FlopsMatch()
    t = float(min(hi, max(lo, start)))
    while True:
        if len(res.tried) >= max(1, max_runs):
            res.stop = "cap"
            break
        if res.tried:
            t = next_flops_target(res.tried, goal, lo, hi)
            if any(math.isclose(t, a, rel_tol=1e-9) for a, _ in res.tried):
                res.stop = "bound"
                break
        m = run(t)
        if m is None or not m > 0:
            res.stop = "unmeasured"
            break
        res.tried.append((t, float(m)))
        if abs(float(m) / goal - 1) <= tolerance:
            res.stop = "within"
            break
        b = bracket(res.tried, goal)
        if b is not None and all(abs(res.tried[i][1] / goal - 1) <= BRACKET_SPAN * tolerance for i in b):
            res.stop = "bracketed"
            break
    if res.tried:
        res.nearest = min(range(len(res.tried)), key=lambda i: abs(math.log(res.tried[i][1] / goal)))
        res.within = abs(res.tried[res.nearest][1] / goal - 1) <= tolerance
        res.bracket = bracket(res.tried, goal)
    return res


def interpolate(points: Sequence[Sequence[Any]], goal: float) -> float | None:
    """The value at measured ratio ``goal``, linear in measured ratio between the bracketing pair of
    ``(target, measured, value)`` points (:func:`bracket`); None without a bracket or a value."""
    b = bracket(points, goal)
    if b is None:
        return None
    (_, ma, va), (_, mb, vb) = points[b[0]], points[b[1]]
    if va is None or vb is None:
        return None
    w = (goal - float(ma)) / (float(mb) - float(ma))
    return float(va) + w * (float(vb) - float(va))
