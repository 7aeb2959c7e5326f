"""The layer cost table every compression method reads: layer → level → latency on a device.

A *level* of a layer is a hashable key the caller chooses (``("ch", 24)``, ``("rank", 8)``,
``("bits", 4)``, ``("tucker2", 6, 10)``...) mapped to the :class:`~hwloop.workload.LayerSpec` s that
execute at that level (a Tucker-2 level is three convs: :func:`tucker2_specs`). :func:`build_cost_table`
costs every distinct spec once (identical specs, by :attr:`LayerSpec.key`, are costed once however many
layers and levels share them) from one source:

* ``measure`` — live on the device (:func:`hwloop.sweep.run_sweep`, with a progress bar), cached in a
  measurement store under the device's fingerprint and timing: what is stored is reused, nothing stored is
  replaced. On the simulated ``asic`` backend this is exact and cheap.
* ``predictor`` — a fitted predictor (an object, a file from ``hwloop predictor fit``, or the one shipped
  for the device under ``measurements/<device>/predictor.json``).
* ``surrogate`` — bit-scaled MACs (:func:`hwloop.predict.surrogate.surrogate_cost`), unit ``macs``.
* ``auto`` — ``predictor`` when one is passed, else ``measure``.

Devices that do not model low bits (the ``cpu`` backend, like :func:`hwloop.search.report.measure_compressed`)
cost every spec as float: ``w_bits``/``a_bits`` are dropped before costing, and the frame's ``note`` says so.
No device cost model sees sparsity: a sparse level costs as its dense spec.

Whole-model cost (:meth:`CostTable.model_cost`) is the chosen levels plus the table's passive ops (activations,
pooling, adds, fixed layers: ``passive=``) plus ``base``, through the source's calibration: a predictor's
whole-model aggregation (``aggregator_``, as :class:`~hwloop.search.latency.PredictorLatency` uses it), a scale
set from one whole-model measurement (:meth:`CostTable.calibrate`), or the plain sum — what the ``asic``
backend reports for a compressed model (it is measured op by op, summed). On asic-tpu32 that sum, with every
op of the model (``passive=`` the batch-norms, activations, adds and pooling; fused into the conv's epilogue
they cost nothing of their own), equals the device's whole-model request: ResNet-20 (CIFAR, batch 1)
0.114093 ms both, small_cnn 0.004566 ms, a gap below 1e-12 relative (``tests/test_costtable.py`` checks it).

Example:
    >>> from hwloop.workload import LayerSpec
    >>> conv = LayerSpec("conv2d", (1, 64, 8, 8), out_channels=64, kernel=3, padding=1, name="conv")
    >>> t = build_cost_table({"conv": conv_levels(conv, out_channels=[32, 33, 64])}, device="asic-tpu32",
    ...                      source="measure", store="sqlite://", progress=False)
    >>> t.unit, t.levels("conv")
    ('ms', [('dense',), ('ch', 32), ('ch', 33), ('ch', 64)])
    >>> t.cost("conv", ("ch", 64)) == t.cost("conv", ("dense",)) > t.cost("conv", ("ch", 33))
    True
    >>> staircase_step([32, 33, 64], [t.cost("conv", ("ch", c)) for c in (32, 33, 64)])
    32
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.errors import SearchError
from hwloop.workload import LayerSpec

__all__ = [
    "SOURCES",
    "CostTable",
    "CostTableError",
    "build_cost_table",
    "conv_levels",
    "model_layers",
    "shipped_predictor",
    "staircase_step",
    "svd_specs",
    "tucker2_specs",
]

#: where costs come from (see the module docstring)
SOURCES = ("auto", "measure", "predictor", "surrogate")
#: backends without low-bit kernels: specs are costed as float there
FLOAT_ONLY_BACKENDS = ("cpu",)

Level = Hashable


class CostTableError(SearchError):
    """A cost table was asked for something it does not have, or built from bad input (one line)."""


def _short(xs: Iterable[Any], n: int = 8) -> str:
    xs = list(xs)
    s = ", ".join(repr(x) for x in xs[:n])
    return s + (f", ... ({len(xs)} in all)" if len(xs) > n else "")


# ---------------------------------------------------------------------------------------------- spec helpers
def svd_specs(spec: LayerSpec, rank: int) -> list[LayerSpec]:
    """The two layers an SVD factorisation of ``spec`` runs (as :class:`hwloop.compress.actions.LowRank` ``svd``):
    conv ``k×k in→r`` (the conv's stride, padding, dilation; no bias) then ``1×1 r→out`` (its bias);
    linear ``in→r`` then ``r→out``. Names ``<name>.0`` / ``<name>.1``.

    Example:
        >>> conv = LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, stride=2, padding=1, name="c")
        >>> [(s.name, s.kernel, s.in_channels, s.out_channels, s.out_shape) for s in svd_specs(conv, 4)]
        [('c.0', (3, 3), 16, 4, (1, 4, 4, 4)), ('c.1', (1, 1), 4, 32, (1, 32, 4, 4))]
    """
    _check_rank("svd", spec, rank)
    if spec.op == "conv2d":
        first = spec.replace(out_channels=rank, bias=False, rank=None, name=f"{spec.name}.0")
        b, _, h, w = first.out_shape
        second = spec.replace(in_shape=(b, rank, h, w), out_channels=spec.out_channels, kernel=1, stride=1,
                              padding=0, dilation=1, rank=None, name=f"{spec.name}.1")
        return [first, second]
    first = spec.replace(out_channels=rank, bias=False, rank=None, name=f"{spec.name}.0")
    second = spec.replace(in_shape=(*spec.in_shape[:-1], rank), out_channels=spec.out_channels, rank=None,
                          name=f"{spec.name}.1")
    return [first, second]


def tucker2_specs(spec: LayerSpec, r_in: int, r_out: int) -> list[LayerSpec]:
    """The three convs a Tucker-2 factorisation of a conv runs (as ``LowRank`` ``tucker2``): ``1×1 in→r_in``,
    the ``k×k r_in→r_out`` core with the conv's stride, padding and dilation, ``1×1 r_out→out`` with its bias.
    Names ``<name>.0`` / ``.1`` / ``.2``.

    Example:
        >>> conv = LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1, name="c")
        >>> [(s.kernel[0], s.in_channels, s.out_channels) for s in tucker2_specs(conv, 4, 6)]
        [(1, 16, 4), (3, 4, 6), (1, 6, 32)]
    """
    if spec.op != "conv2d":
        raise CostTableError(f"tucker2 needs a conv2d spec, not {spec.op!r} ({spec.name or 'unnamed'})")
    _check_rank("tucker2 r_in", spec, r_in)
    _check_rank("tucker2 r_out", spec, r_out)
    b, _cin, h, w = spec.in_shape
    first = spec.replace(out_channels=r_in, kernel=1, stride=1, padding=0, dilation=1, bias=False, rank=None,
                         name=f"{spec.name}.0")
    core = spec.replace(in_shape=(b, r_in, h, w), out_channels=r_out, bias=False, rank=None, name=f"{spec.name}.1")
    _, _, oh, ow = core.out_shape
    last = spec.replace(in_shape=(b, r_out, oh, ow), out_channels=spec.out_channels, kernel=1, stride=1, padding=0,
                        dilation=1, rank=None, name=f"{spec.name}.2")
    return [first, core, last]


def _check_rank(what: str, spec: LayerSpec, rank: Any) -> None:
    if spec.op not in ("conv2d", "linear"):
        raise CostTableError(f"{what} needs a conv2d or linear spec, not {spec.op!r} ({spec.name or 'unnamed'})")
    if spec.op == "conv2d" and spec.groups != 1:
        raise CostTableError(f"{what}: {spec.name or 'the conv'} has groups={spec.groups}; only groups=1 factorises")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise CostTableError(f"{what} rank={rank!r} must be an integer >= 1")


def conv_levels(spec: LayerSpec, *, out_channels: Iterable[int] = (), in_channels: Iterable[int] = (),
                w_bits: Iterable[int] = (), a_bits: int | None = 8, ranks: Iterable[int] = (),
                tucker: Iterable[tuple[int, int]] = ()) -> dict[Level, list[LayerSpec]]:
    """Levels of one conv/linear layer for the common decisions, ready for :func:`build_cost_table`.

    Keys: ``("dense",)`` (the spec itself, always), ``("ch", c)`` (``c`` output channels), ``("in", c)`` (input
    channels), ``("bits", b)`` (``w_bits=b``, ``a_bits``), ``("rank", r)`` (:func:`svd_specs`),
    ``("tucker2", r_in, r_out)`` (:func:`tucker2_specs`). A depthwise conv's ``("ch", c)`` keeps it depthwise.

    Example:
        >>> lin = LayerSpec("linear", (1, 64), out_channels=10, name="fc")
        >>> sorted(conv_levels(lin, w_bits=[4, 8], ranks=[2]), key=str)
        [('bits', 4), ('bits', 8), ('dense',), ('rank', 2)]
    """
    from hwloop.search.space import LayerSlot

    if spec.op not in ("conv2d", "linear"):
        raise CostTableError(f"conv_levels needs a conv2d or linear spec, not {spec.op!r} ({spec.name or 'unnamed'})")
    depthwise = spec.op == "conv2d" and spec.groups > 1 and spec.groups == spec.in_channels == spec.out_channels
    slot = LayerSlot(spec.name, spec, depthwise=depthwise)
    out: dict[Level, list[LayerSpec]] = {("dense",): [spec]}
    for c in out_channels:
        out[("ch", int(c))] = [slot.spec_at(None, int(c), spec.w_bits, spec.a_bits).replace(name=spec.name)]
    for c in in_channels:
        if depthwise:
            raise CostTableError(f"{spec.name or 'the conv'} is depthwise: its input follows its output channels")
        out[("in", int(c))] = [slot.spec_at(int(c), None, spec.w_bits, spec.a_bits).replace(name=spec.name)]
    for b in w_bits:
        out[("bits", int(b))] = [spec.replace(w_bits=int(b), a_bits=a_bits, out_shape=spec.out_shape)]
    for r in ranks:
        out[("rank", int(r))] = svd_specs(spec, int(r))
    for ri, ro in tucker:
        out[("tucker2", int(ri), int(ro))] = tucker2_specs(spec, int(ri), int(ro))
    return out


# ---------------------------------------------------------------------------------------------- staircase
def staircase_step(sizes: Sequence[int], costs: Sequence[float], *, jump: float = 0.25) -> int:
    """The size step of a latency staircase: the tile after which cost jumps (32 on a 32-wide array), or 1.

    A *jump* is an increase between consecutive sizes (sorted) of at least ``jump`` × the largest increase and
    more than 3× the median of the other increases (the slow growth between jumps: memory traffic, noise). The
    step is the gcd of the distances between the jumps (the sizes just below them: ``32, 64, 96`` → 32; on a
    grid of odd sizes ``31, 63, 95`` → 32), or with one jump the size just below it. No jump, or no increase that
    is not a jump (smooth, flat or too coarsely sampled costs) → 1.

    Example:
        >>> staircase_step(range(1, 97), [1.0 + (c - 1) // 32 + 0.001 * c for c in range(1, 97)])
        32
        >>> staircase_step(range(1, 65), [float(c) for c in range(1, 65)])
        1
    """
    s = np.asarray(list(sizes), dtype=np.int64)
    c = np.asarray(list(costs), dtype=np.float64)
    if s.shape != c.shape:
        raise CostTableError(f"staircase_step: {s.size} sizes but {c.size} costs; give one cost per size")
    if s.size < 2:
        return 1
    if not np.all(np.isfinite(c)):
        raise CostTableError("staircase_step: costs must be finite")
    order = np.argsort(s, kind="stable")
    s, c = s[order], c[order]
    keep = np.r_[True, np.diff(s) > 0]
    s, c = s[keep], c[keep]
    d = np.diff(c)
    if d.size == 0 or d.max() <= 0:
        return 1
    cand = d >= jump * d.max()
    if cand.all():
        return 1
    big = cand & (d > 3 * float(np.median(np.abs(d[~cand]))))
    if not big.any():
        return 1
    below = s[:-1][big]
    if below.size == 1:
        return int(below[0])
    return int(np.gcd.reduce(np.diff(below))) or 1


# ---------------------------------------------------------------------------------------------- the table
class CostTable:
    """Costs of every (layer, level) of a model on one device; built by :func:`build_cost_table`.

    Attributes:
        device: the device profile name.
        source: ``measure``, ``predictor`` or ``surrogate``.
        unit: ``ms`` or ``macs``.
        calibration: how :meth:`model_cost` maps the sum to a model latency: ``sum``, ``aggregator`` (the
            predictor's whole-model aggregation) or ``scale`` (after :meth:`calibrate`).
        note: what the numbers do not model (bits on float-only devices, sparsity).
        scale: the factor :meth:`calibrate` set (1.0 before).
    """

    def __init__(self, levels: Mapping[str, Mapping[Level, Sequence[LayerSpec]]], spec_cost: Mapping[str, float],
                 *, device: str, source: str, unit: str, note: str, passive: Sequence[LayerSpec] = (),
                 codes: Mapping[str, int] | None = None, aggregator: Any = None, detail: str = "") -> None:
        self.device, self.source, self.unit, self.note, self.detail = device, source, unit, note, detail
        self._levels = {layer: {lv: tuple(specs) for lv, specs in lvs.items()} for layer, lvs in levels.items()}
        self._spec_cost = dict(spec_cost)
        self.passive = tuple(passive)
        self._codes = dict(codes or {})
        self._agg = aggregator
        self.calibration = "aggregator" if aggregator is not None else "sum"
        self.scale = 1.0
        self._dev: Any = None  # the Device object the table was measured on, when one was given
        self._cost = {(layer, lv): float(sum(self._spec_cost[s.key] for s in specs))
                      for layer, lvs in self._levels.items() for lv, specs in lvs.items()}

    def __repr__(self) -> str:
        return (f"CostTable(device={self.device!r}, source={self.source!r}, unit={self.unit!r}, "
                f"layers={len(self._levels)}, levels={len(self._cost)})")

    def layers(self) -> list[str]:
        """The layers, in the order given."""
        return list(self._levels)

    def levels(self, layer: str) -> list[Level]:
        """The levels of ``layer``, in the order given."""
        return list(self._lvls(layer))

    def _lvls(self, layer: str) -> Mapping[Level, tuple[LayerSpec, ...]]:
        lv = self._levels.get(layer)
        if lv is None:
            raise CostTableError(f"layer {layer!r} is not in the cost table; layers: {_short(self._levels)}")
        return lv

    def specs(self, layer: str, level: Level) -> tuple[LayerSpec, ...]:
        """The specs that run at ``level`` of ``layer``."""
        lv = self._lvls(layer)
        if level not in lv:
            raise CostTableError(f"level {level!r} of layer {layer!r} is not in the cost table; "
                                 f"levels: {_short(lv)}")
        return lv[level]

    def cost(self, layer: str, level: Level) -> float:
        """The cost (in :attr:`unit`) of ``layer`` at ``level``: the sum over its specs."""
        self.specs(layer, level)
        return self._cost[(layer, level)]

    def passive_cost(self) -> float:
        """The summed cost of the passive ops (uncalibrated)."""
        return float(sum(self._spec_cost[s.key] for s in self.passive))

    def frame(self) -> Any:
        """A pandas DataFrame: ``layer, level, cost, n_specs, source, unit, note`` (one row per layer and level)."""
        import pandas as pd

        rows = [{"layer": layer, "level": lv, "cost": self._cost[(layer, lv)], "n_specs": len(specs),
                 "source": self.source, "unit": self.unit, "note": self.note}
                for layer, lvs in self._levels.items() for lv, specs in lvs.items()]
        return pd.DataFrame(rows, columns=["layer", "level", "cost", "n_specs", "source", "unit", "note"])

    def _chosen(self, choice: Mapping[str, Level]) -> list[LayerSpec]:
        missing = [layer for layer in self._levels if layer not in choice]
        if missing:
            raise CostTableError(f"model_cost needs a level for every layer; missing: {_short(missing)}")
        extra = [layer for layer in choice if layer not in self._levels]
        if extra:
            raise CostTableError(f"layer(s) {_short(extra)} are not in the cost table; layers: {_short(self._levels)}")
        return [s for layer in self._levels for s in self.specs(layer, choice[layer])]

    def raw_sum(self, choice: Mapping[str, Level]) -> float:
        """The chosen levels plus the passive ops, summed (no calibration)."""
        self._chosen(choice)
        return float(sum(self._cost[(layer, choice[layer])] for layer in self._levels)) + self.passive_cost()

    def model_cost(self, choice: Mapping[str, Level], base: float = 0.0) -> float:
        """Whole-model cost of ``choice`` (layer → level): the chosen levels + the passive ops, through the
        calibration (see :attr:`calibration`), + ``base``.

        Raises:
            CostTableError: a layer without a level, a layer or level not in the table.
        """
        specs = [*self._chosen(choice), *self.passive]
        if self._agg is not None:
            from hwloop.search.latency import aggregate_predictions

            codes = np.asarray([self._codes[s.key] for s in specs])
            ms = np.asarray([self._spec_cost[s.key] for s in specs], dtype=np.float64)
            return aggregate_predictions(self._agg, codes, ms) + float(base)
        return self.scale * self.raw_sum(choice) + float(base)

    def calibrate(self, choice: Mapping[str, Level], measured: float) -> float:
        """Set :attr:`scale` so that :meth:`model_cost` of ``choice`` equals a whole-model measurement
        ``measured`` (e.g. :func:`hwloop.search.report.measure_compressed` of the dense model on the CPU, where
        ops in a model run faster than alone); returns the scale. Not for an aggregating predictor."""
        if self._agg is not None:
            raise CostTableError("this table calibrates through its predictor's aggregation; calibrate() is for "
                                 "measure/surrogate tables")
        raw = self.raw_sum(choice)
        if not (math.isfinite(measured) and measured > 0 and raw > 0):
            raise CostTableError(f"calibrate: measured={measured!r} and the table's sum {raw!r} must be > 0")
        self.scale = float(measured) / raw
        self.calibration = "scale"
        return self.scale


    def calibrate_model(self, ref: Any, choice: Mapping[str, Level], *, store: Any = None,
                        progress: bool = False) -> float:
        """:meth:`calibrate` against the device's own whole-model latency of ``ref`` (a
        :class:`~hwloop.models.ModelRef` whose layers are ``choice`` plus the passive ops), measured once and
        cached in ``store`` like the layers (``store`` as in :func:`build_cost_table`). Returns the scale."""
        from hwloop.devices import MeasureRequest, create_device

        if self.source != "measure":
            raise CostTableError(f"calibrate_model needs a 'measure' table, this one is {self.source!r}")
        dev = self._dev if self._dev is not None else create_device(self.device)
        ms, _ = _measure([MeasureRequest.for_model(ref)], dev, store, progress)
        return self.calibrate(choice, next(iter(ms.values())))


def model_layers(model: Any, example: Any, *, ops: Sequence[str] = ("conv2d", "linear")
                 ) -> tuple[dict[str, LayerSpec], list[LayerSpec]]:
    """A model's layers split for a cost table: ``({name: spec}`` of the ``ops`` a method decides, ``[passive]``
    the rest the device runs)``; ``other`` ops (reshapes) are left out, as in
    :func:`~hwloop.search.report.measure_compressed`.

    Example:
        >>> from hwloop.models import ModelRef
        >>> ref = ModelRef("small_cnn")
        >>> layers, passive = model_layers(ref.build().eval(), ref.example_input())
        >>> list(layers), sorted({s.op for s in passive})
        (['features.0', 'features.3', 'features.7', 'classifier'], ['activation', 'batchnorm', 'pooling'])
    """
    import warnings

    from hwloop.workload import WorkloadWarning, extract_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        specs = [s for s in extract_layers(model, example) if s.op != "other"]
    layers = {s.name: s for s in specs if s.op in ops}
    return layers, [s for s in specs if s.op not in ops]


# ---------------------------------------------------------------------------------------------- building
def shipped_predictor(device: str) -> Path | None:
    """The predictor file shipped for ``device`` (``measurements/<device>/predictor.json`` beside the package),
    or None."""
    p = Path(__file__).resolve().parents[2] / "measurements" / device / "predictor.json"
    return p if p.is_file() else None


def _as_spec(x: Any, where: str) -> LayerSpec:
    if not isinstance(x, LayerSpec):
        raise CostTableError(f"{where}: {type(x).__name__} is not a LayerSpec; give a list of hwloop LayerSpecs")
    return x


def _parse_levels(levels: Mapping[str, Mapping[Level, Any]]) -> dict[str, dict[Level, list[LayerSpec]]]:
    if not isinstance(levels, Mapping) or not levels:
        raise CostTableError("build_cost_table needs {layer: {level: [LayerSpec, ...]}} with at least one layer")
    out: dict[str, dict[Level, list[LayerSpec]]] = {}
    for layer, lvs in levels.items():
        if not isinstance(layer, str) or not isinstance(lvs, Mapping) or not lvs:
            raise CostTableError(f"layer {layer!r}: needs a name (str) and a non-empty {{level: [LayerSpec]}}")
        out[layer] = {}
        for lv, specs in lvs.items():
            try:
                hash(lv)
            except TypeError:
                raise CostTableError(f"layer {layer!r}: level {lv!r} is not hashable; use a tuple") from None
            items = [specs] if isinstance(specs, LayerSpec) else list(specs)
            if not items:
                raise CostTableError(f"layer {layer!r} level {lv!r}: no LayerSpec")
            out[layer][lv] = [_as_spec(s, f"layer {layer!r} level {lv!r}") for s in items]
    return out


def _strip_bits(spec: LayerSpec) -> LayerSpec:
    if spec.w_bits is None and spec.a_bits is None:
        return spec
    return spec.replace(w_bits=None, a_bits=None, out_shape=spec.out_shape)


def _open_store(store: Any) -> tuple[Any, bool]:
    from hwloop.store import MeasurementStore

    if isinstance(store, MeasurementStore):
        return store, False
    return MeasurementStore("sqlite://" if store is False else store), True


def _measure(reqs: Sequence[Any], dev: Any, store: Any, progress: bool) -> tuple[dict[str, float], str]:
    """Each request's latency (ms) by its key: what ``store`` lacks is measured (batched, progress bar) and
    added, the rest read back."""
    from hwloop.errors import DeviceError
    from hwloop.sweep import _device_timing, run_sweep

    st, opened = _open_store(store)
    try:
        timing = _device_timing(dev, None)
        fp = dev.fingerprint()
        todo = len(st.missing(fp, reqs, timing))
        if todo:
            run_sweep(reqs, dev, st, timing, progress=progress)
        out: dict[str, float] = {}
        for q in reqs:
            r = st.get(fp.key, q.key, timing.key)
            if r is None or not r.ok or not math.isfinite(r.latency_ms):
                why = "not stored" if r is None else (r.error or f"latency {r.latency_ms}")
                s = q.layer
                what = f"layer {s.name or s.op} ({s.op} {s.in_shape}->{s.out_shape})" if s is not None else \
                    f"model {q.model.name}"
                raise DeviceError(f"device {dev.name!r} could not measure {what}: {why}")
            out[q.key] = float(r.latency_ms)
        detail = (f"measured {todo} of {len(reqs)} distinct specs, {len(reqs) - todo} from the store "
                  f"{st!r} (device {fp.key}, timing {timing.key})")
        return out, detail
    finally:
        if opened:
            st.close()


def build_cost_table(levels: Mapping[str, Mapping[Level, Any]], *, device: Any = "asic-tpu32",
                     source: str = "auto", store: Any = None, predictor: Any = None, progress: bool = True,
                     passive: Sequence[LayerSpec] = ()) -> CostTable:
    """Cost every (layer, level) of ``levels`` on ``device`` (see the module docstring).

    Args:
        levels: ``{layer: {level: [LayerSpec, ...]}}`` (a single LayerSpec is accepted for a one-spec level).
        device: a device profile name (``devices/*.toml``) or a Device object.
        source: one of :data:`SOURCES`.
        store: for ``measure``: a store URL/path, a :class:`~hwloop.store.MeasurementStore`, None for the
            default store (:func:`hwloop.store.default_store_url`), or False for none (in memory). Stored rows for
            the device's fingerprint and timing are reused; new ones are added; nothing stored is replaced.
        predictor: for ``predictor``: a fitted predictor or a predictor file (default: the one shipped for the
            device, :func:`shipped_predictor`).
        progress: progress bars while measuring.
        passive: fixed ops every :meth:`CostTable.model_cost` adds (activations, pooling, adds, fixed layers).

    Raises:
        CostTableError: malformed ``levels``, unknown ``source``, no predictor for the device.
        ConfigError: unknown device.
    """
    from hwloop.devices import create_device, load_profile

    if source not in SOURCES:
        raise CostTableError(f"cost source {source!r} is unknown; allowed: {', '.join(SOURCES)}")
    parsed = _parse_levels(levels)
    passive = [_as_spec(s, "passive") for s in passive]
    if isinstance(device, str):
        prof = load_profile(device)
        name, backend, dev = prof.name, prof.backend, None
    else:
        if not callable(getattr(device, "fingerprint", None)) or not callable(getattr(device, "measure", None)):
            raise CostTableError(f"device {device!r} is neither a profile name nor a Device")
        name, backend, dev = device.name, getattr(device, "backend", ""), device
    if source == "auto":
        source = "predictor" if predictor is not None else "measure"
    float_only = backend in FLOAT_ONLY_BACKENDS and source != "surrogate"
    notes = ["sparsity not modelled (a sparse level costs as dense)"]
    if float_only:
        notes.insert(0, f"bits not modelled on the {backend} backend (costed as float)")

    def costed(s: LayerSpec) -> LayerSpec:
        return _strip_bits(s) if float_only else s

    # the spec each level's spec is costed as, keyed by the level spec's own key
    all_specs = [s for lvs in parsed.values() for specs in lvs.values() for s in specs] + list(passive)
    as_costed = {s.key: costed(s) for s in all_specs}
    uniq = list({c.key: c for c in as_costed.values()}.values())
    codes: dict[str, int] = {}
    agg = None
    detail = ""
    if source == "surrogate":
        from hwloop.predict.surrogate import surrogate_cost, surrogate_terms

        vals = np.asarray(surrogate_cost(surrogate_terms(uniq)), dtype=np.float64).reshape(-1)
        by_costed = dict(zip([u.key for u in uniq], vals.tolist()))
        unit, detail = "macs", "bit-scaled MACs (hwloop.predict.surrogate)"
    elif source == "predictor":
        from hwloop.search.latency import predict_specs, predictor_aggregates

        if predictor is None:
            predictor = shipped_predictor(name)
            if predictor is None:
                raise CostTableError(f"no predictor for device {name!r}: pass predictor= (an object or a file from "
                                     f"'hwloop predictor fit'), or use source='measure' or 'surrogate'")
        if isinstance(predictor, (str, Path)):
            from hwloop.predict.io import load_predictor

            path = str(predictor)
            predictor = load_predictor(path)
            detail = f"predictor file {path}"
        else:
            detail = f"given {type(predictor).__name__}"
        if callable(getattr(predictor, "check_device", None)):
            predictor.check_device(name)  # warns (PredictorWarning) when fitted on another device
        vals = predict_specs(predictor, uniq)
        by_costed = dict(zip([u.key for u in uniq], vals.tolist()))
        unit = "ms"
        bits = any(s.w_bits is not None for s in uniq)
        if predictor_aggregates(predictor, bits=bits):
            agg = predictor.aggregator_
            c = np.asarray(predictor.layer_predictions(uniq)[0]).reshape(-1)
            codes = {k: int(c[i]) for i, k in enumerate(by_costed)}
    else:
        dev = dev if dev is not None else create_device(name)
        from hwloop.devices import MeasureRequest

        by_costed, detail = _measure([MeasureRequest.for_layer(u) for u in uniq], dev, store, progress)
        unit = "ms"
    spec_cost = {k: by_costed[c.key] for k, c in as_costed.items()}
    codes = {k: codes[c.key] for k, c in as_costed.items()} if codes else {}
    table = CostTable(parsed, spec_cost, device=name, source=source, unit=unit, note="; ".join(notes),
                      passive=passive, codes=codes, aggregator=agg, detail=detail)
    table._dev = dev
    return table
