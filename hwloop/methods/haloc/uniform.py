"""Uniform-rank factorisation: HALOC's natural control (every layer at one fraction of its largest equal rank).

A uniform assignment puts every factorised layer at ``r_l = max(1, round(f · r_max,l))`` for one rank fraction
``f``. :func:`uniform_ladder` lists the distinct assignments over ``f = k/n`` (``k = 1..n``);
:func:`choose_uniform` picks, from a cost table, the assignment whose whole-model cost is the **largest at or
below a budget** (the uniform model at the method's latency, approached from below; ``None`` when even the
smallest ranks are over it). HALOC's ``ranks = "uniform"`` option runs this instead of the search (same
extraction, batch-norm re-estimation and fine-tune), so the evidence harness can hold it as a ``[[methods]]``
entry next to ``haloc`` at the same target.

Example:
    >>> ladder = uniform_ladder({"a": 16, "b": 64}, 4)
    >>> [(f, r["a"], r["b"]) for f, r in ladder]
    [(0.25, 4, 16), (0.5, 8, 32), (0.75, 12, 48), (1.0, 16, 64)]
    >>> cost = lambda ranks: sum(ranks.values())
    >>> choose_uniform(ladder, cost, 45.0)
    (0.5, {'a': 8, 'b': 32}, 40.0)
    >>> choose_uniform(ladder, cost, 10.0) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hwloop.errors import SearchError

__all__ = ["choose_uniform", "uniform_ladder", "uniform_ranks"]


def uniform_ranks(tops: Mapping[str, int], frac: float) -> dict[str, int]:
    """Each layer's rank at fraction ``frac`` of its largest equal rank ``tops[layer]`` (at least 1)."""
    if not 0 < frac <= 1:
        raise SearchError(f"uniform rank fraction {frac!r} must be in (0, 1]")
    return {n: min(int(t), max(1, round(frac * int(t)))) for n, t in tops.items()}


def uniform_ladder(tops: Mapping[str, int], n: int = 64) -> list[tuple[float, dict[str, int]]]:
    """The distinct uniform assignments ``(f, ranks)`` over ``f = k/n``, ``k = 1..n`` (the first ``f`` that gives
    each assignment), in increasing ``f``."""
    if int(n) < 1:
        raise SearchError(f"uniform ladder size n={n!r} must be >= 1")
    out: list[tuple[float, dict[str, int]]] = []
    seen: set[tuple[int, ...]] = set()
    for k in range(1, int(n) + 1):
        r = uniform_ranks(tops, k / int(n))
        key = tuple(r[x] for x in sorted(r))
        if key not in seen:
            seen.add(key)
            out.append((k / int(n), r))
    return out


def choose_uniform(ladder: Sequence[tuple[float, dict[str, int]]], cost: Callable[[dict[str, int]], float],
                   budget: float) -> tuple[float, dict[str, int], float] | None:
    """The ladder point with the largest ``cost(ranks)`` at or below ``budget`` (``(f, ranks, cost)``), or None.

    Largest cost, not largest ``f``: a latency staircase need not grow with the rank everywhere."""
    best: tuple[float, dict[str, int], float] | None = None
    for f, r in ladder:
        c = float(cost(r))
        if c <= budget * (1 + 1e-9) and (best is None or c > best[2]):
            best = (f, dict(r), c)
    return best
