"""SBS's cost: BOPs (device-free) or latency read from the shared layer cost table on a bit-aware device.

Both are functions of each conv/linear layer's kept input and output channels (sums of the filter gates) and its
weight / activation bits (the nested bit gates), differentiable through the straight-through gates, and equal
to the hard configuration's cost in the forward pass:

* :class:`BopsCost` — ``Σ MACs(c_in, c_out) · w_bits · a_bits`` (layers left in float count 32 × 32); exact for
  every configuration.
* :class:`TableCost` — each layer's latency from :func:`hwloop.search.costtable.build_cost_table` on a grid of
  ``(c_in, c_out)`` points × every ``(w_bits, a_bits)`` pair, bilinear in the channels between grid points
  (exact at them), mixed over the bit pairs by the gates' one-hot indicators; plus the passive rest of the
  model (BN, ReLU, add, pool: the device's cost of those ops at full width).

Example:
    >>> import torch
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
    >>> layers = sbs_layers(space)
    >>> cost = BopsCost(space, layers)
    >>> full = cost.full_state(8, 8)
    >>> float(cost(full)) == cost.original(8, 8)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hwloop.errors import SearchError

__all__ = ["BIT_AWARE_BACKENDS", "BopsCost", "CostState", "SbsLayer", "TableCost", "is_bit_aware", "sbs_layers"]

#: device backends whose latency depends on w_bits / a_bits (the simulated accelerators)
BIT_AWARE_BACKENDS = ("asic",)


@dataclass(frozen=True)
class SbsLayer:
    """A conv/linear layer as SBS sees it: its full-size spec and the channel groups setting its widths."""

    name: str
    spec: Any
    in_key: str | None
    out_key: str | None
    depthwise: bool


def sbs_layers(space: Any) -> list[SbsLayer]:
    """Every conv/linear layer of the space (not factor layers), in model order."""
    return [SbsLayer(s.name, s.spec, s.in_key, s.out_key, s.depthwise) for s in space.slots
            if s.spec.op in ("conv2d", "linear") and s.factor_of is None]


@dataclass
class CostState:
    """What the cost reads: kept channels per group (tensors) and, per layer, the one-hot weight / activation bit
    indicators over the levels (tensors; None for a layer at fixed bits) and the fixed bits."""

    channels: Mapping[str, torch.Tensor]
    w_onehot: Mapping[str, torch.Tensor | None]
    a_onehot: Mapping[str, torch.Tensor | None]
    fixed: Mapping[str, tuple[int | None, int | None]]


def _t(v: Any) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(float(v))


class _Base:
    unit = ""
    source = ""

    def __init__(self, space: Any, layers: Sequence[SbsLayer], w_levels: Sequence[int] = (2, 4, 8),
                 a_levels: Sequence[int] = (4, 8)) -> None:
        self.space = space
        self.layers = list(layers)
        self.w_levels, self.a_levels = tuple(w_levels), tuple(a_levels)
        self.group_size = {g.key: g.channels for g in space.graph.groups}

    def _widths(self, layer: SbsLayer, channels: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        s = layer.spec
        ko, ki = layer.out_key, layer.in_key
        cout = _t(channels[ko]) if ko is not None and ko in channels else _t(s.out_channels)
        if layer.depthwise:
            return cout, cout
        cin = _t(channels[ki]) if ki is not None and ki in channels else _t(s.in_channels)
        return cin, cout

    def full_state(self, w_bits: int | None, a_bits: int | None) -> CostState:
        """Every channel kept, every layer at ``w_bits`` / ``a_bits`` (fixed)."""
        return CostState({k: torch.tensor(float(v)) for k, v in self.group_size.items()},
                         {n.name: None for n in self.layers}, {n.name: None for n in self.layers},
                         {n.name: (w_bits, a_bits) for n in self.layers})

    def original(self, w_bits: int | None, a_bits: int | None) -> float:
        return float(self(self.full_state(w_bits, a_bits)).detach())

    def exact(self, state: CostState) -> float:
        """The cost of a hard configuration (BOPs: the same as calling the cost)."""
        return float(self(state).detach())

    def __call__(self, state: CostState) -> torch.Tensor:
        raise NotImplementedError


class BopsCost(_Base):
    """Bit operations in GBOPs, in float64 (see the module docstring)."""

    unit = "GBOPs"
    source = "bops"

    def _bits(self, oh: torch.Tensor | None, levels: Sequence[int], fixed: int | None) -> torch.Tensor:
        if oh is None:
            return torch.tensor(float(fixed if fixed is not None else 32), dtype=torch.float64)
        return (oh.double() * torch.tensor([float(b) for b in levels], dtype=torch.float64)).sum()

    def layer_bops(self, layer: SbsLayer, state: CostState) -> torch.Tensor:
        s = layer.spec
        cin, cout = (v.double() for v in self._widths(layer, state.channels))
        macs = float(s.macs)
        if layer.depthwise:
            scale = cout / float(s.out_channels)
        else:
            scale = (cin / float(s.in_channels)) * (cout / float(s.out_channels))
        fw, fa = state.fixed.get(layer.name, (None, None))
        wb = self._bits(state.w_onehot.get(layer.name), self.w_levels, fw)
        ab = self._bits(state.a_onehot.get(layer.name), self.a_levels, fa)
        return macs * scale * wb * ab

    def __call__(self, state: CostState) -> torch.Tensor:
        return torch.stack([self.layer_bops(n, state) for n in self.layers]).sum() / 1e9


def _grid(full: int, points: int) -> list[int]:
    if full <= 1:
        return [full]
    pts = sorted({max(1, round(full * i / (points - 1))) for i in range(points)} | {1, full})
    return pts


class TableCost(_Base):
    """Latency (the table's unit) from the shared layer cost table (see the module docstring).

    Args:
        device: a profile name (``asic-tpu32``, ``asic-eyeriss``) or a Device.
        grid_points: channel grid points per axis (the full width and 1 always included).
        fixed_bits: the ``(w, a)`` pairs of layers at fixed bits (first/last policy) to add to the table.
        source / store / predictor / progress: passed to ``build_cost_table``.
    """

    source = "table"

    def __init__(self, space: Any, layers: Sequence[SbsLayer], w_levels: Sequence[int], a_levels: Sequence[int],
                 device: Any, *, grid_points: int = 5, fixed_bits: Sequence[tuple[int | None, int | None]] = (),
                 source: str = "auto", store: Any = False, predictor: Any = None, progress: bool = False) -> None:
        super().__init__(space, layers, w_levels, a_levels)
        from hwloop.search.costtable import build_cost_table

        self.pairs = [(w, a) for w in self.w_levels for a in self.a_levels]
        pairs = list(dict.fromkeys([*self.pairs, *fixed_bits]))
        self.grids: dict[str, tuple[list[int], list[int]]] = {}
        levels: dict[str, dict[Any, list[Any]]] = {}
        for n in self.layers:
            s = n.spec
            gin = [s.in_channels] if n.depthwise or n.in_key is None else _grid(s.in_channels, grid_points)
            gout = [s.out_channels] if n.out_key is None else _grid(s.out_channels, grid_points)
            self.grids[n.name] = (gin, gout)
            lv: dict[Any, list[Any]] = {}
            for ci in gin:
                for co in gout:
                    for w, a in pairs:
                        lv[("sbs", ci, co, w, a)] = [self._spec(n, ci, co, w, a)]
            levels[n.name] = lv
        self.passive_slots = [s for s in space.slots if s.spec.op not in ("conv2d", "linear")]
        self.passive_slots += list(space.passive_slots())
        passive = [s.spec for s in self.passive_slots]
        self._build = lambda lv, pas: build_cost_table(lv, device=device, source=source, store=store,
                                                       predictor=predictor, progress=False, passive=pas)
        self._exact: dict[tuple[Any, ...], float] = {}
        self.table = build_cost_table(levels, device=device, source=source, store=store, predictor=predictor,
                                      progress=progress, passive=passive)
        self.unit = self.table.unit
        self.source = f"table:{self.table.source}"
        self.rest = self.table.passive_cost()
        self._vals: dict[tuple[str, int | None, int | None], torch.Tensor] = {}
        self._stack: dict[tuple[Any, ...], torch.Tensor] = {}
        for n in self.layers:
            gin, gout = self.grids[n.name]
            for w, a in pairs:
                self._vals[(n.name, w, a)] = torch.tensor(
                    [[self.table.cost(n.name, ("sbs", ci, co, w, a)) for co in gout] for ci in gin],
                    dtype=torch.float64)

    @staticmethod
    def _spec(layer: SbsLayer, ci: int, co: int, w: int | None, a: int | None) -> Any:
        s = layer.spec
        bits = {"w_bits": w, "a_bits": a if w is not None else None}
        if s.op == "linear":
            return s.replace(in_shape=(*s.in_shape[:-1], ci), out_channels=co, **bits)
        if layer.depthwise:
            return s.replace(in_shape=(s.in_shape[0], co, *s.in_shape[2:]), out_channels=co, groups=co, **bits)
        return s.replace(in_shape=(s.in_shape[0], ci, *s.in_shape[2:]), out_channels=co, **bits)

    @staticmethod
    def _interp(grid: list[int], x: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        if len(grid) == 1:
            return 0, 0, torch.zeros((), dtype=torch.float64)
        xv = float(x.detach())
        i = max(0, min(len(grid) - 2, next((j for j in range(len(grid) - 1) if xv <= grid[j + 1]), len(grid) - 2)))
        t = (x.double() - grid[i]) / float(grid[i + 1] - grid[i])
        return i, i + 1, t

    def layer_cost(self, layer: SbsLayer, state: CostState) -> torch.Tensor:
        gin, gout = self.grids[layer.name]
        cin, cout = self._widths(layer, state.channels)
        i0, i1, ti = self._interp(gin, cin)
        j0, j1, tj = self._interp(gout, cout)
        woh, aoh = state.w_onehot.get(layer.name), state.a_onehot.get(layer.name)
        fw, fa = state.fixed.get(layer.name, (None, None))
        wl = list(self.w_levels) if woh is not None else [fw]
        al = list(self.a_levels) if aoh is not None else [fa]
        key = (layer.name, tuple(wl), tuple(al))
        if key not in self._stack:   # (n_w, n_a, n_in, n_out) of this layer's table values
            self._stack[key] = torch.stack([torch.stack([
                self._vals[(layer.name, w, a)] if (layer.name, w, a) in self._vals else self._missing(layer, w, a)
                for a in al]) for w in wl])
        v = self._stack[key]
        corners = ((1 - ti) * (1 - tj) * v[:, :, i0, j0] + ti * (1 - tj) * v[:, :, i1, j0]
                   + (1 - ti) * tj * v[:, :, i0, j1] + ti * tj * v[:, :, i1, j1])          # (n_w, n_a)
        pw = woh.double() if woh is not None else torch.ones(1, dtype=torch.float64)
        pa = aoh.double() if aoh is not None else torch.ones(1, dtype=torch.float64)
        total = pw @ corners @ pa
        return total

    def exact(self, state: CostState) -> float:
        """The cost of a hard configuration at its exact channel counts (one table level per layer, costed once and
        cached), not interpolated between grid points."""
        levels: dict[str, dict[Any, list[Any]]] = {}
        for n in self.layers:
            cin, cout = (round(float(v)) for v in self._widths(n, state.channels))
            woh, aoh = state.w_onehot.get(n.name), state.a_onehot.get(n.name)
            fw, fa = state.fixed.get(n.name, (None, None))
            w = self.w_levels[int(woh.argmax())] if woh is not None else fw
            a = self.a_levels[int(aoh.argmax())] if aoh is not None else fa
            levels[n.name] = {("sbs", cin, cout, w, a): [self._spec(n, cin, cout, w, a)]}
        ch = {k: round(float(v)) for k, v in state.channels.items()}
        passive = [sl.spec_at(None, ch[sl.out_key]) if sl.out_key in ch else sl.spec for sl in self.passive_slots]
        key = tuple((k, next(iter(v))) for k, v in levels.items())
        if (key, tuple(sorted(ch.items()))) not in self._exact:
            t = self._build(levels, passive)
            self._exact[(key, tuple(sorted(ch.items())))] = float(sum(t.cost(k, lv) for k, lv in key)) + t.passive_cost()
        return self._exact[(key, tuple(sorted(ch.items())))]

    def _missing(self, layer: SbsLayer, w: int | None, a: int | None) -> torch.Tensor:
        raise SearchError(f"the SBS cost table has no entry for layer {layer.name!r} at w_bits={w} a_bits={a}")

    def __call__(self, state: CostState) -> torch.Tensor:
        return (torch.stack([self.layer_cost(n, state) for n in self.layers]).sum() + self.rest).float()


def is_bit_aware(device: Any) -> bool:
    """Whether the device's latency depends on the bits (the simulated accelerators)."""
    if device is None:
        return False
    if isinstance(device, str):
        from hwloop.devices.profiles import load_profile
        from hwloop.errors import ConfigError

        try:
            return load_profile(device).backend in BIT_AWARE_BACKENDS
        except ConfigError:  # an unknown profile: not bit-aware (the measurement will say what is wrong)
            return False
    return getattr(device, "backend", "") in BIT_AWARE_BACKENDS


def finite(v: float) -> float:
    return v if math.isfinite(v) else float("nan")
