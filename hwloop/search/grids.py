"""Per-layer latency grids of :class:`~hwloop.search.latency.PredictorLatency`: the integer grids, their
multilinear interpolation (one slot, or many slots with the same grids at once), and the coarse monotone envelope
the search gradient comes from (nodes evenly spaced or at tile boundaries).

Example:
    >>> grid_points(100, 5)
    [1, 26, 50, 75, 100]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hwloop.compress.keys import SizeKey
from hwloop.search.space import LayerSlot

__all__ = ["grid_points", "interp_grid", "tile_nodes"]

def grid_points(size: int, max_points: int) -> list[int]:
    """Integer grid over ``1..size``: every integer if ``size <= max_points``, else ~``max_points`` evenly
    spaced integers (always including 1 and ``size``)."""
    if size <= max_points:
        return list(range(1, size + 1))
    pts = np.unique(np.round(np.linspace(1, size, max_points)).astype(int))
    return [int(p) for p in pts]


def interp_grid(table: torch.Tensor, grids: Sequence[torch.Tensor], xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Multilinear interpolation of ``table`` (shape ``len(g) for g in grids``) at points ``xs``.

    Values outside a grid are clamped to its ends; at grid points the table value is
    returned exactly. Differentiable in ``xs``.

    Example:
        >>> t = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        >>> g = torch.tensor([1.0, 2.0])
        >>> float(interp_grid(t, [g, g], [torch.tensor(1.5), torch.tensor(2.0)]))
        2.0
    """
    out = table
    for d, (g, x) in enumerate(zip(grids, xs)):
        if g.numel() == 1:
            out = out.select(0, 0)
            continue
        xc = x.clamp(float(g[0]), float(g[-1]))
        i = int(torch.searchsorted(g, xc.detach().reshape(1), right=True).item()) - 1
        i = min(max(i, 0), g.numel() - 2)
        w = (xc - g[i]) / (g[i + 1] - g[i])
        lo, hi = out.select(0, i), out.select(0, i + 1)
        out = lo + w * (hi - lo)
    return out


def tile_nodes(grid: torch.Tensor, tile: int) -> torch.Tensor:
    """Indices of ``grid`` nearest to its ends and to every multiple of ``tile`` inside it.

    On a device that pads partial tiles, latency is a staircase whose steps sit just above multiples of
    the tile; a secant between consecutive nodes then spans exactly one step, so its slope is the
    saving of dropping to the next tile boundary.

    Example:
        >>> tile_nodes(torch.arange(1.0, 65.0), 32).tolist()
        [0, 31, 63]
    """
    lo, hi = float(grid[0]), float(grid[-1])
    marks = [lo, *[float(m) for m in range(tile, int(hi) + 1, tile) if lo < m < hi], hi]
    idx = [int(torch.argmin((grid - m).abs())) for m in marks]
    return torch.unique(torch.tensor(idx, dtype=torch.long))


def _coarse_monotone(table: torch.Tensor, grids: Sequence[torch.Tensor], names: Sequence[str], points: int,
                     tile: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The table's monotone envelope (running max along every axis) sampled at ~``points`` nodes per
    channel axis, or at the tile boundaries when ``tile > 1`` (bit axes keep every level): the source
    of the search gradient."""
    env = table
    for d in range(env.dim()):
        env = torch.cummax(env, dim=d).values
    idx_per_axis: list[torch.Tensor] = []
    cgrids: list[torch.Tensor] = []
    for g, n in zip(grids, names):
        if n == "bits" or g.numel() <= 2:
            idx = torch.arange(g.numel())
        elif tile > 1:
            idx = tile_nodes(g, tile)
        elif g.numel() <= points:
            idx = torch.arange(g.numel())
        else:
            idx = torch.unique(torch.round(torch.linspace(0, g.numel() - 1, points)).long())
        idx_per_axis.append(idx)
        cgrids.append(g[idx])
    for d, idx in enumerate(idx_per_axis):
        env = env.index_select(d, idx)
    return env, cgrids


class _Batch:
    """Slots with the same axes and grids: their tables stacked (first dimension: the slot) and their positions
    (``rows``) in the slot order."""

    __slots__ = ("cgrids", "ctable", "grids", "index", "rows", "table")

    def __init__(self, table: torch.Tensor, grids: list[torch.Tensor], rows: list[int],
                 ctable: torch.Tensor | None, cgrids: list[torch.Tensor] | None) -> None:
        self.table, self.grids, self.rows, self.ctable, self.cgrids = table, grids, rows, ctable, cgrids
        self.index = torch.arange(len(rows))


def _axis_key(slot: LayerSlot, axis: str) -> str:
    """The size key of a slot's grid axis (as :func:`_slot_size` reads it)."""
    key = {"in": slot.in_key, "out": slot.out_key}.get(axis, slot.bits_key)
    assert key is not None, f"slot {slot.name} has a grid axis {axis!r} without a size key"
    return SizeKey.bits(key) if axis == "bits" else SizeKey.channels(key)


def _interp_rows(table: torch.Tensor, grids: Sequence[torch.Tensor], xs: Sequence[torch.Tensor],
                 rows: torch.Tensor) -> torch.Tensor:
    """:func:`interp_grid` of every row of ``table`` (shape ``n × len(g)…``) at its own point (``xs``: one
    ``(n,)`` tensor per grid; ``rows``: ``arange(n)``): the same operations elementwise, so the same numbers."""
    out = table
    for g, x in zip(grids, xs):
        if g.numel() == 1:
            out = out.select(1, 0)
            continue
        xc = x.clamp(float(g[0]), float(g[-1]))
        i = (torch.searchsorted(g, xc.detach(), right=True) - 1).clamp(0, g.numel() - 2)
        w = (xc - g[i]) / (g[i + 1] - g[i])
        lo, hi = out[rows, i], out[rows, i + 1]
        w = w.reshape(-1, *([1] * (lo.dim() - 1)))
        out = lo + w * (hi - lo)
    return out
