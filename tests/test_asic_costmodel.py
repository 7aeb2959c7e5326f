"""The asic cost model without TVM: closed-form cycle counts on a 4x4 array, traffic, properties."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwloop.devices.asic import AcceleratorSpec, AccelOp, OpGraph, cost_graph, cost_layer, cost_layers
from hwloop.devices.asic.spec import FILL_DRAIN, SPATIAL_UNROLLS, WEIGHT_LOADS
from hwloop.devices.profiles import load_profile
from hwloop.errors import ConfigError, WorkloadError
from hwloop.workload import LayerSpec

# A 4x4 weight-stationary array whose memory is (practically) free and instant, so that
# total cycles equal the compute cycles of the closed forms below.
FREE_MEM = {"rows": 4, "cols": 4, "pe_bits": 8, "op_overhead_cycles": 0.0, "dram_latency_ns": 0.0,
            "dram_gbps": 1e9, "clock_mhz": 100.0}
WS = AcceleratorSpec(dataflow="weight_stationary", **FREE_MEM)  # type: ignore[arg-type]
# the same array costing each layer alone: every activation goes to DRAM and back (ZigZag's view)
WS_ISO = WS.replace(keep_activations_on_chip=False)
SHIPPED = [AcceleratorSpec.from_dict(load_profile(p).spec) for p in ("asic-tpu32", "asic-eyeriss")]
# weight-stationary fold = M + rows + cols - 2 = M + 6 cycles; + rows (4) for the first weight load.


def conv(cin: int, cout: int, hw: int, k: int = 1, groups: int = 1, **kw: object) -> LayerSpec:
    return LayerSpec("conv2d", (1, cin, hw, hw), out_channels=cout, kernel=k, groups=groups, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("spec,folds,m", [
    # 1x1 conv 8->8 on 4x4 pixels: M=16, K=8, N=8 -> ceil(8/4)*ceil(8/4) = 4 folds
    (conv(8, 8, 4, 1), 4, 16),
    # 3x3 conv 4->4, 6x6 input, no padding: M=16 (4x4 out), K=36, N=4 -> 9 folds
    (conv(4, 4, 6, 3), 9, 16),
    # depthwise 3x3 on 8 channels: K=9 > 4 rows -> 3 folds per group, one group per fold -> 24 folds
    (conv(8, 8, 6, 3, groups=8), 24, 16),
    # depthwise 1x1 on 8 channels: K=1, N=1 -> 4 groups block-diagonal per fold -> 2 folds
    (conv(8, 8, 4, 1, groups=8), 2, 16),
    # dense 10->6, one row: M=1, K=10, N=6 -> ceil(10/4)*ceil(6/4) = 6 folds
    (LayerSpec("linear", (1, 10), out_channels=6), 6, 1),
])
def test_weight_stationary_closed_form(spec: LayerSpec, folds: int, m: int) -> None:
    c = cost_layer(spec, WS)
    expected = folds * (m + 4 + 4 - 2) + 4
    assert c.compute_cycles == expected
    assert c.cycles == pytest.approx(expected, abs=0.05)
    assert c.macs == spec.macs
    assert c.utilisation == pytest.approx(spec.macs / (expected * 16), rel=1e-3)
    assert c.bound == "compute"


def test_depthwise_has_low_utilisation_on_weight_stationary() -> None:
    dense = cost_layer(conv(32, 32, 8, 3), AcceleratorSpec())
    dw = cost_layer(conv(32, 32, 8, 3, groups=32), AcceleratorSpec())
    assert dw.utilisation < 0.05 < dense.utilisation


def test_other_dataflows_closed_form() -> None:
    # output stationary, 1x1 conv 8->8 on 16 pixels: ceil(16/4)*ceil(8/4) = 8 folds of K + 6 = 14 cycles
    os_ = WS.replace(dataflow="output_stationary")
    assert cost_layer(conv(8, 8, 4, 1), os_).compute_cycles == 8 * 14
    # row stationary, 3x3 conv 4->4 on 6x6: PE set 3 rows x 4 cols, one set fits -> 16 channel pairs
    # = 16 passes of out_w*k_w + kh + e - 2 = 12 + 3 + 4 - 2 = 17 cycles
    rs = WS.replace(dataflow="row_stationary")
    assert cost_layer(conv(4, 4, 6, 3), rs).compute_cycles == 16 * 17
    # without double buffering every fold pays its weight load: 4 * (22 + 4)
    assert cost_layer(conv(8, 8, 4, 1), WS.replace(double_buffer=False)).compute_cycles == 4 * 26


# ZigZag's TPU-like mapping (spatial_unroll="k_c"): C of one group on the rows, K on the columns, the
# kernel window streamed (M*kh*kw rows per fold), a weight load of rows*kh*kw = 4*9 = 36 cycles.
WS_KC = WS.replace(spatial_unroll="k_c")


@pytest.mark.parametrize("spec,folds,stream,load", [
    # depthwise 3x3 on 8 channels, 6x6 input: C = K = 1 per group -> one PE per group, 8 folds of 16*9 rows
    (conv(8, 8, 6, 3, groups=8), 8, 16 * 9, 36),
    # 3-channel stem 3->8, 3x3: C = 3 of 4 rows, K = 8 -> 2 column folds of 16*9 rows
    (conv(3, 8, 6, 3), 2, 16 * 9, 36),
    # grouped 3x3, 2 groups of 4->4: one fold per group
    (conv(8, 8, 6, 3, groups=2), 2, 16 * 9, 36),
    # 1x1 conv 8->8 on 4x4 pixels and dense 10->6: no kernel window, the same folds as k_ckk
    (conv(8, 8, 4, 1), 4, 16, 4),
    (LayerSpec("linear", (1, 10), out_channels=6), 6, 1, 4),
])
def test_k_c_unrolling_closed_form(spec: LayerSpec, folds: int, stream: int, load: int) -> None:
    c = cost_layer(spec, WS_KC)
    assert c.compute_cycles == folds * (stream + 6) + load
    assert c.cycles == pytest.approx(folds * (stream + 6) + load, abs=0.05)
    assert c.macs == spec.macs and c.bound == "compute"
    # fill/drain once per op: the folds stream back to back
    assert cost_layer(spec, WS_KC.replace(fill_drain="per_op")).compute_cycles == folds * stream + 6 + load
    # without double buffering every fold pays its weight load
    assert cost_layer(spec, WS_KC.replace(double_buffer=False)).compute_cycles == folds * (stream + 6 + load)
    # every PE's weight register written through its own port: one cycle per weight it holds, not rows (4)
    assert cost_layer(spec, WS_KC.replace(weight_load="parallel")).compute_cycles == folds * (stream + 6) + load // 4


def test_k_c_runs_a_depthwise_conv_on_one_pe_per_group() -> None:
    dw = conv(8, 8, 6, 3, groups=8)
    kc, kckk = cost_layer(dw, WS_KC), cost_layer(dw, WS)
    # 1,152 MACs in 1,236 cycles on a 16-PE array: under 1/16 utilisation (one PE busy)
    assert kc.macs == 1152 and kc.compute_cycles == 1236
    assert kc.utilisation < 1 / 16 < kckk.utilisation
    # the k_ckk mapping (9 taps on the rows, groups one after another): 24 folds * 22 + 4 = 532
    assert kckk.compute_cycles == 532


def test_fill_drain_per_op_output_stationary_closed_form() -> None:
    # 1x1 conv 8->8 on 16 pixels: 8 folds of K = 8 cycles, then one fill/drain of 6
    os_ = WS.replace(dataflow="output_stationary", fill_drain="per_op")
    assert cost_layer(conv(8, 8, 4, 1), os_).compute_cycles == 8 * 8 + 6


def test_epilogue_param_bytes_is_read_per_output_channel() -> None:
    spec = conv(8, 24, 4, 3, padding=1)
    with_params, without = cost_layer(spec, WS_ISO), cost_layer(spec, WS_ISO.replace(epilogue_param_bytes=0.0))
    assert with_params.dram_bytes - without.dram_bytes == 24 * 8
    assert cost_layer(spec, WS_ISO.replace(epilogue_param_bytes=2.0)).dram_bytes - without.dram_bytes == 24 * 2


def test_later_fields_keep_the_cost_model_2_identity() -> None:
    # the fields added for the ZigZag cross-check leave to_dict (the device identity) at their defaults,
    # so the shipped profiles keep their fingerprints and recorded data
    cm2 = {"rows", "cols", "dataflow", "pe_bits", "pack_low_bits", "max_pack", "clock_mhz", "weight_buffer_kib",
           "input_buffer_kib", "output_buffer_kib", "double_buffer", "dram_gbps", "dram_latency_ns",
           "op_overhead_cycles", "fused_epilogue", "keep_activations_on_chip", "vector_ops_per_cycle", "host_gops",
           "host_overhead_us", "e_mac_pj", "e_sram_pj_per_byte", "e_dram_pj_per_byte"}
    for acc in [AcceleratorSpec(), *SHIPPED]:
        assert set(acc.to_dict()) == cm2
    kc = AcceleratorSpec(spatial_unroll="k_c", fill_drain="per_op", weight_load="parallel", epilogue_param_bytes=0)
    d = kc.to_dict()
    assert (d["spatial_unroll"], d["fill_drain"], d["weight_load"], d["epilogue_param_bytes"]) == (
        "k_c", "per_op", "parallel", 0.0)
    assert AcceleratorSpec.from_dict(d) == kc and AcceleratorSpec.from_dict(AcceleratorSpec().to_dict()) == AcceleratorSpec()


def test_packing_and_wide_bits_closed_form() -> None:
    packed = WS.replace(pack_low_bits=True, max_pack=2)
    # 4-bit weights: two MACs per PE -> 8 effective columns -> 1x1 8->8 needs 2 folds
    assert cost_layer(conv(8, 8, 4, 1, w_bits=4), packed).compute_cycles == 2 * 22 + 4
    # 2-bit weights are capped at max_pack=2
    assert cost_layer(conv(8, 8, 4, 1, w_bits=2), packed).compute_cycles == 2 * 22 + 4
    # 16-bit activations on 8-bit PEs take two passes
    assert cost_layer(conv(8, 8, 4, 1, a_bits=16), WS).compute_cycles == 2 * (4 * 22 + 4)


def test_dram_traffic_tiling() -> None:
    spec = conv(8, 8, 4, 1)  # W=64 B, I=128 B, O=128 B at 8 bits, epilogue parameters 8 ch x 8 B = 64 B
    assert cost_layer(spec, WS_ISO).dram_bytes == 64 + 128 + 128 + 64
    # weight tiles of 16 B (32 B buffer, double-buffered) -> 4 tiles; inputs in 64 B tiles -> 2 tiles.
    # weights-outer re-reads inputs 4x (704 B); inputs-outer re-reads weights 2x (384 B): the cheaper wins.
    tiny = WS_ISO.replace(weight_buffer_kib=32 / 1024, input_buffer_kib=128 / 1024)
    assert cost_layer(spec, tiny).dram_bytes == 2 * 64 + 128 + 128 + 64
    # 4-bit weights and activations halve every term but the int32 epilogue parameters
    assert cost_layer(conv(8, 8, 4, 1, w_bits=4, a_bits=4), WS_ISO).dram_bytes == 32 + 64 + 64 + 64
    # a float bias changes nothing: every array op reads its int32 bias + requantisation scale
    assert cost_layer(conv(8, 8, 4, 1, bias=True), WS_ISO).dram_bytes == 384
    # activations that fit the on-chip capacity stay there: only weights and parameters move
    assert WS.activation_capacity_bytes == 64 * 1024  # min(128 KiB out / 2, 256 KiB in / 4)
    assert cost_layer(spec, WS).dram_bytes == 64 + 64


def test_memory_bound_overlap_and_overhead() -> None:
    slow = WS_ISO.replace(dram_gbps=0.001, op_overhead_cycles=50.0)  # 0.01 B/cycle
    c = cost_layer(conv(8, 8, 4, 1), slow)
    assert c.bound == "memory"
    assert c.memory_cycles == pytest.approx(384 / 0.01)
    # double buffering hides compute under memory except one fold; plus the fixed overhead
    assert c.cycles == pytest.approx(c.memory_cycles + 22 + 50)
    nodb = cost_layer(conv(8, 8, 4, 1), slow.replace(double_buffer=False))
    assert nodb.cycles == pytest.approx(nodb.compute_cycles + nodb.memory_cycles + 50)
    assert nodb.cycles > c.cycles


def test_low_rank_is_two_gemms() -> None:
    full = conv(16, 16, 8, 3)
    lr = full.replace(rank=4)
    g = OpGraph.from_layer(lr)
    assert [(o.k, o.n) for o in g.ops] == [(144, 4), (4, 16)]
    c = cost_layer(lr, WS)
    assert c.macs == lr.macs == sum(o.macs for o in g.ops)
    assert c.cycles == pytest.approx(sum(x.cycles for x in cost_graph(g, WS).ops()))
    lin = LayerSpec("linear", (2, 64), out_channels=32, rank=8, bias=True)
    assert [(o.m, o.k, o.n) for o in OpGraph.from_layer(lin).ops] == [(2, 64, 8), (2, 8, 32)]


def test_vector_host_and_view_ops() -> None:
    acc = AcceleratorSpec(vector_ops_per_cycle=8.0, op_overhead_cycles=0.0)
    pool = cost_layer(LayerSpec("pooling", (1, 8, 8, 8), (1, 8, 4, 4), kernel=2, stride=2, variant="max"), acc)
    assert pool.kind == "pool" and pool.compute_cycles == 8 * 16 * 4 / 8
    # on chip (512 B in, 128 B out fit): the pool touches no DRAM and pays no DRAM latency
    assert pool.cycles == pool.compute_cycles and pool.dram_bytes == 0
    # ReLU and batch norm run in the producing array op's output pipeline: no op of their own, one
    # pipeline stage (1 cycle of latency); an add also reads its residual, here on chip
    relu = cost_layer(LayerSpec("activation", (1, 8, 8, 8), variant="relu"), acc)
    bn = cost_layer(LayerSpec("batchnorm", (1, 8, 8, 8)), acc)
    add = cost_layer(LayerSpec("add", (1, 8, 8, 8)), acc)
    assert relu.kind == bn.kind == add.kind == "epilogue"
    assert relu.cycles == bn.cycles == add.cycles == 1 and add.dram_bytes == 0
    # off chip (isolated-layer mode) the add reads its 512 B residual: 512 / (12.8e3 / 700) B per cycle
    add_iso = cost_layer(LayerSpec("add", (1, 8, 8, 8)), acc.replace(keep_activations_on_chip=False))
    assert add_iso.cycles == pytest.approx(1 + 512 * 700 / 12.8e3) and add_iso.dram_bytes == 512
    # without a fused epilogue they are vector-unit ops again
    unfused = acc.replace(fused_epilogue=False)
    relu_v = cost_layer(LayerSpec("activation", (1, 8, 8, 8), variant="relu"), unfused)
    gelu = cost_layer(LayerSpec("activation", (1, 8, 8, 8), variant="gelu"), acc)
    assert relu_v.kind == "eltwise" and relu_v.cycles == 512 / 8 and gelu.kind == "host"
    assert gelu.cycles > relu_v.cycles + acc.host_overhead_cycles * 0.99
    view = cost_graph(OpGraph("v", (AccelOp("r", "view", in_elems=10, out_elems=10),)), acc).total()
    assert view.cycles == 0 and view.bound == "none"


def test_energy_optional_and_additive() -> None:
    spec = conv(16, 32, 8, 3)
    assert math.isnan(cost_layer(spec, AcceleratorSpec()).energy_pj)
    acc = AcceleratorSpec(e_mac_pj=0.2, e_sram_pj_per_byte=1.0, e_dram_pj_per_byte=100.0)
    e8 = cost_layer(spec, acc).energy_pj
    e4 = cost_layer(spec.replace(w_bits=4, a_bits=4), acc).energy_pj
    assert 0 < e4 < e8
    assert cost_layer(spec, acc).to_extra()["energy_pj"] == pytest.approx(e8)
    assert cost_layer(spec, AcceleratorSpec()).to_extra()["energy_pj"] is None


def test_cost_layers_matches_cost_layer_and_graph_sums() -> None:
    specs = [conv(8, 16, 8, 3), conv(16, 16, 8, 3, groups=16), LayerSpec("linear", (4, 32), out_channels=10),
             conv(16, 8, 8, 1, rank=2), LayerSpec("add", (1, 8, 8, 8))]
    acc = SHIPPED[0]
    batch = cost_layers(specs, acc)
    for s, c in zip(specs, batch):
        assert c == cost_layer(s, acc)
    gc = cost_graph(OpGraph.from_layers(specs), acc)
    assert gc.latency_ms == pytest.approx(sum(c.latency_ms for c in batch))
    assert sum(gc.per_op_ms().values()) == pytest.approx(gc.latency_ms)


def test_graph_json_round_trip_and_validation() -> None:
    g = OpGraph.from_layers([conv(8, 16, 8, 3, bias=True), LayerSpec("pooling", (1, 16, 8, 8), variant="adaptive_avg",
                                                                      out_shape=(1, 16, 1, 1))])
    back = OpGraph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back.ops == g.ops
    with pytest.raises(WorkloadError, match="kind 'fft'"):
        AccelOp("x", "fft")
    with pytest.raises(WorkloadError, match="cin_per_group"):
        AccelOp("x", "conv2d")
    with pytest.raises(WorkloadError, match="no ops"):
        OpGraph("empty", ())


def test_spec_validation_messages() -> None:
    with pytest.raises(ConfigError, match="unknown key.*'colz'"):
        AcceleratorSpec.from_dict({"colz": 4})
    with pytest.raises(ConfigError, match="dataflow='diagonal'"):
        AcceleratorSpec(dataflow="diagonal")
    with pytest.raises(ConfigError, match="rows=0"):
        AcceleratorSpec(rows=0)
    with pytest.raises(ConfigError, match="dram_gbps=-1"):
        AcceleratorSpec(dram_gbps=-1)
    with pytest.raises(ConfigError, match="e_mac_pj"):
        AcceleratorSpec(e_mac_pj=-0.1)
    with pytest.raises(ConfigError, match="pack_low_bits"):
        AcceleratorSpec(pack_low_bits="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="spatial_unroll='k_x' is unknown; allowed: k_ckk, k_c"):
        AcceleratorSpec(spatial_unroll="k_x")
    with pytest.raises(ConfigError, match="spatial_unroll='k_c' needs dataflow='weight_stationary'"):
        AcceleratorSpec(spatial_unroll="k_c", dataflow="output_stationary")
    with pytest.raises(ConfigError, match="fill_drain='per_layer' is unknown; allowed: per_fold, per_op"):
        AcceleratorSpec(fill_drain="per_layer")
    with pytest.raises(ConfigError, match="fill_drain='per_op' needs a systolic dataflow"):
        AcceleratorSpec(fill_drain="per_op", dataflow="row_stationary")
    with pytest.raises(ConfigError, match="weight_load='broadcast' is unknown; allowed: shift, parallel"):
        AcceleratorSpec(weight_load="broadcast")
    with pytest.raises(ConfigError, match="weight_load='parallel' needs dataflow='weight_stationary'"):
        AcceleratorSpec(weight_load="parallel", dataflow="row_stationary")
    with pytest.raises(ConfigError, match="epilogue_param_bytes=-1"):
        AcceleratorSpec(epilogue_param_bytes=-1)


@pytest.mark.parametrize("profile", ["asic-tpu32", "asic-eyeriss"])
def test_shipped_specs_load(profile: str) -> None:
    acc = AcceleratorSpec.from_dict(load_profile(profile).spec)
    assert acc.models_energy
    assert (acc.rows, acc.cols) in ((32, 32), (12, 14))


# --------------------------------------------------------------------------- properties

accels = st.builds(
    AcceleratorSpec, rows=st.integers(2, 40), cols=st.integers(2, 40), dataflow=st.sampled_from(
        ["weight_stationary", "output_stationary", "row_stationary"]), pe_bits=st.sampled_from([8, 16]),
    pack_low_bits=st.booleans(), max_pack=st.integers(1, 4), weight_buffer_kib=st.floats(0.5, 512),
    input_buffer_kib=st.floats(0.5, 512), output_buffer_kib=st.floats(0.5, 256), double_buffer=st.booleans(),
    dram_gbps=st.floats(0.1, 100), dram_latency_ns=st.floats(0, 500), clock_mhz=st.floats(50, 2000),
    op_overhead_cycles=st.floats(0, 2000)) | st.builds(
    # the mapping modes of issue 14's ZigZag-like spec (weight-stationary: k_c; systolic: fill/drain per op)
    AcceleratorSpec, rows=st.integers(2, 40), cols=st.integers(2, 40), dataflow=st.just("weight_stationary"),
    spatial_unroll=st.sampled_from(SPATIAL_UNROLLS), fill_drain=st.sampled_from(FILL_DRAIN),
    weight_load=st.sampled_from(WEIGHT_LOADS), epilogue_param_bytes=st.floats(0, 16), pack_low_bits=st.booleans(), max_pack=st.integers(1, 4),
    weight_buffer_kib=st.floats(0.5, 512), input_buffer_kib=st.floats(0.5, 512),
    output_buffer_kib=st.floats(0.5, 256), double_buffer=st.booleans(), keep_activations_on_chip=st.booleans(),
    dram_gbps=st.floats(0.1, 100), dram_latency_ns=st.floats(0, 500), clock_mhz=st.floats(50, 2000),
    op_overhead_cycles=st.floats(0, 2000)) | st.builds(
    AcceleratorSpec, rows=st.integers(2, 40), cols=st.integers(2, 40), dataflow=st.just("output_stationary"),
    fill_drain=st.just("per_op"), double_buffer=st.booleans(), dram_gbps=st.floats(0.1, 100)) | st.sampled_from(SHIPPED)


@st.composite
def prunable(draw: st.DrawFn) -> tuple[LayerSpec, LayerSpec]:
    """A conv/depthwise/linear/low-rank layer and a copy with fewer channels."""
    kind = draw(st.sampled_from(["conv", "depthwise", "linear", "lowrank"]))
    bits = {"w_bits": draw(st.sampled_from([2, 4, 8, 16])), "a_bits": draw(st.sampled_from([4, 8, 16]))}
    cin, cout = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    cin2, cout2 = draw(st.integers(1, cin)), draw(st.integers(1, cout))
    if kind == "linear":
        rows = draw(st.integers(1, 64))
        return (LayerSpec("linear", (rows, cin), out_channels=cout, **bits),
                LayerSpec("linear", (rows, cin2), out_channels=cout2, **bits))
    hw, k = draw(st.integers(1, 40)), draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    geo = {"k": k, "padding": k // 2, "stride": stride, **bits}
    if kind == "depthwise":
        return conv(cin, cin, hw, groups=cin, **geo), conv(cin2, cin2, hw, groups=cin2, **geo)  # type: ignore[arg-type]
    if kind == "lowrank":
        r = draw(st.integers(1, 64))
        return conv(cin, cout, hw, rank=r, **geo), conv(cin2, cout2, hw, rank=draw(st.integers(1, r)), **geo)  # type: ignore[arg-type]
    return conv(cin, cout, hw, **geo), conv(cin2, cout2, hw, **geo)  # type: ignore[arg-type]


PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(pair=prunable(), acc=accels)
def test_pruning_channels_never_raises_latency(pair: tuple[LayerSpec, LayerSpec], acc: AcceleratorSpec) -> None:
    full, pruned = pair
    a, b = cost_layer(full, acc), cost_layer(pruned, acc)
    assert b.cycles <= a.cycles * (1 + 1e-12)
    assert 0 <= a.utilisation <= 1 and 0 <= b.utilisation <= 1


@PROP
@given(pair=prunable(), acc=accels, factor=st.floats(1.0, 100.0))
def test_more_bandwidth_never_raises_latency(pair: tuple[LayerSpec, LayerSpec], acc: AcceleratorSpec,
                                             factor: float) -> None:
    spec = pair[0]
    assert (cost_layer(spec, acc.replace(dram_gbps=acc.dram_gbps * factor)).latency_ms
            <= cost_layer(spec, acc).latency_ms * (1 + 1e-12))


@PROP
@given(pair=prunable(), acc=accels, factor=st.floats(1.0, 8.0))
def test_latency_scales_as_one_over_clock(pair: tuple[LayerSpec, LayerSpec], acc: AcceleratorSpec,
                                          factor: float) -> None:
    spec = pair[0]
    base = cost_layer(spec, acc).latency_ms
    # the whole machine (array and memory system) clocked `factor` times faster: exactly 1/clock
    fast = acc.replace(clock_mhz=acc.clock_mhz * factor, dram_gbps=acc.dram_gbps * factor,
                       dram_latency_ns=acc.dram_latency_ns / factor)
    assert cost_layer(spec, fast).latency_ms == pytest.approx(base / factor, rel=1e-9)
    # only the array clock: never slower, never better than 1/clock
    core = cost_layer(spec, acc.replace(clock_mhz=acc.clock_mhz * factor)).latency_ms
    assert base / factor * (1 - 1e-9) <= core <= base * (1 + 1e-12)


@st.composite
def wide_gemm(draw: st.DrawFn, cols: int) -> LayerSpec:
    """A conv or linear whose output channels are a multiple of 2*cols (so packing halves the folds)."""
    cout = 2 * cols * draw(st.integers(1, 6))
    cin = draw(st.integers(1, 256))
    if draw(st.booleans()):
        return LayerSpec("linear", (draw(st.integers(1, 128)), cin), out_channels=cout)
    hw = draw(st.integers(2, 32))
    return conv(cin, cout, hw, draw(st.sampled_from([1, 3])), padding=1)


TPU = SHIPPED[0]


@PROP
@given(spec=wide_gemm(TPU.cols), dataflow=st.sampled_from(["weight_stationary", "output_stationary"]))
def test_four_bit_weights_with_packing(spec: LayerSpec, dataflow: str) -> None:
    acc = TPU.replace(dataflow=dataflow)
    assert acc.pack_low_bits
    c8, c4 = cost_layer(spec.replace(w_bits=8, a_bits=8), acc), cost_layer(spec.replace(w_bits=4, a_bits=8), acc)
    assert 1.6 <= c8.compute_cycles / c4.compute_cycles <= 2.0
    assert c4.weight_bytes * 2 == c8.weight_bytes
    assert c4.dram_bytes < c8.dram_bytes


@PROP
@given(spec=wide_gemm(TPU.cols), acc=accels)
def test_four_bit_weights_without_packing(spec: LayerSpec, acc: AcceleratorSpec) -> None:
    acc = acc.replace(pack_low_bits=False)
    c8, c4 = cost_layer(spec.replace(w_bits=8, a_bits=8), acc), cost_layer(spec.replace(w_bits=4, a_bits=8), acc)
    assert c4.compute_cycles == c8.compute_cycles
    assert c4.weight_bytes * 2 == c8.weight_bytes
    assert c4.dram_bytes < c8.dram_bytes
    assert c4.cycles <= c8.cycles * (1 + 1e-12)


def test_costing_is_vectorised_consistently() -> None:
    rng = np.random.default_rng(0)
    specs = [conv(int(rng.integers(1, 64)), int(rng.integers(1, 64)), int(rng.integers(2, 16)), 3, padding=1)
             for _ in range(50)]
    acc = dataclasses.replace(SHIPPED[1])
    batch = cost_layers(specs, acc)
    assert [c.cycles for c in batch] == [cost_layer(s, acc).cycles for s in specs]
