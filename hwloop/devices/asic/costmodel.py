"""Analytical cost model of the simulated accelerator, vectorised over the ops of a graph.

Array ops (conv, depthwise, dense, matmul) are GEMMs ``M×K · K×N`` repeated over groups:

* **Compute** counts folds of the GEMM over the ``rows × cols`` array. Weight-stationary:
  ``folds = ⌈K/rows⌉·⌈N/(cols·pack)⌉·⌈groups/g⌉`` (``g`` small groups placed block-diagonally
  when ``K ≤ rows``), each fold streams ``M`` rows plus fill/drain ``rows + cols − 2``, and
  weights preload in ``rows`` cycles (hidden behind the previous fold when double-buffered).
  With ``spatial_unroll = "k_c"`` (ZigZag's TPU-like mapping) only the input channels ``C`` of one
  group are on the rows: ``folds = ⌈C/rows⌉·⌈N/(cols·pack)⌉·groups``, each streams ``M·kh·kw`` rows
  (the kernel window is a temporal loop over the ``kh·kw`` weights each PE keeps) and a weight load
  takes ``rows·kh·kw`` cycles (``kh·kw`` with ``weight_load = "parallel"``, 1 under ``k_ckk``). With ``fill_drain = "per_op"`` the fill/drain ``rows + cols − 2`` is
  paid once per op instead of once per fold.
  Output-stationary swaps the roles of ``M`` and ``K``. Row-stationary (Eyeriss) maps each
  (input channel, filter) pair to a PE set of ``kernel_h`` rows × ``min(out_h, cols)``
  columns doing 1-D row convolutions of ``out_w·kernel_w`` MACs. Depthwise convs therefore
  keep their real low utilisation on a weight-stationary array. Low-bit weights pack
  ``pack`` MACs per PE; bits wider than the PE take ``⌈w/pe⌉·⌈a/pe⌉`` passes.
* **DRAM traffic** follows a tiling/reuse model: when the weights (or inputs) exceed their
  buffer (halved by double buffering), the op is tiled and the other operand is re-read once
  per tile; the cheaper loop order is taken. Weights are read at ``w_bits``; activations are
  read and written at ``a_bits`` unless they stay on chip (a tensor no larger than
  :attr:`~AcceleratorSpec.activation_capacity_bytes`), and a strided conv reads only the pixels
  its windows touch; per output channel ``epilogue_param_bytes`` (default
  ``EPILOGUE_PARAM_BYTES``) of bias + requantisation scale; a residual operand added in the
  epilogue is read like an input.
* **Overlap**: with double buffering, ``cycles = max(compute + first fold's load + last fold's
  write-back, memory + one fold)``; without, ``compute + memory``. Every op adds ``op_overhead_cycles``.

Vector ops (pooling, elementwise) stream through the vector unit (``max(compute, memory)``
plus DRAM latency when they touch DRAM); host ops pay the host's throughput, a DRAM round trip
and a hand-off cost; views are free; ``epilogue`` ops (batch norm, ReLU, a residual add in the
producing array op's output pipeline) cost one cycle of pipeline latency per stage
(``EPILOGUE_STAGE_CYCLES``, also charged to an array op per fused stage) and the read of an
off-chip residual operand.
Whole-network latency is the sum over the graph.

Example:
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.devices.asic import AcceleratorSpec, cost_layer
    >>> acc = AcceleratorSpec(rows=4, cols=4, op_overhead_cycles=0, dram_latency_ns=0, dram_gbps=1e6)
    >>> c = cost_layer(LayerSpec("linear", (1, 8), out_channels=8), acc)
    >>> c.compute_cycles, c.bound
    (32.0, 'compute')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwloop.devices.asic.opgraph import OpGraph
from hwloop.devices.asic.spec import AcceleratorSpec
from hwloop.errors import WorkloadError
from hwloop.workload import LayerSpec

__all__ = ["BOUNDS", "COST_MODEL_VERSION", "EPILOGUE_PARAM_BYTES", "EPILOGUE_STAGE_CYCLES", "GraphCost", "OpCost", "cost_graph", "cost_layer", "cost_layers"]

#: bumped whenever the model's numbers change (enters the device fingerprint).
#: 2: fused epilogue (BN/ReLU/add), activations kept on chip, strided reads, per-channel epilogue parameters.
COST_MODEL_VERSION = 2
#: bytes of epilogue parameters per output channel of an array op: an int32 bias (a folded batch norm's
#: shift lands there) and an int32 requantisation multiplier (its scale), as integer inference needs
#: (the default of the spec field ``epilogue_param_bytes``).
EPILOGUE_PARAM_BYTES = 8.0
#: cycles of pipeline latency one epilogue stage (folded BN, residual add, ReLU/clip) adds to an array op's
#: drain; its throughput cost is zero (one result per cycle, like the array).
EPILOGUE_STAGE_CYCLES = 1.0
BOUNDS = ("compute", "memory", "none")


@dataclass(frozen=True)
class OpCost:
    """The cost of one op (or one layer / graph when aggregated).

    Attributes:
        name / kind: the op's name and kind (``layer``/``graph`` when aggregated).
        cycles: total cycles (compute/memory overlap and fixed overhead included).
        compute_cycles / memory_cycles: the two sides before overlap.
        dram_bytes: DRAM traffic; weight_bytes: unique weight bytes (at ``w_bits``).
        macs: multiply-accumulates.
        utilisation: useful work / (cycles × peak of the unit that ran it), in [0, 1].
        energy_pj: energy (NaN when the spec has no energy figures).
        bound: ``compute``, ``memory`` or ``none`` (views).
        latency_ms: ``cycles`` at the spec's clock.
    """

    name: str
    kind: str
    cycles: float
    compute_cycles: float
    memory_cycles: float
    dram_bytes: float
    weight_bytes: float
    macs: int
    utilisation: float
    energy_pj: float
    bound: str
    latency_ms: float

    def to_extra(self) -> dict[str, Any]:
        """The ``MeasureResult.extra`` entries of this cost (NaN energy becomes None)."""
        return {"cycles": self.cycles, "compute_cycles": self.compute_cycles, "memory_cycles": self.memory_cycles,
                "dram_bytes": self.dram_bytes, "weight_bytes": self.weight_bytes, "macs": self.macs,
                "utilisation": self.utilisation,
                "energy_pj": None if np.isnan(self.energy_pj) else self.energy_pj, "bound": self.bound}


def _ceil_div(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.ceil(a / b)


def cost_arrays(a: dict[str, np.ndarray], acc: AcceleratorSpec) -> dict[str, np.ndarray]:
    """Cost every op given as column arrays (see :attr:`OpGraph.arrays`); returns column arrays.

    Keys returned: ``cycles``, ``compute_cycles``, ``memory_cycles``, ``dram_bytes``,
    ``weight_bytes``, ``macs``, ``work`` (useful ops), ``peak`` (unit ops per cycle),
    ``energy_pj`` and ``bound`` (index into :data:`BOUNDS`).
    """
    unit = a["unit"]
    is_arr, is_vec, is_host = unit == 0, unit == 1, unit == 2
    wb, ab = a["w_bits"], a["a_bits"]
    rows, cols = float(acc.rows), float(acc.cols)
    pe = float(acc.pe_bits)
    db = acc.double_buffer

    # ---------------------------------------------------------------- array compute
    m = a["batch"] * a["out_h"] * a["out_w"]
    kh, kw = a["kernel_h"], a["kernel_w"]
    k = np.maximum(a["cin_per_group"] * kh * kw, 1.0)
    n = np.maximum(a["cout_per_group"], 1.0)
    g = a["groups"]
    macs = np.where(is_arr, m * k * n * g, 0.0)
    if acc.pack_low_bits:
        pack = np.where(wb < pe, np.clip(np.floor(pe / wb), 1, acc.max_pack), 1.0)
    else:
        pack = np.ones_like(wb)
    passes = np.ceil(wb / pe) * np.ceil(ab / pe)
    ce = cols * pack
    skew = rows + cols - 2  # fill/drain of the systolic array
    k_rows, fold_w_elems = k, rows * ce  # the reduction on the rows; one fold's weights
    if acc.dataflow == "weight_stationary":
        if acc.spatial_unroll == "k_c":
            # ZigZag's TPU-like mapping: C on the rows, K on the columns, one group at a time; each PE
            # keeps its kh*kw weights and the kernel window is streamed (M*kh*kw rows per fold)
            kk = kh * kw
            k_rows = np.maximum(a["cin_per_group"], 1.0)
            folds = _ceil_div(k_rows, rows) * _ceil_div(n, ce) * g
            stream = m * kk
            w_load = (rows if acc.weight_load == "shift" else 1.0) * kk
            fold_w_elems = rows * ce * kk
        else:
            gpf = np.where((k <= rows) & (n <= ce), np.maximum(1.0, np.minimum(np.floor(rows / k), np.floor(ce / n))), 1.0)
            folds = _ceil_div(k, rows) * _ceil_div(n, ce) * _ceil_div(g, gpf)
            stream = m
            w_load = rows if acc.weight_load == "shift" else 1.0
        load = w_load if db else folds * w_load
        fold_c = stream + skew
        if acc.fill_drain == "per_op":  # folds stream back to back: one fill/drain per op
            compute = passes * (folds * stream + skew + load)
        else:
            compute = passes * (folds * fold_c + load)
        k_folds = _ceil_div(k_rows, rows)
    elif acc.dataflow == "output_stationary":
        folds = _ceil_div(m, rows) * _ceil_div(n, ce) * g
        fold_c = k + skew
        compute = passes * (folds * k + skew) if acc.fill_drain == "per_op" else passes * folds * fold_c
        k_folds = np.ones_like(k)
    else:  # row_stationary
        oh = a["out_h"]
        e = np.minimum(oh, cols)
        strips = _ceil_div(oh, e)
        sets_h = np.floor(cols / e)
        khe = np.minimum(kh, rows)
        sets_v = np.floor(rows / khe)
        pairs = a["batch"] * g * a["cin_per_group"] * a["cout_per_group"]
        rs_passes = np.ceil(_ceil_div(pairs, pack) * strips * _ceil_div(kh, rows) / (sets_v * sets_h))
        fold_c = a["out_w"] * kw + khe + e - 2
        compute = passes * rs_passes * fold_c
        k_folds = _ceil_div(kh, rows)
    one_fold = passes * fold_c
    peak_arr = acc.pes * pack / passes

    # ---------------------------------------------------------------- activation residency
    # an activation tensor that fits the on-chip capacity stays there between ops (no DRAM traffic
    # on either side); the same rule on the producer and the consumer keeps the two consistent.
    act_cap = acc.activation_capacity_bytes
    abyte = ab / 8

    def off_chip(tensor_bytes: np.ndarray, moved_bytes: np.ndarray) -> np.ndarray:
        return np.where(tensor_bytes <= act_cap, 0.0, moved_bytes)

    # ---------------------------------------------------------------- array memory
    bpc = acc.dram_bytes_per_cycle
    lat = acc.dram_latency_cycles
    cap = 0.5 if db else 1.0
    wcap = acc.weight_buffer_kib * 1024 * cap
    icap = acc.input_buffer_kib * 1024 * cap
    ocap = acc.output_buffer_kib * 1024 * cap
    w_bytes = a["weight_elems"] * wb / 8
    i_bytes = off_chip(a["in_elems"] * abyte, a["read_elems"] * abyte)  # a strided conv reads what it uses
    o_bytes = off_chip(a["out_elems"] * abyte, a["out_elems"] * abyte)
    r_bytes = off_chip(a["residual_elems"] * abyte, a["residual_elems"] * abyte)
    b_bytes = a["bias_elems"] * acc.epilogue_param_bytes
    nw = np.maximum(1.0, _ceil_div(w_bytes, wcap))
    ni = np.maximum(1.0, _ceil_div(i_bytes, icap))
    traffic_w_outer = w_bytes + i_bytes * nw + o_bytes + r_bytes + b_bytes
    traffic_i_outer = w_bytes * ni + i_bytes + o_bytes + r_bytes + b_bytes
    # the loop order with less memory time wins (DRAM latency is exposed per tile without double buffering)
    mem_w_outer = traffic_w_outer / bpc + lat * (1.0 if db else nw)
    mem_i_outer = traffic_i_outer / bpc + lat * (1.0 if db else ni)
    w_outer = mem_w_outer <= mem_i_outer
    arr_dram = np.where(w_outer, traffic_w_outer, traffic_i_outer)
    arr_mem = np.minimum(mem_w_outer, mem_i_outer)
    if db:
        # pipeline prologue/epilogue: the first fold's operands arrive before compute starts and the
        # last fold's outputs leave after it ends (one array-sized slice of K and N over M rows)
        fold_w = np.minimum(np.minimum(w_bytes, wcap), fold_w_elems * wb / 8)
        if acc.spatial_unroll == "k_c":  # one fold reads min(C, rows) channels of one group
            fold_i = np.minimum(i_bytes, icap) * np.minimum(1.0, rows / k_rows) / g
        else:
            fold_i = np.minimum(np.minimum(i_bytes, icap), m * rows * abyte)
        fold_o = np.minimum(np.minimum(o_bytes, ocap), m * np.minimum(n, ce) * abyte)
        first_load = (fold_w + fold_i + b_bytes) / bpc + lat
        last_write = fold_o / bpc
        arr_total = np.maximum(compute + first_load + last_write, arr_mem + np.minimum(compute, one_fold))
    else:
        arr_total = compute + arr_mem

    # ---------------------------------------------------------------- vector / host / epilogue
    ops = a["vector_ops"]
    # an elementwise op's inputs are tensors of its output's size (two for an add); a pool's is its input
    in_tensor = np.where(a["eltwise"] > 0, np.minimum(a["in_elems"], a["out_elems"]), a["in_elems"]) * abyte
    vec_io = off_chip(in_tensor, a["in_elems"] * abyte) + off_chip(a["out_elems"] * abyte, a["out_elems"] * abyte)
    vec_lat = np.where(vec_io > 0, lat, 0.0)
    vec_compute = np.ceil(ops / acc.vector_ops_per_cycle)
    vec_mem = vec_io / bpc + vec_lat
    vec_total = np.maximum(vec_compute, vec_io / bpc) + vec_lat if db else vec_compute + vec_mem
    host_io = (a["in_elems"] + a["out_elems"]) * abyte  # the host works from DRAM
    host_mem = host_io / bpc + lat
    host_compute = ops / acc.host_ops_per_cycle + acc.host_overhead_cycles
    host_total = host_compute + host_mem
    stages = a["epilogue_stages"] * EPILOGUE_STAGE_CYCLES  # pipeline latency of the fused BN/add/ReLU stages
    arr_total = arr_total + stages
    epi_total = stages + r_bytes / bpc  # an epilogue: its stage, and its residual operand when off chip

    # ---------------------------------------------------------------- combine
    overhead = acc.op_overhead_cycles
    is_epi = unit == 4
    cycles = np.select([is_arr, is_vec, is_host, is_epi], [arr_total + overhead, vec_total + overhead,
                                                           host_total + overhead, epi_total], 0.0)
    compute_c = np.select([is_arr, is_vec, is_host, is_epi], [compute, vec_compute, host_compute, stages], 0.0)
    memory_c = np.select([is_arr, is_vec, is_host, is_epi], [arr_mem, vec_mem, host_mem, r_bytes / bpc], 0.0)
    dram = np.select([is_arr, is_vec, is_host, is_epi], [arr_dram, vec_io, host_io, r_bytes], 0.0)
    work = np.where(is_arr, macs, np.where(is_vec | is_host, ops, 0.0))
    peak = np.select([is_arr, is_vec, is_host], [peak_arr, np.full_like(wb, acc.vector_ops_per_cycle),
                                                 np.full_like(wb, acc.host_ops_per_cycle)], 1.0)
    bound = np.where((unit == 3) | (is_epi & (epi_total <= 0)), 2, np.where(compute_c >= memory_c, 0, 1))
    if acc.models_energy:
        assert acc.e_mac_pj is not None and acc.e_sram_pj_per_byte is not None and acc.e_dram_pj_per_byte is not None
        mac_pj = acc.e_mac_pj * (wb * ab) / (pe * pe)
        operand = macs * (wb + ab) / 8 / min(rows, cols) + w_bytes + a["out_elems"] * abyte * k_folds
        arr_e = macs * mac_pj + (operand + arr_dram) * acc.e_sram_pj_per_byte + arr_dram * acc.e_dram_pj_per_byte
        io_all = (a["in_elems"] + a["out_elems"]) * abyte
        vec_e = io_all * acc.e_sram_pj_per_byte + vec_io * acc.e_dram_pj_per_byte
        host_e = host_io * (acc.e_sram_pj_per_byte + acc.e_dram_pj_per_byte)
        epi_e = a["residual_elems"] * abyte * acc.e_sram_pj_per_byte + r_bytes * acc.e_dram_pj_per_byte
        energy = np.select([is_arr, is_vec, is_host, is_epi], [arr_e, vec_e + ops * acc.e_mac_pj,
                                                               host_e + ops * acc.e_mac_pj * 10, epi_e], 0.0)
    else:
        energy = np.full_like(wb, np.nan)
    return {"cycles": cycles, "compute_cycles": compute_c, "memory_cycles": memory_c, "dram_bytes": dram,
            "weight_bytes": np.where(is_arr, w_bytes, 0.0), "macs": macs, "work": work, "peak": peak,
            "energy_pj": energy, "bound": bound}


@dataclass(frozen=True)
class GraphCost:
    """Per-op costs of a graph as column arrays; totals and :class:`OpCost` views on demand.

    Attributes:
        graph: the costed graph.
        accel: the accelerator it was costed on.
        columns: the arrays returned by :func:`cost_arrays`.
    """

    graph: OpGraph
    accel: AcceleratorSpec
    columns: dict[str, np.ndarray]

    @property
    def cycles(self) -> float:
        return float(self.columns["cycles"].sum())

    @property
    def latency_ms(self) -> float:
        """Whole-network latency: the sum over the partitioned graph."""
        return self.accel.cycles_to_ms(self.cycles)

    def _aggregate(self, idx: np.ndarray | slice, name: str, kind: str) -> OpCost:
        c = self.columns
        cycles = float(c["cycles"][idx].sum())
        comp = float(c["compute_cycles"][idx].sum())
        mem = float(c["memory_cycles"][idx].sum())
        # utilisation: useful work over cycles x peak, each op weighted by its own unit's peak
        cap = float((c["cycles"][idx] * c["peak"][idx]).sum())
        util = float(c["work"][idx].sum()) / cap if cap > 0 else 0.0
        kinds = c["bound"][idx]
        bound = "none" if np.all(kinds == 2) else ("compute" if comp >= mem else "memory")
        return OpCost(name=name, kind=kind, cycles=cycles, compute_cycles=comp, memory_cycles=mem,
                      dram_bytes=float(c["dram_bytes"][idx].sum()), weight_bytes=float(c["weight_bytes"][idx].sum()),
                      macs=int(c["macs"][idx].sum()), utilisation=min(1.0, util),
                      energy_pj=float(c["energy_pj"][idx].sum()), bound=bound,
                      latency_ms=self.accel.cycles_to_ms(cycles))

    def total(self) -> OpCost:
        """The whole graph as one :class:`OpCost`."""
        return self._aggregate(slice(None), self.graph.name, "graph")

    def ops(self) -> list[OpCost]:
        """One :class:`OpCost` per op, in graph order."""
        c = self.columns
        out = []
        for i, op in enumerate(self.graph.ops):
            cyc = float(c["cycles"][i])
            cap = cyc * float(c["peak"][i])
            out.append(OpCost(name=op.name, kind=op.kind, cycles=cyc, compute_cycles=float(c["compute_cycles"][i]),
                              memory_cycles=float(c["memory_cycles"][i]), dram_bytes=float(c["dram_bytes"][i]),
                              weight_bytes=float(c["weight_bytes"][i]), macs=int(c["macs"][i]),
                              utilisation=min(1.0, float(c["work"][i]) / cap) if cap > 0 else 0.0,
                              energy_pj=float(c["energy_pj"][i]), bound=BOUNDS[int(c["bound"][i])],
                              latency_ms=self.accel.cycles_to_ms(cyc)))
        return out

    def per_op_ms(self) -> dict[str, float]:
        """Op name → latency in ms (ops sharing a name are summed)."""
        out: dict[str, float] = {}
        ms = self.columns["cycles"] / (self.accel.clock_mhz * 1e3)
        for op, v in zip(self.graph.ops, ms):
            out[op.name] = out.get(op.name, 0.0) + float(v)
        return out


def cost_graph(graph: OpGraph, accel: AcceleratorSpec) -> GraphCost:
    """Cost every op of ``graph`` on ``accel`` (one vectorised pass).

    Example:
        >>> from hwloop.workload import LayerSpec
        >>> from hwloop.devices.asic import AcceleratorSpec, OpGraph, cost_graph
        >>> g = OpGraph.from_layer(LayerSpec("conv2d", (1, 16, 8, 8), out_channels=16, kernel=3, padding=1))
        >>> cost_graph(g, AcceleratorSpec()).total().macs
        147456
    """
    if not isinstance(graph, OpGraph):
        raise WorkloadError(f"cost_graph needs an OpGraph, got {type(graph).__name__}")
    return GraphCost(graph, accel, cost_arrays(graph.arrays, accel))


def cost_layer(spec: LayerSpec, accel: AcceleratorSpec) -> OpCost:
    """Cost one :class:`LayerSpec` (bits from ``spec.w_bits``/``a_bits``, 8 when None).

    A low-rank spec costs both of its GEMMs; the result aggregates them.
    """
    if not isinstance(spec, LayerSpec):
        raise WorkloadError(f"cost_layer needs a LayerSpec, got {type(spec).__name__}")
    graph = OpGraph.from_layer(spec, epilogue=accel.fused_epilogue)
    gc = cost_graph(graph, accel)
    if len(graph.ops) == 1:
        return gc.ops()[0]
    return gc._aggregate(slice(None), graph.name, "layer")


def cost_layers(specs: Sequence[LayerSpec], accel: AcceleratorSpec) -> list[OpCost]:
    """Cost many layer specs in one vectorised pass; one :class:`OpCost` per spec, in order."""
    if not specs:
        return []
    graphs = [OpGraph.from_layer(s, epilogue=accel.fused_epilogue) for s in specs]
    big = OpGraph("layers", tuple(op for g in graphs for op in g.ops), "layer")
    gc = cost_graph(big, accel)
    out: list[OpCost] = []
    start = 0
    per_op = gc.ops()
    for s, g in zip(specs, graphs):
        n = len(g.ops)
        out.append(per_op[start] if n == 1 else gc._aggregate(slice(start, start + n), g.name, "layer"))
        start += n
    return out
