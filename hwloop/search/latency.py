"""Differentiable latency for the search loss: the ℓ1/ℓ2 surrogate and the learned predictor.

Both implementations of :class:`LatencyModel` take the *effective sizes* of a gated model
(``ch:<group>`` widths and ranks, ``bits:<layer>`` bit-widths, as 0-d tensors or floats)
and return a 0-d tensor that gradients flow through.

* :class:`SurrogateLatency` — the polynomial of Nasery et al. (2023) from
  :func:`hwloop.predict.surrogate.surrogate_cost_torch` (MACs, optionally scaled by bits
  and a per-device ms/MAC constant). ``bits_aware=False`` is the FLOPs-only baseline.
* :class:`PredictorLatency` — any fitted predictor (``predict(specs) -> ms``) made
  differentiable: each layer is predicted once on a grid of input widths × output widths ×
  bit-widths and interpolated multilinearly at the continuous sizes, so at grid points
  (every integer when the grid step is 1) it equals the predictor. The predictor's
  whole-model calibration (``aggregator_``) maps the per-layer sum to model latency.

:func:`select_latency_model` picks the learned model when a predictor file is given or the
store has measurements of the target device, else the surrogate, and says which and why.

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> from hwloop.search.latency import SurrogateLatency
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
    >>> lat = SurrogateLatency(space)
    >>> half = {k: v / 2 for k, v in space.full_sizes().items()}
    >>> bool(lat(half) < lat(space.full_sizes()))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from hwloop.compress.keys import SizeKey
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.search.grids import _axis_key, _Batch, _coarse_monotone, _interp_rows, grid_points, interp_grid, tile_nodes
from hwloop.search.space import LayerSlot, SearchSpace
from hwloop.workload import LayerSpec

__all__ = [
    "AGGREGATE_MODES",
    "LatencyModel",
    "PredictorLatency",
    "SurrogateLatency",
    "aggregate_predictions",
    "default_aggregate",
    "grid_points",
    "interp_grid",
    "predict_specs",
    "predictor_aggregates",
    "sample_layer_specs",
    "select_latency_model",
    "tile_nodes",
]

Sizes = Mapping[str, "torch.Tensor | float"]
#: how per-op predictions become a whole-model latency (see :class:`PredictorLatency`)
AGGREGATE_MODES = ("auto", "sum", "calibrated")


@runtime_checkable
class LatencyModel(Protocol):
    """What the search needs from a latency model.

    Attributes:
        kind: ``surrogate`` or ``predictor``.
        unit: what the numbers are (``ms`` or ``MMAC``).
    """

    kind: str
    unit: str

    def __call__(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> torch.Tensor: ...

    def original(self) -> float: ...

    def plan_latency(self, plan: CompressionPlan) -> float: ...


def _t(v: torch.Tensor | float) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(float(v))


class _SlotLatency:
    """Shared plumbing: which slots count for a given set of dense (unfactorised) layers."""

    kind = "base"
    unit = "ms"

    def __init__(self, space: SearchSpace, a_bits: int | None = None) -> None:
        self.space = space
        self.a_bits = a_bits if a_bits is not None else space.options.a_bits

    def active_slots(self, dense: frozenset[str]) -> list[LayerSlot]:
        out = []
        for s in self.space.slots:
            if s.factor_of is not None and s.factor_of in dense:
                if s.dense is not None:
                    out.append(s.dense)
                continue
            out.append(s)
        return out

    def original(self) -> float:
        """Latency of the uncompressed model (every factorised layer dense, full widths, top bits)."""
        return float(self(self.space.full_sizes(), frozenset(self.space.lowrank)).detach())

    def plan_latency(self, plan: CompressionPlan) -> float:
        """Latency of a plan's hard sizes."""
        sizes, dense = self.space.sizes_of_plan(plan)
        return float(self(sizes, dense).detach())

    def __call__(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> torch.Tensor:
        raise NotImplementedError


def _slot_size(slot: LayerSlot, sizes: Sizes) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    cin = _t(sizes[SizeKey.channels(slot.in_key)]) if slot.in_key else None
    cout = _t(sizes[SizeKey.channels(slot.out_key)]) if slot.out_key else None
    bkey = SizeKey.bits(slot.bits_key) if slot.bits_key else None
    bits = _t(sizes[bkey]) if bkey is not None and bkey in sizes else None
    return cin, cout, bits


class SurrogateLatency(_SlotLatency):
    """ℓ1/ℓ2 surrogate: MACs as a polynomial in the effective sizes (see the module docstring).

    Args:
        space: the search space.
        bits_aware: multiply compute by ``w_bits · a_bits / 32²`` (False: FLOPs only).
        scale_ms_per_mac: ms per MAC (e.g. a fitted ``SurrogatePredictor.scale``); None reports MMACs.
        include_elementwise: also count batch-norm layers (one op per element).
    """

    kind = "surrogate"

    def __init__(self, space: SearchSpace, *, bits_aware: bool = False, scale_ms_per_mac: float | None = None,
                 include_elementwise: bool = False, a_bits: int | None = None) -> None:
        super().__init__(space, a_bits)
        self.bits_aware = bits_aware
        self.scale = scale_ms_per_mac
        self.include_elementwise = include_elementwise
        self.unit = "ms" if scale_ms_per_mac is not None else "MMAC"
        from hwloop.predict.surrogate import surrogate_terms

        self._terms: dict[str, dict[str, float]] = {}
        for s in list(space.slots) + [s.dense for s in space.slots if s.dense is not None]:
            t = surrogate_terms([s.spec])
            self._terms[s.name] = {k: float(v[0]) for k, v in t.items()}

    def __call__(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> torch.Tensor:
        from hwloop.predict.surrogate import surrogate_cost_torch

        n_in, n_out, c, kind, wb, ab = [], [], [], [], [], []
        for s in self.active_slots(dense):
            if s.spec.op == "batchnorm" and not self.include_elementwise:
                continue
            t = self._terms[s.name]
            cin, cout, bits = _slot_size(s, sizes)
            k = int(t["kind"])
            width_in = cout if s.depthwise else cin  # a depthwise conv's cost follows its (shared) width
            n_in.append(width_in if width_in is not None else torch.tensor(t["n_in"]))
            n_out.append(cout if cout is not None else torch.tensor(t["n_out"]))
            c.append(t["c"])
            kind.append(k)
            wb.append(bits if bits is not None else torch.tensor(t["w_bits"] if k == 3 else 32.0))
            ab.append(float(self.a_bits) if (self.a_bits and bits is not None) else 32.0)
        if not c:
            return torch.zeros(())
        args: dict[str, Any] = {"kind": torch.tensor(kind)}
        if self.bits_aware:
            args.update(w_bits=torch.stack([_t(x).float() for x in wb]), a_bits=torch.tensor(ab))
        cost = surrogate_cost_torch(torch.stack([_t(x).float() for x in n_in]),
                                    torch.stack([_t(x).float() for x in n_out]), torch.tensor(c), **args)
        return cost * self.scale if self.scale is not None else cost / 1e6


def default_aggregate(space: SearchSpace, predictor: Any) -> str:
    """How per-op predictions become a model latency, matching how the device is measured.

    ``sum`` when the device is timed op by op — the ``asic`` execution mode or a space with
    bit-widths, exactly the cases where :func:`~hwloop.search.report.measure_compressed` sums one
    layer request per op — else ``calibrated`` when the predictor has a whole-model aggregation
    (``aggregator_.predict_one``), else ``sum``.

    Example:
        >>> from hwloop.models import ModelRef
        >>> from hwloop.predict import SurrogatePredictor
        >>> default_aggregate(SearchSpace.from_ref(ModelRef("small_cnn")), SurrogatePredictor())
        'sum'
    """
    return "calibrated" if predictor_aggregates(predictor, bits=bool(space.options.bits)) else "sum"


def predictor_aggregates(predictor: Any, *, bits: bool = False) -> bool:
    """Whether a model's latency from ``predictor`` goes through its whole-model aggregation (see
    :func:`default_aggregate`): not on a device timed op by op (``asic`` mode, or layers with bit-widths),
    and only when the predictor has ``aggregator_.predict_one`` and ``layer_predictions``."""
    if getattr(predictor, "mode", None) == "asic" or bits:
        return False
    agg = getattr(predictor, "aggregator_", None)
    has_ops = callable(getattr(predictor, "layer_predictions", None))
    return callable(getattr(agg, "predict_one", None)) and has_ops


def aggregate_predictions(agg: Any, codes: np.ndarray, ms: np.ndarray) -> float:
    """``agg.predict_one(codes, ms)`` (a predictor's whole-model aggregation) as a finite float; a failure is one
    :class:`SearchError` line."""
    try:
        v = float(agg.predict_one(codes, ms))
    except Exception as e:  # a third-party aggregation object: say what failed, in one line
        raise SearchError(f"the predictor's whole-model aggregation failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); use aggregate='sum'") from e
    if not math.isfinite(v):
        raise SearchError(f"the predictor's whole-model aggregation returned {v}; use aggregate='sum'")
    return v


def predict_specs(predictor: Any, specs: Sequence[LayerSpec]) -> np.ndarray:
    """``predictor.predict(specs)`` as float64 ms, one finite value per spec (else one :class:`SearchError` line)."""
    ms = np.asarray(predictor.predict(list(specs)), dtype=np.float64).reshape(-1)
    if ms.shape[0] != len(specs) or not np.all(np.isfinite(ms)):
        raise SearchError(f"predictor returned {ms.shape[0]} values (finite: "
                          f"{bool(np.all(np.isfinite(ms)))}) for {len(specs)} layer specs")
    return ms


class PredictorLatency(_SlotLatency):
    """A fitted predictor made differentiable by per-layer grids (see the module docstring).

    The *value* is the multilinear interpolation of the fine grid (equal to the predictor at
    grid points). Device latency is often a staircase in channels (tiles), whose piecewise-linear
    interpolation is flat almost everywhere; so by default the *gradient* comes from a coarse
    monotone envelope of the same table (``grad_points`` nodes per channel axis, secant slopes),
    a straight-through estimator: ``value.detach() + (coarse − coarse.detach())``. ``grad_points=None``
    uses the fine grid's own gradient. With ``grad_nodes="tile"`` (the default when the space has a
    ``tile`` > 1) the envelope's nodes are the tile boundaries instead (:func:`tile_nodes`): every
    secant spans exactly one step, so a group at 64 channels on a 32-wide array sees what dropping to
    32 saves (evenly spaced nodes at 1, 33, 64 put the step in the lower segment and gave the upper
    one almost no slope).

    Whole-model latency covers every op the device runs: the searched conv/linear/batch-norm
    slots and the space's :meth:`~hwloop.search.space.SearchSpace.passive_slots` (activations,
    pooling, adds, whose size follows their channel group). ``aggregate="sum"`` adds the per-op
    predictions (what a device timed op by op reports); ``"calibrated"`` passes them through the
    predictor's own whole-model aggregation object (``aggregator_.predict_one(op_codes, ms)``,
    whatever its coefficients): the value is exactly the aggregation's, its gradient per op kind a
    finite difference of it. ``"auto"``: :func:`default_aggregate`.

    Args:
        space: the search space.
        predictor: an object with ``predict(list[LayerSpec]) -> np.ndarray`` in ms (for
            ``calibrated``, also ``layer_predictions`` and ``aggregator_``, as every hwloop predictor).
        max_grid_points: grid points per channel dimension (every integer up to this size).
        aggregate: ``auto``, ``sum`` or ``calibrated`` (see above).
        progress: show a progress bar while the grids are predicted.
        grad_points: nodes per channel axis of the gradient's coarse monotone table (None: fine grid).
        grad_nodes: ``tile`` (nodes at multiples of the space's tile), ``even`` (``grad_points`` evenly
            spaced nodes) or ``auto`` (``tile`` when the space's tile is > 1).
        passive: include activations, pooling and adds (False: conv/linear/batch-norm only).

    Example:
        >>> from hwloop.models import ModelRef
        >>> from hwloop.predict import SurrogatePredictor
        >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
        >>> lat = PredictorLatency(space, SurrogatePredictor())
        >>> lat.aggregate, bool(lat.original() > 0)
        ('sum', True)
    """

    kind = "predictor"
    unit = "ms"

    def __init__(self, space: SearchSpace, predictor: Any, *, max_grid_points: int = 65, aggregate: str = "auto",
                 a_bits: int | None = None, progress: bool = False, grad_points: int | None = 3,
                 passive: bool = True, grad_nodes: str = "auto") -> None:
        super().__init__(space, a_bits)
        if grad_points is not None and grad_points < 2:
            raise SearchError(f"grad_points={grad_points} must be >= 2 or None")
        if grad_nodes not in ("auto", "tile", "even"):
            raise SearchError(f"grad_nodes={grad_nodes!r} is unknown; allowed: auto, tile, even")
        self.grad_tile = space.options.tile if grad_nodes in ("auto", "tile") else 1
        if aggregate not in AGGREGATE_MODES:
            raise SearchError(f"aggregate={aggregate!r} is unknown; allowed: {', '.join(AGGREGATE_MODES)}")
        self.grad_points = grad_points
        if not callable(getattr(predictor, "predict", None)):
            raise SearchError(f"predictor {type(predictor).__name__} has no predict(specs) method")
        self.predictor = predictor
        self.max_grid_points = max_grid_points
        self.aggregate = default_aggregate(space, predictor) if aggregate == "auto" else aggregate
        self._agg: Any = None
        self._tables: dict[str, tuple[torch.Tensor, list[torch.Tensor], list[str]]] = {}
        self._coarse: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._plans: dict[tuple[str, ...], tuple[list[_Batch], torch.Tensor]] = {}
        self.passive: tuple[LayerSlot, ...] = space.passive_slots() if passive else ()
        slots = list(space.slots) + [s.dense for s in space.slots if s.dense is not None] + list(self.passive)
        self._build(slots, progress)
        self._codes: dict[str, int] = {}
        if self.aggregate == "calibrated":
            self._agg = getattr(predictor, "aggregator_", None)
            if not callable(getattr(self._agg, "predict_one", None)) or \
                    not callable(getattr(predictor, "layer_predictions", None)):
                raise SearchError(f"aggregate='calibrated' needs a predictor with a fitted whole-model aggregation "
                                  f"(aggregator_.predict_one); {type(predictor).__name__} has none: use 'sum'")
            codes = np.asarray(predictor.layer_predictions([s.spec for s in slots])[0]).reshape(-1)
            if codes.shape[0] != len(slots):
                raise SearchError(f"predictor.layer_predictions gave {codes.shape[0]} op codes for {len(slots)} ops")
            self._codes = {s.name: int(c) for s, c in zip(slots, codes)}
            self._aggregate_np(np.asarray([self._codes[s.name] for s in slots]), np.ones(len(slots)))

    def _aggregate_np(self, codes: np.ndarray, ms: np.ndarray) -> float:
        return aggregate_predictions(self._agg, codes, ms)

    def _calibrated(self, codes: np.ndarray, ms: torch.Tensor) -> torch.Tensor:
        """The aggregation's value at ``ms``; its derivative with respect to each op's ms is a finite
        difference per op kind (every op of the kind moved by ``h``, divided by ``n_kind · h``), exact for
        an aggregation linear in the per-kind sums."""
        m = ms.detach().cpu().numpy().astype(np.float64)
        value = self._aggregate_np(codes, m)
        if not (ms.requires_grad and torch.is_grad_enabled()):  # no gradient wanted: the slopes would add 0
            return torch.tensor(value, dtype=ms.dtype)
        h = max(float(np.abs(m).mean()), 1e-9) * 1e-3
        slope = np.zeros(len(m))
        for k in np.unique(codes):
            sel = codes == k
            bumped = m.copy()
            bumped[sel] += h
            slope[sel] = (self._aggregate_np(codes, bumped) - value) / (h * int(sel.sum()))
        w = torch.as_tensor(slope, dtype=ms.dtype)
        return torch.tensor(value, dtype=ms.dtype) + (w * (ms - ms.detach())).sum()

    def _axes(self, slot: LayerSlot) -> list[tuple[str, list[int]]]:
        axes: list[tuple[str, list[int]]] = []
        groups = {g.key: g.channels for g in self.space.graph.groups}
        if slot.depthwise or slot.spec.op not in ("conv2d", "linear"):
            if slot.out_key:
                axes.append(("out", grid_points(groups[slot.out_key], self.max_grid_points)))
        else:
            if slot.in_key:
                axes.append(("in", grid_points(groups[slot.in_key], self.max_grid_points)))
            if slot.out_key:
                axes.append(("out", grid_points(groups[slot.out_key], self.max_grid_points)))
        if slot.bits_key and slot.bits_key in self.space.bit_layers:
            axes.append(("bits", list(self.space.options.bit_levels)))
        return axes

    def _spec(self, slot: LayerSlot, point: Mapping[str, int]) -> LayerSpec:
        bits = point.get("bits")
        if slot.depthwise or slot.spec.op not in ("conv2d", "linear"):
            return slot.spec_at(None, point.get("out"), bits, self.a_bits if bits else None)
        return slot.spec_at(point.get("in"), point.get("out"), bits, self.a_bits if bits else None)

    def _build(self, slots: Sequence[LayerSlot], progress: bool) -> None:
        import itertools

        from tqdm.auto import tqdm

        cache: dict[tuple[Any, ...], torch.Tensor] = {}
        for slot in tqdm(slots, desc="latency grids", disable=not progress, leave=False):
            axes = self._axes(slot)
            names = [a for a, _ in axes]
            grids = [torch.tensor(g, dtype=torch.float64) for _, g in axes]
            sig = (slot.spec.replace(name="").key, slot.depthwise, tuple((a, tuple(g)) for a, g in axes))
            if sig not in cache:
                pts = list(itertools.product(*[g for _, g in axes])) if axes else [()]
                specs = [self._spec(slot, dict(zip(names, p))) for p in pts]
                ms = predict_specs(self.predictor, specs)
                cache[sig] = torch.tensor(ms).reshape([len(g) for _, g in axes] or [])
            self._tables[slot.name] = (cache[sig], grids, names)
            if self.grad_points is not None:
                self._coarse[slot.name] = _coarse_monotone(cache[sig], grids, names, self.grad_points,
                                                           self.grad_tile)

    def layer_ms(self, slot: LayerSlot, sizes: Sizes) -> torch.Tensor:
        """Interpolated latency (ms) of one slot at ``sizes``."""
        table, grids, names = self._tables[slot.name]
        cin, cout, bits = _slot_size(slot, sizes)
        vals = {"in": cin, "out": cout, "bits": bits}
        xs = [_t(vals[n]).double() for n in names]  # type: ignore[arg-type]  # an axis always has its size
        value = interp_grid(table, grids, xs)
        if self.grad_points is None or slot.name not in self._coarse:
            return value
        ctable, cgrids = self._coarse[slot.name]
        smooth = interp_grid(ctable, cgrids, xs)
        return value.detach() + (smooth - smooth.detach())   # value: fine grid; gradient: monotone envelope

    def _batches(self, slots: Sequence[LayerSlot]) -> tuple[list[_Batch], torch.Tensor]:
        """The slots grouped by identical axes and grids (tables stacked), and the permutation back to their
        order; built once per set of active slots."""
        names = tuple(s.name for s in slots)
        hit = self._plans.get(names)
        if hit is not None:
            return hit
        groups: dict[tuple[Any, ...], list[int]] = {}
        for j, slot in enumerate(slots):
            _table, grids, axes = self._tables[slot.name]
            coarse = self._coarse.get(slot.name) if self.grad_points is not None else None
            key = (tuple(axes), tuple(tuple(g.tolist()) for g in grids),
                   None if coarse is None else tuple(tuple(g.tolist()) for g in coarse[1]))
            groups.setdefault(key, []).append(j)
        batches = []
        for (axes, _g, cg), idx in groups.items():
            ss = [slots[j] for j in idx]
            first = ss[0].name
            ctable = torch.stack([self._coarse[s.name][0] for s in ss]) if cg is not None else None
            batches.append(_Batch(torch.stack([self._tables[s.name][0] for s in ss]), self._tables[first][1], idx,
                                  ctable, self._coarse[first][1] if cg is not None else None))
        order = torch.tensor([j for idx in groups.values() for j in idx], dtype=torch.long)
        plan = (batches, torch.argsort(order))
        self._plans[names] = plan
        return plan

    def slot_ms(self, slots: Sequence[LayerSlot], sizes: Sizes) -> torch.Tensor:
        """Interpolated latency (ms, float64) of each of ``slots`` at ``sizes``, in their order: every
        :meth:`layer_ms` at once (slots with the same grids interpolated together; the same numbers)."""
        batches, inverse = self._batches(slots)
        grad = torch.is_grad_enabled()
        # each slot's sizes converted in slot order, as layer_ms does: autograd then sums their gradients in the
        # same order, so the gradients are the same to the bit
        conv = [[_t(sizes[_axis_key(s, a)]).double() for a in self._tables[s.name][2]] for s in slots]
        parts = []
        for b in batches:
            xs = [torch.stack([conv[j][d].reshape(()) for j in b.rows]) for d in range(len(b.grids))]
            value = _interp_rows(b.table, b.grids, xs, b.index)
            if b.ctable is not None and b.cgrids is not None and grad:  # no autograd: the gradient table adds 0
                smooth = _interp_rows(b.ctable, b.cgrids, xs, b.index)
                value = value.detach() + (smooth - smooth.detach())
            parts.append(value.reshape(-1))
        return torch.cat(parts)[inverse]

    def __call__(self, sizes: Sizes, dense: frozenset[str] = frozenset()) -> torch.Tensor:
        slots = [*self.active_slots(dense), *self.passive]
        ms = self.slot_ms(slots, sizes)
        if self.aggregate == "calibrated":
            total = self._calibrated(np.asarray([self._codes[s.name] for s in slots]), ms)
        else:
            total = ms.sum()
        return total.float()


def select_latency_model(space: SearchSpace, *, predictor: Any = None, predictor_path: str | None = None,
                         store: str | None = None, device: str | None = None, objective: str = "auto",
                         log: Callable[[str], None] | None = None, progress: bool = False,
                         max_grid_points: int = 65, aggregate: str = "auto") -> LatencyModel:
    """The latency model for a search, and a log line saying which one and why.

    Args:
        space: the search space.
        predictor: an already loaded/fitted predictor.
        predictor_path: a predictor file saved by ``hwloop predictor fit``.
        store: a measurement store URL to fit a predictor from (when it has data for ``device``).
        device: the target device name.
        objective: ``auto`` (learned when available, else surrogate), ``learned`` (error if none),
            ``surrogate`` (bits-aware MACs) or ``flops`` (MACs only, ignores bits).
        log: called with one line describing the choice.
        progress: show a progress bar while a predictor's grids are built.
        max_grid_points: grid points per channel axis of a predictor's tables.
        aggregate: ``auto``, ``sum`` or ``calibrated`` (see :class:`PredictorLatency`).

    Example:
        >>> from hwloop.models import ModelRef
        >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
        >>> select_latency_model(space, log=print).kind
        latency model: l1/l2 surrogate (bit-scaled MACs) because no predictor file or store given
        'surrogate'
    """
    say = log or (lambda _m: None)
    if objective not in ("auto", "learned", "surrogate", "flops"):
        raise SearchError(f"latency objective {objective!r} is unknown; allowed: auto, learned, surrogate, flops")
    if objective == "flops":
        say("latency model: FLOPs-only surrogate (MACs; ignores bit-widths and the device)")
        return SurrogateLatency(space, bits_aware=False)
    if objective == "surrogate":
        say("latency model: l1/l2 surrogate (bit-scaled MACs), as requested")
        return SurrogateLatency(space, bits_aware=True)
    reason = "no predictor file or store given"
    if predictor is None and predictor_path:
        from hwloop.predict.io import load_predictor

        predictor = load_predictor(predictor_path)
        reason = f"predictor file {predictor_path}"
        if device:
            predictor.check_device(device)  # warns (PredictorWarning) when it was fitted on another device
    elif predictor is None and store and device:
        predictor, reason = _fit_from_store(store, device, say)
    elif predictor is not None:
        reason = f"given {type(predictor).__name__}"
    if predictor is not None:
        lat = PredictorLatency(space, predictor, progress=progress, max_grid_points=max_grid_points,
                               aggregate=aggregate)
        how = "summed over every op" if lat.aggregate == "sum" else "through its whole-model aggregation"
        say(f"latency model: learned predictor ({type(predictor).__name__}; {reason}) interpolated on per-layer "
            f"grids, {how}")
        return lat
    if objective == "learned":
        raise SearchError(f"objective 'learned' needs a predictor: {reason}")
    say(f"latency model: l1/l2 surrogate (bit-scaled MACs) because {reason}")
    return SurrogateLatency(space, bits_aware=True)


def _fit_from_store(store: str, device: str, say: Callable[[str], None]) -> tuple[Any, str]:
    from hwloop.predict.fitting import learned_policy
    from hwloop.predict.io import load_training_data
    from hwloop.predict.learned import XGBoostPredictor

    try:
        data = load_training_data(store, device=device, progress=False)
    except Exception as e:  # noqa: BLE001 - no store, no rows, schema issues: fall back and log the reason
        return None, f"the store {store} has no usable data for device {device!r} ({str(e).splitlines()[0]})"
    learned, why = learned_policy(data.n_layers)
    if not learned:
        return None, f"the store {store} has too few layers of {device!r} ({why})"
    pred = XGBoostPredictor(n_estimators=300, fingerprint=data.fingerprint, mode=data.mode).fit(
        list(data.layer_specs), data.layer_ms)
    if data.n_models >= 3:
        pred.fit_aggregator(list(data.workloads), data.model_ms)
    say(f"fitted XGBoost on {data.n_layers} layers from {store} for {device}")
    return pred, f"{data.n_layers} stored layer measurements of {device}"


def sample_layer_specs(space: SearchSpace, n: int, rng: Any, *, a_bits: int | None = None) -> list[LayerSpec]:
    """``n`` random layers the search will ask about: each slot of ``space`` at random input/output widths
    and bit-widths (for measuring a device and fitting a predictor on the space's own layers).

    Args:
        space: the search space.
        n: how many specs.
        rng: ``numpy.random.Generator``.
        a_bits: activation bits recorded on quantized specs (default: the space's).
    """
    groups = {g.key: g.channels for g in space.graph.groups}
    slots = list(space.slots) + [s.dense for s in space.slots if s.dense is not None]
    ab = a_bits if a_bits is not None else space.options.a_bits
    out: list[LayerSpec] = []
    for _ in range(n):
        s = slots[int(rng.integers(len(slots)))]
        cin = int(rng.integers(1, groups[s.in_key] + 1)) if s.in_key else None
        cout = int(rng.integers(1, groups[s.out_key] + 1)) if s.out_key else None
        bits = None
        if s.bits_key and s.bits_key in space.bit_layers:
            bits = int(rng.choice(list(space.options.bit_levels)))
        if s.depthwise or s.spec.op == "batchnorm":
            out.append(s.spec_at(None, cout, bits, ab if bits else None))
        else:
            out.append(s.spec_at(cin, cout, bits, ab if bits else None))
    return out
