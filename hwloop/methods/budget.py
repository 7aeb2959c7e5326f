"""Budget solvers: move a gated model's hard sizes onto a latency budget after (or during) a search.

These are *repairs*: they change what a method found so that it meets the budget. Every method that uses
them reports what they changed (:class:`hwloop.methods.base.Repair`), so a budget reached only by a repair is
never reported as the method's own result.

* :func:`hard_sizes` — the sizes extraction will use (``ch:<group>`` widths, ``bits:<layer>``);
* :func:`round_widths_to_tile` — round widths up to the device tile when that costs no latency;
* :func:`enforce_budget` — shrink widths until within the budget (greedy, smallest gates first);
* :func:`fill_budget` — grow widths back while within the budget.

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

__all__ = ["enforce_budget", "fill_budget", "hard_sizes", "round_widths_to_tile"]


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
