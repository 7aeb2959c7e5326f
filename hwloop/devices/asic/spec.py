"""The accelerator specification: the ``[spec]`` table of a ``devices/asic-*.toml`` profile.

An :class:`AcceleratorSpec` describes a simulated accelerator: a ``rows`` × ``cols`` PE
array with a dataflow, a spatial unrolling (which loops sit on the array), how often the
array's fill/drain skew is paid, PE bit-width and low-bit packing, a clock, three on-chip buffers,
DRAM bandwidth and latency, a per-op fixed overhead, an output pipeline (epilogue) that
applies folded batch norm, ReLU/ReLU6 and a residual add to the array's results, whether
activations stay on chip between ops, a vector unit for pooling and elementwise ops, a host
CPU for ops the accelerator cannot run, and optional energy per access. Units are in the
field names; docs/asic.md gives the reason for each shipped value.

Example:
    >>> from hwloop.devices.asic.spec import AcceleratorSpec
    >>> acc = AcceleratorSpec.from_dict({"rows": 4, "cols": 4, "clock_mhz": 100})
    >>> acc.peak_macs_per_cycle(w_bits=8, a_bits=8)
    16
    >>> acc.replace(pack_low_bits=True).peak_macs_per_cycle(w_bits=4, a_bits=8)
    32
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hwloop.errors import ConfigError

__all__ = ["DATAFLOWS", "FILL_DRAIN", "SPATIAL_UNROLLS", "WEIGHT_LOADS", "AcceleratorSpec"]

#: supported array dataflows (how the GEMM/conv loops map onto the PE array).
DATAFLOWS = ("weight_stationary", "output_stationary", "row_stationary")
#: which loops of a conv a weight-stationary array unrolls: ``k_ckk`` puts the whole reduction
#: (input channels x kernel window) on the rows and packs small groups block-diagonally; ``k_c``
#: puts only the input channels of one group on the rows (ZigZag's TPU-like mapping: D1 <- K,
#: D2 <- C), the kernel window, pixels and groups being temporal loops.
SPATIAL_UNROLLS = ("k_ckk", "k_c")
#: when the array's fill/drain skew (``rows + cols - 2`` cycles) is paid: once per fold, or once
#: per op (folds stream back to back through the array, as ZigZag's cost model charges it).
FILL_DRAIN = ("per_fold", "per_op")
#: how a weight-stationary array's weights get into its PEs: shifted down the columns, one row a cycle
#: (TPU v1), or written into every PE's register through its own port at once (ZigZag's TPU-like ``rf_128B``).
WEIGHT_LOADS = ("shift", "parallel")
#: fields added after cost model 2 with the value that reproduces it; :meth:`AcceleratorSpec.to_dict`
#: leaves them out at these values, so the shipped profiles keep their device fingerprints.
_LATER_DEFAULTS: dict[str, Any] = {"spatial_unroll": "k_ckk", "fill_drain": "per_fold", "weight_load": "shift",
                                   "epilogue_param_bytes": 8.0}

_INT_FIELDS = ("rows", "cols", "pe_bits", "max_pack")
_POS_FLOAT_FIELDS = ("clock_mhz", "weight_buffer_kib", "input_buffer_kib", "output_buffer_kib", "dram_gbps",
                     "vector_ops_per_cycle", "host_gops")
_NONNEG_FLOAT_FIELDS = ("dram_latency_ns", "op_overhead_cycles", "host_overhead_us", "epilogue_param_bytes")
_ENERGY_FIELDS = ("e_mac_pj", "e_sram_pj_per_byte", "e_dram_pj_per_byte")


@dataclass(frozen=True)
class AcceleratorSpec:
    """A simulated accelerator. Frozen; validated on construction.

    Attributes:
        name: a label (not part of the device identity; the values are).
        rows / cols: PE array size.
        dataflow: one of :data:`DATAFLOWS`. ``weight_stationary``: reduction (K) on rows,
            output channels (N) on columns, output pixels streamed (TPU-like).
            ``output_stationary``: output pixels on rows, output channels on columns, K
            streamed. ``row_stationary``: Eyeriss-style 1-D row convolutions per PE, a PE
            set of kernel-height rows × output-row columns.
        spatial_unroll: one of :data:`SPATIAL_UNROLLS` (weight-stationary only). ``k_ckk``
            (default): the reduction ``C·kh·kw`` of one group on the rows, its output channels
            on the columns, ``⌊rows/K⌋`` small groups side by side (block-diagonal), output
            pixels streamed. ``k_c``: only the ``C`` input channels of one group on the rows and
            its ``K`` output channels on the columns; each PE keeps its ``kh·kw`` weights in a
            register file and the kernel window, the output pixels and the groups are temporal
            loops (a fold streams ``M·kh·kw`` rows). This is the mapping file of ZigZag's
            TPU-like accelerator (``inputs/mapping/tpu_like.yaml``: ``D1: K 32, D2: C 32``), so a
            depthwise conv runs on one PE per group and a 3-channel stem on 3 rows.
        fill_drain: one of :data:`FILL_DRAIN`. ``per_fold`` (default): each fold pays the
            array's skew ``rows + cols − 2``. ``per_op``: the folds of an op stream back to back
            (the next fold's inputs enter behind the previous fold's, its weights double-buffered)
            and the skew is paid once per op; ZigZag's cost model charges its systolic drain
            once per layer (``systolic_dimensions: [D1, D2]`` of ``tpu_like.yaml``). Systolic
            dataflows only (weight- and output-stationary).
        weight_load: one of :data:`WEIGHT_LOADS` (weight-stationary only): how long loading a
            fold's weights into the array takes (hidden behind the previous fold but the first
            when double-buffered). ``shift`` (default): ``rows`` cycles per weight a PE holds
            (``rows·kh·kw`` under ``k_c``), weights shifting down the columns as in TPU v1.
            ``parallel``: one cycle per weight a PE holds, every PE's weight register written
            through its own port (ZigZag's ``tpu_like.yaml``: ``rf_128B`` per PE, an 8-bit write
            port each, fed from DRAM).
        pe_bits: native multiplier width of one PE.
        pack_low_bits: whether ``pe_bits // w_bits`` low-bit weights share one PE
            (two 4-bit MACs per 8-bit PE); capped at ``max_pack``.
        max_pack: the most weights packed into one PE.
        clock_mhz: array clock.
        weight_buffer_kib / input_buffer_kib / output_buffer_kib: on-chip buffer sizes.
        double_buffer: half of each buffer prefetches the next tile while the other half
            is computed on (compute and DRAM traffic overlap; capacity per tile halves).
        dram_gbps: DRAM bandwidth in GB/s (1e9 bytes/s).
        dram_latency_ns: latency of one DRAM transfer (exposed once per op with double
            buffering, once per tile without).
        epilogue_param_bytes: bytes read per output channel of an array op for the output
            pipeline: an int32 bias (a folded batch norm's shift) and an int32 requantisation
            multiplier = 8 (default). 0 models layers without them (ZigZag's layers have only
            the operands W, I and O).
        op_overhead_cycles: fixed cost of launching any op that runs on the array, the vector
            unit or the host (configuration, sync); ops fused into an epilogue pay none.
        fused_epilogue: the array's output pipeline applies batch norm (folded into the
            weights and per-channel bias, as inference does), ReLU/ReLU6 and a residual add
            to each output before it is written, so they cost no op of their own (the residual
            operand is still read). False: each is a separate vector-unit op.
        keep_activations_on_chip: an activation tensor that fits the activation capacity
            (:attr:`activation_capacity_bytes`) stays in the on-chip buffers between ops
            (written and read without DRAM traffic). False: every op reads its inputs from
            and writes its outputs to DRAM (the "isolated layer" view of ZigZag and friends).
        vector_ops_per_cycle: throughput of the vector unit (pooling, elementwise).
        host_gops: throughput of the host CPU running unsupported ops (1e9 ops/s).
        host_overhead_us: fixed cost of handing an op to the host and back.
        e_mac_pj / e_sram_pj_per_byte / e_dram_pj_per_byte: optional energy per access
            (a ``pe_bits`` × ``pe_bits`` MAC, one byte of buffer or DRAM traffic); when any
            is None, energy is not modelled (``energy_pj`` is NaN).
    """

    rows: int = 32
    cols: int = 32
    dataflow: str = "weight_stationary"
    spatial_unroll: str = "k_ckk"
    fill_drain: str = "per_fold"
    weight_load: str = "shift"
    pe_bits: int = 8
    pack_low_bits: bool = False
    max_pack: int = 2
    clock_mhz: float = 700.0
    weight_buffer_kib: float = 256.0
    input_buffer_kib: float = 256.0
    output_buffer_kib: float = 128.0
    double_buffer: bool = True
    dram_gbps: float = 12.8
    dram_latency_ns: float = 100.0
    op_overhead_cycles: float = 200.0
    epilogue_param_bytes: float = 8.0
    fused_epilogue: bool = True
    keep_activations_on_chip: bool = True
    vector_ops_per_cycle: float = 32.0
    host_gops: float = 2.0
    host_overhead_us: float = 10.0
    e_mac_pj: float | None = None
    e_sram_pj_per_byte: float | None = None
    e_dram_pj_per_byte: float | None = None
    name: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        for n in _INT_FIELDS:
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"accelerator spec {n}={v!r} must be an integer >= 1")
        if self.pe_bits > 32:
            raise ConfigError(f"accelerator spec pe_bits={self.pe_bits} must be <= 32")
        if self.dataflow not in DATAFLOWS:
            raise ConfigError(f"accelerator spec dataflow={self.dataflow!r} is unknown; "
                              f"allowed: {', '.join(DATAFLOWS)}")
        for n, allowed in (("spatial_unroll", SPATIAL_UNROLLS), ("fill_drain", FILL_DRAIN), ("weight_load", WEIGHT_LOADS)):
            if getattr(self, n) not in allowed:
                raise ConfigError(f"accelerator spec {n}={getattr(self, n)!r} is unknown; allowed: {', '.join(allowed)}")
        for n, default in (("spatial_unroll", "k_ckk"), ("weight_load", "shift")):
            if getattr(self, n) != default and self.dataflow != "weight_stationary":
                raise ConfigError(f"accelerator spec {n}={getattr(self, n)!r} needs dataflow='weight_stationary' "
                                  f"(got {self.dataflow!r}); allowed otherwise: {default!r}")
        if self.fill_drain != "per_fold" and self.dataflow == "row_stationary":
            raise ConfigError(f"accelerator spec fill_drain={self.fill_drain!r} needs a systolic dataflow "
                              "(weight_stationary or output_stationary); allowed with row_stationary: 'per_fold'")
        for n in ("pack_low_bits", "double_buffer", "fused_epilogue", "keep_activations_on_chip"):
            if not isinstance(getattr(self, n), bool):
                raise ConfigError(f"accelerator spec {n}={getattr(self, n)!r} must be true or false")
        for n in _POS_FLOAT_FIELDS + _NONNEG_FLOAT_FIELDS:
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"accelerator spec {n}={v!r} must be a finite number")
            if n in _POS_FLOAT_FIELDS and v <= 0 or v < 0:
                raise ConfigError(f"accelerator spec {n}={v!r} must be "
                                  f"{'> 0' if n in _POS_FLOAT_FIELDS else '>= 0'}")
            object.__setattr__(self, n, float(v))
        for n in _ENERGY_FIELDS:
            v = getattr(self, n)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"accelerator spec {n}={v!r} must be a number >= 0 (or left out)")
            object.__setattr__(self, n, float(v))
        if not isinstance(self.name, str):
            raise ConfigError(f"accelerator spec name={self.name!r} must be a string")

    # ----------------------------------------------------------------- derived
    @property
    def pes(self) -> int:
        """Number of processing elements."""
        return self.rows * self.cols

    @property
    def models_energy(self) -> bool:
        """Whether every energy-per-access field is set."""
        return all(getattr(self, n) is not None for n in _ENERGY_FIELDS)

    @property
    def dram_bytes_per_cycle(self) -> float:
        """DRAM bandwidth in bytes per array clock cycle."""
        return self.dram_gbps * 1e3 / self.clock_mhz

    @property
    def activation_capacity_bytes(self) -> float:
        """The largest activation tensor kept on chip between ops (0 when they never are).

        The tensor is written into the output buffer and read back as the next op's input
        (with a residual operand beside it), so it must fit the output buffer and half the
        input buffer, each halved again by double buffering.
        """
        if not self.keep_activations_on_chip:
            return 0.0
        cap = 0.5 if self.double_buffer else 1.0
        return min(self.output_buffer_kib * cap, self.input_buffer_kib * cap / 2) * 1024

    @property
    def dram_latency_cycles(self) -> float:
        return self.dram_latency_ns * self.clock_mhz / 1e3

    @property
    def host_ops_per_cycle(self) -> float:
        """Host throughput expressed per array clock cycle."""
        return self.host_gops * 1e3 / self.clock_mhz

    @property
    def host_overhead_cycles(self) -> float:
        return self.host_overhead_us * self.clock_mhz

    def pack_factor(self, w_bits: int) -> int:
        """How many ``w_bits`` weights one PE multiplies per cycle (1 without packing)."""
        if not self.pack_low_bits or w_bits >= self.pe_bits:
            return 1
        return max(1, min(self.max_pack, self.pe_bits // w_bits))

    def bit_passes(self, w_bits: int, a_bits: int) -> int:
        """Passes a MAC wider than the PE needs (bit-serial decomposition); 1 when it fits."""
        return math.ceil(w_bits / self.pe_bits) * math.ceil(a_bits / self.pe_bits)

    def peak_macs_per_cycle(self, w_bits: int = 8, a_bits: int = 8) -> int:
        """Array peak at a precision: ``rows·cols·pack / passes`` (integer division)."""
        return self.pes * self.pack_factor(w_bits) // self.bit_passes(w_bits, a_bits)

    def cycles_to_ms(self, cycles: float) -> float:
        return cycles / (self.clock_mhz * 1e3)

    # ---------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, name: str = "") -> AcceleratorSpec:
        """Build from a profile's ``[spec]`` table; unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"accelerator spec must be a table, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"accelerator spec has unknown key(s) {sorted(extra)}; allowed: {sorted(known)}")
        kw = dict(d)
        kw.setdefault("name", name)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``name`` (what identifies the hardware).

        A field added after cost model 2 (``spatial_unroll``, ``fill_drain``, ``weight_load``,
        ``epilogue_param_bytes``) is left out while it has the value that reproduces cost model 2,
        so a profile that does not set it keeps its device fingerprint (and its recorded data).
        """
        d = dataclasses.asdict(self)
        d.pop("name")
        for n, v in _LATER_DEFAULTS.items():
            if d[n] == v:
                d.pop(n)
        return d

    def replace(self, **changes: Any) -> AcceleratorSpec:
        """A validated copy with fields changed."""
        return dataclasses.replace(self, **changes)
