"""Budget solvers: move a gated model's hard sizes onto a latency budget after (or during) a search.

These are *repairs*: they change what a method found so that it meets the budget. Every method that uses
them reports what they changed (:class:`hwloop.methods.base.Repair`), so a budget reached only by a repair is
never reported as the method's own result.

* :func:`hard_sizes` — the sizes extraction will use (``ch:<group>`` widths, ``bits:<layer>``);
* :func:`round_widths_to_tile` — round widths up to the device tile when that costs no latency;
* :func:`enforce_budget` — shrink widths until within the budget (greedy, smallest gates first);
* :func:`fill_budget` — grow widths back while within the budget;
* :class:`BudgetTerm` — not a repair: the budget term *inside* a differentiable search (the target annealed from
  1 over a warm-up, the hinge or linear penalty, λ by dual ascent on ``log λ``), one implementation for every
  method that searches against a budget (:func:`anneal_target` is its schedule).

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> from hwloop.search.latency import SurrogateLatency
    >>> from hwloop.compress.gated import GatedModel
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
    >>> gm, lat = GatedModel(space), SurrogateLatency(space)
    >>> w = enforce_budget(gm, lat, {k: g.hard_size() for k, g in gm.channel_gates.items()}, 0.5 * lat.original())
    >>> float(lat(hard_sizes(gm, w))) <= 0.5 * lat.original()
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from hwloop.compress.gated import GatedModel
from hwloop.compress.keys import SizeKey

if TYPE_CHECKING:  # pragma: no cover
    from hwloop.search.latency import LatencyModel

__all__ = ["PENALTIES", "TARGET_CURVES", "BudgetTerm", "anneal_target", "enforce_budget", "fill_budget",
           "hard_sizes", "round_widths_to_tile"]

TARGET_CURVES = ("linear", "geometric", "cubic")
PENALTIES = ("linear", "hinge", "two-sided")
_EXP_CAP = 50.0   # a larger step on log λ changes nothing once λ is clamped, but exp() could overflow


def anneal_target(target: float, step: int, total: int, warmup: float, curve: str = "linear") -> float:
    """The budget in force at optimiser ``step`` (0-based) of ``total``: from 1.0 down to ``target`` over the first
    ``warmup`` fraction of the steps, then ``target``. Progress ``p = step / (warmup·total)``: ``linear``
    ``1 − (1 − target)·p``; ``geometric`` ``target**p``; ``cubic`` ``target + (1 − target)·(1 − p)³`` (Zhu & Gupta).

    Example:
        >>> [round(anneal_target(0.5, s, 10, 0.5), 2) for s in (0, 1, 5, 9)], anneal_target(0.5, 3, 10, 0.0)
        ([1.0, 0.9, 0.5, 0.5], 0.5)
    """
    if curve not in TARGET_CURVES:
        from hwloop.errors import SearchError

        raise SearchError(f"target_curve={curve!r} is unknown; allowed: {', '.join(TARGET_CURVES)}")
    span = warmup * total
    if span <= 0 or step >= span:
        return target
    p = max(0.0, step / span)
    if curve == "linear":
        return 1.0 - (1.0 - target) * p
    if curve == "geometric":
        return float(target ** p)
    return target + (1.0 - target) * (1.0 - p) ** 3


class BudgetTerm:
    """The budget term of a differentiable search, step by step.

    ``term(ratio, step)`` is the loss term for the cost ratio ``ratio = cost/cost₀`` (a tensor: the hard
    configuration's value, gradients however the caller routes them): ``hinge``: ``λ·max(0, ratio − target_t)``
    (an exact penalty: no pull once within the target in force), ``linear``: ``λ·ratio``; without a target
    ``λ·ratio`` with λ fixed. ``target_t`` = :func:`anneal_target`. After the optimiser step, ``update(ratio)`` moves
    λ by PI control of ``log λ`` on ``e = ratio/target_t − 1``: ``λ_I ← λ_I·exp(dual_lr·e)``, ``λ = λ_I·exp(dual_kp·e)``,
    clamped to ``[lam_min, lam_max]``. ``trace`` keeps ``(step, ratio, target_t, λ)`` of every step.

    Example:
        >>> import torch
        >>> b = BudgetTerm(0.5, 10, lam=1.0, dual_lr=0.5, warmup=0.5)
        >>> float(b.term(torch.tensor(0.95), 0)), round(b.target_t, 2)   # within the target in force: no pull
        (0.0, 1.0)
        >>> round(float(b.term(torch.tensor(0.95), 5)), 3), b.update(0.95) > 1.0   # above it: pull, λ grows
        (0.45, True)
    """

    def __init__(self, target: float | None, total: int, *, lam: float, dual_lr: float, dual_kp: float = 0.0,
                 warmup: float = 0.0, curve: str = "linear", penalty: str = "hinge", lam_min: float = 1e-4,
                 lam_max: float = 1e4) -> None:
        if penalty not in PENALTIES:
            from hwloop.errors import SearchError

            raise SearchError(f"penalty={penalty!r} is unknown; allowed: {', '.join(PENALTIES)}")
        self.target, self.total, self.warmup, self.curve, self.penalty = target, total, warmup, curve, penalty
        self.dual_lr, self.dual_kp, self.lam_min, self.lam_max = dual_lr, dual_kp, lam_min, lam_max
        self.lam = self.lam_i = float(lam)
        self.step = 0
        self.target_t: float | None = None
        self.trace: list[tuple[int, float, float | None, float]] = []

    def target_at(self, step: int) -> float | None:
        return None if self.target is None else anneal_target(self.target, step, self.total, self.warmup,
                                                              self.curve)

    def term(self, ratio: torch.Tensor, step: int) -> torch.Tensor:
        self.step, self.target_t = step, self.target_at(step)
        if self.target_t is not None and self.penalty == "hinge":
            return self.lam * torch.clamp(ratio - self.target_t, min=0.0)
        if self.target_t is not None and self.penalty == "two-sided":
            return self.lam * (ratio - self.target_t).abs()
        return self.lam * ratio

    def _clamp(self, v: float) -> float:
        return min(self.lam_max, max(self.lam_min, v))

    def update(self, ratio: float) -> float:
        """The dual step after the optimiser step (nothing without a target or with ``dual_lr = dual_kp = 0``)."""
        t = self.target_t
        if t is not None and (self.dual_lr or self.dual_kp):
            err = ratio / t - 1.0
            self.lam_i = self._clamp(self.lam_i * math.exp(min(_EXP_CAP, self.dual_lr * err)))
            self.lam = (self._clamp(self.lam_i * math.exp(min(_EXP_CAP, self.dual_kp * err))) if self.dual_kp
                        else self.lam_i)
        self.trace.append((self.step, float(ratio), t, self.lam))
        return self.lam


def hard_sizes(gm: GatedModel, widths: Mapping[str, int] | None = None) -> dict[str, float]:
    """The sizes extraction will use: each group's hard width (``widths`` overrides), each layer's hard bits."""
    out: dict[str, float] = {}
    for g in gm.space.graph.groups:
        gate = gm.channel_gates.get(g.key)
        out[SizeKey.channels(g.key)] = float(gate.hard_size() if gate is not None else g.channels)
    for n, b in gm.bit_gates.items():
        out[SizeKey.bits(n)] = float(b.hard_size())
    for k, v in (widths or {}).items():
        out[SizeKey.channels(k)] = float(v)
    return out


def round_widths_to_tile(gm: GatedModel, latency: LatencyModel, tile: int,
                         start: Mapping[str, int] | None = None) -> dict[str, int]:
    """Each group's hard width (or ``start``'s), rounded up to a multiple of ``tile`` when the latency model says
    that costs nothing (the device pads partial tiles anyway)."""
    widths = {k: g.hard_size() for k, g in gm.channel_gates.items()}
    widths.update(start or {})
    if tile <= 1:
        return widths
    for key, w in list(widths.items()):
        up = min(gm.channel_gates[key].max_size, math.ceil(w / tile) * tile)
        if up == w:
            continue
        base = float(latency(hard_sizes(gm, widths)).detach())
        trial = {**widths, key: up}
        if float(latency(hard_sizes(gm, trial)).detach()) <= base * (1 + 1e-9):
            widths = trial
    return widths


def enforce_budget(gm: GatedModel, latency: LatencyModel, widths: Mapping[str, int], budget: float,
                   max_iters: int = 10_000) -> dict[str, int]:
    """Shrink group widths until the latency model's value at the hard sizes is within ``budget``.

    Dual ascent approaches the target from either side; this final projection guarantees it.
    Each step removes the smallest-gate channels (about 5% of a group, at least one) from the
    group with the best latency saving per unit of removed gate mass (relative to the group's
    total); groups stop at their ``min_keep``.
    """
    w = dict(widths)
    current = float(latency(hard_sizes(gm, w)).detach())
    for _ in range(max_iters):
        if current <= budget:
            break
        best: tuple[float, float, str, int] | None = None
        for key, gate in gm.channel_gates.items():
            n = w[key]
            step = max(1, math.ceil(0.05 * n))
            new = max(gate.min_keep, n - step)
            if new == n:
                continue
            vals = torch.sort(gate.values().detach().abs(), descending=True).values
            removed = float(vals[new:n].sum()) / max(float(vals.sum()), 1e-12)
            lat = float(latency(hard_sizes(gm, {**w, key: new})).detach())
            score = (current - lat) / (removed + 1e-6)
            if best is None or (score, -removed) > (best[0], -best[1]):
                best = (score, removed, key, new)
        if best is None:
            break
        w[best[2]] = best[3]
        current = float(latency(hard_sizes(gm, w)).detach())
    return w


def fill_budget(gm: GatedModel, latency: LatencyModel, widths: Mapping[str, int], budget: float,
                max_iters: int = 10_000) -> dict[str, int]:
    """Grow group widths back while the latency model's value at the hard sizes stays within ``budget``.

    Dual ascent can overshoot (the gates keep shrinking after the latency has crossed the target, and only
    the task loss pushes them back up), which would leave latency the user allowed unused. Each step adds
    about 5% of a group's channels (at least one; the next-largest gates, i.e. the channels dropped last)
    to the group whose addition costs the least latency per unit of relative width; channels inside a
    partly filled tile are free and come first.
    """
    w = dict(widths)
    current = float(latency(hard_sizes(gm, w)).detach())
    for _ in range(max_iters):
        best: tuple[float, float, str, int, float] | None = None
        for key, gate in gm.channel_gates.items():
            n = w[key]
            if n >= gate.max_size:
                continue
            new = min(gate.max_size, n + max(1, math.ceil(0.05 * gate.max_size)))
            lat = float(latency(hard_sizes(gm, {**w, key: new})).detach())
            if lat > budget:
                continue
            cost = (lat - current) / ((new - n) / gate.max_size)
            cand = (cost, n / gate.max_size, key, new, lat)
            if best is None or cand[:2] < best[:2]:
                best = cand
        if best is None:
            break
        w[best[2]], current = best[3], best[4]
    return w
