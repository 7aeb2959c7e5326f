"""Pareto fronts and 2-D hypervolume over (accuracy, latency) points, and hypervolume-vs-compute curves.

Conventions: a point is ``(accuracy, latency_ms)``; accuracy is maximised and latency minimised
unless ``maximize`` says otherwise. A point dominates another when it is at least as good in every
objective and strictly better in one; identical points do not dominate each other.

The hypervolume is the area dominated by the points and bounded by a reference point (a
deliberately bad ``(accuracy, latency_ms)``: e.g. chance accuracy and the uncompressed model's
latency). Points not strictly better than the reference in both objectives add nothing.

Example:
    >>> from hwloop.search.pareto import pareto_front, hypervolume_2d
    >>> pts = [(0.9, 2.0), (0.8, 1.0), (0.7, 3.0), (0.9, 2.0)]
    >>> pareto_front(pts)
    [1, 0]
    >>> hypervolume_2d(pts, reference=(0.0, 4.0))
    2.6
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from hwloop.errors import ConfigError

__all__ = ["HvPoint", "compute_to_reach", "hypervolume_2d", "hypervolume_curve", "pareto_front"]

Point = Sequence[float]


def _check(points: Sequence[Point], maximize: Sequence[bool]) -> list[tuple[float, float]]:
    if len(maximize) != 2:
        raise ConfigError(f"maximize={tuple(maximize)!r} must give exactly two objectives")
    out: list[tuple[float, float]] = []
    for p in points:
        if len(p) != 2:
            raise ConfigError(f"point {tuple(p)!r} must have two values (accuracy, latency_ms)")
        a, b = float(p[0]), float(p[1])
        if math.isnan(a) or math.isnan(b):
            raise ConfigError(f"point {tuple(p)!r} contains NaN; drop failed trials before computing fronts")
        # internally everything is minimised
        out.append((-a if maximize[0] else a, -b if maximize[1] else b))
    return out


def pareto_front(points: Sequence[Point], *, maximize: Sequence[bool] = (True, False),
                 keep_duplicates: bool = False) -> list[int]:
    """Indices of the non-dominated points, ordered by the second objective (best first).

    Args:
        points: ``(accuracy, latency_ms)`` pairs (any two objectives).
        maximize: per objective, True to maximise (default: accuracy up, latency down).
        keep_duplicates: keep every copy of an identical non-dominated point (default: the first only).

    Returns:
        Indices into ``points``; ties on the second objective are broken by the first.

    Example:
        >>> pareto_front([(0.5, 1.0), (0.5, 2.0), (0.6, 2.0)])
        [0, 2]
    """
    pts = _check(points, maximize)
    order = sorted(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0], i))
    front: list[int] = []
    best_before = math.inf  # best (minimised) first objective among strictly smaller second objectives
    for _, grp in itertools.groupby(order, key=lambda i: pts[i][1]):
        members = list(grp)
        lead = pts[members[0]][0]  # the group's best first objective (sorted)
        if lead < best_before:
            ties = [i for i in members if pts[i][0] == lead]
            front += ties if keep_duplicates else ties[:1]
            best_before = lead
    return front


def hypervolume_2d(points: Sequence[Point], reference: Point, *, maximize: Sequence[bool] = (True, False)) -> float:
    """Area dominated by ``points`` up to ``reference`` (two objectives).

    Args:
        points: ``(accuracy, latency_ms)`` pairs.
        reference: the bounding point, worse than every point that should count.
        maximize: per objective, True to maximise.

    Returns:
        The hypervolume (0.0 when no point beats the reference in both objectives).

    Example:
        >>> hypervolume_2d([(0.5, 1.0)], reference=(0.0, 3.0))
        1.0
    """
    (ra, rb), = _check([reference], maximize)
    pts = [p for p in _check(points, maximize) if p[0] < ra and p[1] < rb]
    if not pts:
        return 0.0
    pts.sort(key=lambda p: (p[1], p[0]))
    area = 0.0
    best_first = ra
    for i, (a, b) in enumerate(pts):
        best_first = min(best_first, a)  # strip between this second-objective value and the next one
        nxt = pts[i + 1][1] if i + 1 < len(pts) else rb
        area += (ra - best_first) * (nxt - b)
    return area


@dataclass(frozen=True)
class HvPoint:
    """Hypervolume reached after spending ``compute`` (in the curve's unit) on ``n_points`` candidates."""

    compute: float
    hypervolume: float
    n_points: int

    def __post_init__(self) -> None:
        if self.compute < 0 or self.hypervolume < 0 or self.n_points < 0:
            raise ConfigError(f"HvPoint({self.compute}, {self.hypervolume}, {self.n_points}) must be non-negative")


def hypervolume_curve(points: Sequence[Point], compute: Sequence[float], reference: Point, *,
                      maximize: Sequence[bool] = (True, False)) -> list[HvPoint]:
    """Hypervolume of the first k points versus the cumulative compute spent to get them.

    Args:
        points: candidates in the order they were obtained (NaN points are skipped: failed trials).
        compute: compute spent on each candidate (same length; e.g. training images or wall seconds).
        reference: the hypervolume reference point.
        maximize: per objective, True to maximise.

    Returns:
        One :class:`HvPoint` per candidate: cumulative compute and the hypervolume so far.

    Example:
        >>> [round(h.hypervolume, 2) for h in hypervolume_curve([(0.5, 1.0), (0.6, 2.0)], [1, 1], (0.0, 3.0))]
        [1.0, 1.1]
    """
    if len(points) != len(compute):
        raise ConfigError(f"{len(points)} points but {len(compute)} compute values; they must pair up")
    curve: list[HvPoint] = []
    seen: list[Point] = []
    total = 0.0
    for p, c in zip(points, compute):
        if c < 0 or math.isnan(c):
            raise ConfigError(f"compute value {c!r} must be a number >= 0")
        total += float(c)
        if not any(math.isnan(float(x)) for x in p):
            seen.append(p)
        curve.append(HvPoint(total, hypervolume_2d(seen, reference, maximize=maximize), len(seen)))
    return curve


def compute_to_reach(curve: Sequence[HvPoint], target_hv: float, *, rel_tol: float = 1e-9) -> float | None:
    """The least compute at which ``curve`` reaches ``target_hv`` (None when it never does).

    Example:
        >>> compute_to_reach([HvPoint(1, 0.2, 1), HvPoint(3, 0.5, 2)], 0.4)
        3
    """
    for h in curve:
        if h.hypervolume >= target_hv * (1 - rel_tol):
            return h.compute
    return None
