"""The shared layer cost table (hwloop.search.costtable): sources, caching, dedupe, calibration, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hwloop.compress import CompressionPlan, LowRank, compress_
from hwloop.devices import MeasureRequest, create_device
from hwloop.errors import ConfigError, HwloopError
from hwloop.models import ModelRef
from hwloop.search.costtable import (
    CostTableError,
    build_cost_table,
    conv_levels,
    model_layers,
    shipped_predictor,
    staircase_step,
    svd_specs,
    tucker2_specs,
)
from hwloop.search.report import measure_compressed
from hwloop.store import MeasurementStore
from hwloop.workload import LayerSpec, WorkloadWarning, extract_layers

def _quick_cpu():
    """local-cpu with a short timing (the tests check bookkeeping, not the CPU's figures)."""
    from hwloop.devices.base import TimingConfig

    dev = create_device("local-cpu")
    dev.timing = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_cv=1.0, max_retries=0)
    return dev


CONV = LayerSpec("conv2d", (1, 32, 16, 16), out_channels=32, kernel=3, padding=1, name="conv")
FC = LayerSpec("linear", (1, 64), out_channels=10, name="fc")


def _specs(name: str) -> list[LayerSpec]:
    ref = ModelRef(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        return [s for s in extract_layers(ref.build().eval(), ref.example_input()) if s.op != "other"]


def test_measure_on_asic_api_and_store_cache(tmp_path) -> None:
    db = tmp_path / "m.db"
    levels = {"conv": conv_levels(CONV, out_channels=[8, 16], w_bits=[4], ranks=[4], tucker=[(8, 8)]),
              "fc": conv_levels(FC, out_channels=[5])}
    t = build_cost_table(levels, device="asic-tpu32", source="measure", store=str(db), progress=False)
    assert (t.device, t.source, t.unit, t.calibration) == ("asic-tpu32", "measure", "ms", "sum")
    assert t.layers() == ["conv", "fc"]
    assert t.levels("conv") == [("dense",), ("ch", 8), ("ch", 16), ("bits", 4), ("rank", 4), ("tucker2", 8, 8)]
    # every level's cost is the device's own number for its specs, summed
    dev = create_device("asic-tpu32")
    for layer in t.layers():
        for lv in t.levels(layer):
            want = sum(r.latency_ms for r in dev.measure([MeasureRequest.for_layer(s) for s in levels[layer][lv]]))
            assert t.cost(layer, lv) == pytest.approx(want, rel=1e-12)
    assert t.cost("conv", ("ch", 8)) < t.cost("conv", ("dense",))
    df = t.frame()
    assert list(df.columns) == ["layer", "level", "cost", "n_specs", "source", "unit", "note"]
    assert len(df) == 8 and df.loc[df.level == ("tucker2", 8, 8), "n_specs"].item() == 3
    assert "sparsity not modelled" in df.note[0] and "bits" not in df.note[0]
    # cached: a second table measures nothing, reads the same numbers; nothing stored is lost
    with MeasurementStore(str(db)) as st:
        n = st.count()
    assert n == 11  # distinct specs: conv levels with 1+1+1+1+2+3 specs, fc levels with 1+1
    again = build_cost_table(levels, device="asic-tpu32", source="measure", store=str(db), progress=False)
    assert again.detail.startswith("measured 0 of 11")
    assert again.frame().cost.tolist() == df.cost.tolist()
    more = dict(levels, fc=conv_levels(FC, out_channels=[5, 7]))
    third = build_cost_table(more, device="asic-tpu32", source="measure", store=str(db), progress=False)
    assert third.detail.startswith("measured 1 of 12")
    with MeasurementStore(str(db)) as st:
        assert st.count() == 12


def test_identical_specs_are_measured_once() -> None:
    st = MeasurementStore("sqlite://")
    same = {f"b{i}": {("ch", c): [CONV.replace(out_channels=c, name=f"b{i}")] for c in (8, 16)} for i in range(5)}
    t = build_cost_table(same, device="asic-tpu32", source="measure", store=st, progress=False)
    assert st.count() == 2 and t.detail.startswith("measured 2 of 2")
    assert len({t.cost(layer, ("ch", 8)) for layer in t.layers()}) == 1


def test_asic_model_cost_equals_the_devices_whole_model_latency() -> None:
    """Sum of layer costs + passive ops vs the device's whole-model request: the gap is float noise."""
    dev = create_device("asic-tpu32")
    for name in ("resnet20", "small_cnn"):
        specs = _specs(name)
        layers = [s for s in specs if s.op in ("conv2d", "linear")]
        passive = [s for s in specs if s.op not in ("conv2d", "linear")]
        t = build_cost_table({s.name: {("dense",): [s]} for s in layers}, device=dev, source="measure",
                             store="sqlite://", progress=False, passive=passive)
        full = {layer: ("dense",) for layer in t.layers()}
        whole = dev.measure([MeasureRequest.for_model(ModelRef(name))])[0].latency_ms
        assert t.model_cost(full) == pytest.approx(whole, rel=1e-9)
        ref = ModelRef(name)
        assert t.model_cost(full) == pytest.approx(
            measure_compressed(dev, ref.build().eval(), None, example=ref.example_input())["latency_ms"], rel=1e-9)
        assert t.model_cost(full, base=1.0) == pytest.approx(whole + 1.0, rel=1e-9)
        assert t.passive_cost() < 0.1 * whole  # fused epilogue: batch-norm, ReLU and adds cost (almost) nothing


def test_staircase_step_on_the_asic_and_synthetic() -> None:
    wide = LayerSpec("conv2d", (1, 64, 8, 8), out_channels=64, kernel=3, padding=1, name="w")
    t = build_cost_table({"w": conv_levels(wide, out_channels=range(1, 129))}, device="asic-tpu32",
                         source="measure", store="sqlite://", progress=False)
    sizes = list(range(1, 129))
    costs = [t.cost("w", ("ch", c)) for c in sizes]
    assert staircase_step(sizes, costs) == 32  # the 32 columns of the array
    assert costs[32] - costs[31] > 10 * (costs[31] - costs[30])  # a real jump after 32, small growth before
    assert staircase_step(sizes[::2], costs[::2]) == 32  # odd sizes: jumps after 31, 63, 95
    rng = np.random.default_rng(0)
    stair = [float((c + 15) // 16) + rng.normal(0, 0.01) for c in range(1, 100)]
    assert staircase_step(range(1, 100), stair) == 16
    assert staircase_step(range(1, 100), [float(c) for c in range(1, 100)]) == 1  # smooth: no step
    assert staircase_step([4, 2, 1, 3], [1.0, 1.0, 1.0, 1.0]) == 1
    with pytest.raises(CostTableError, match="3 sizes but 2 costs"):
        staircase_step([1, 2, 3], [1.0, 2.0])


def test_low_rank_specs_are_what_the_plan_runs() -> None:
    """svd_specs / tucker2_specs equal the layers extracted from the real LowRank surgery."""
    ref = ModelRef("small_cnn")
    base = {r.name: r for r in _specs("small_cnn")}
    conv = base["features.3"]
    for form, ranks, mine in (("svd", (4,), svd_specs(conv, 4)), ("tucker2", (3, 5), tucker2_specs(conv, 3, 5))):
        plan = CompressionPlan(base=ref.to_dict(), actions=[LowRank("features.3", form, ranks)])
        model = compress_(ref.build().eval(), plan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WorkloadWarning)
            got = [s for s in extract_layers(model, ref.example_input()) if s.name.startswith("features.3.")
                   and s.op == "conv2d"]
        assert [s.key for s in got] == [s.key for s in mine], form
        assert [s.name for s in got] == [s.name for s in mine]
    lin = svd_specs(FC, 3)
    assert [(s.in_channels, s.out_channels, s.bias) for s in lin] == [(64, 3, False), (3, 10, False)]
    with pytest.raises(CostTableError, match="tucker2 needs a conv2d"):
        tucker2_specs(FC, 2, 2)
    with pytest.raises(CostTableError, match="rank=0"):
        svd_specs(CONV, 0)


def test_surrogate_is_bit_scaled_macs() -> None:
    t = build_cost_table({"conv": conv_levels(CONV, w_bits=[4], a_bits=8)}, device="local-cpu", source="surrogate")
    assert t.unit == "macs" and t.cost("conv", ("dense",)) == CONV.macs
    assert t.cost("conv", ("bits", 4)) == CONV.macs * 4 * 8 / 32**2


def test_cpu_costs_bits_as_float_and_calibrates(tmp_path) -> None:
    small = LayerSpec("conv2d", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1, name="c")
    t = build_cost_table({"c": conv_levels(small, w_bits=[4], out_channels=[4])}, device=_quick_cpu(),
                         source="measure", store=str(tmp_path / "cpu.db"), progress=False)
    assert t.cost("c", ("bits", 4)) == t.cost("c", ("dense",))  # one float measurement for both
    assert "bits not modelled on the cpu backend" in t.note
    full = {"c": ("dense",)}
    assert t.calibration == "sum" and t.model_cost(full) == t.cost("c", ("dense",))
    scale = t.calibrate(full, 2 * t.cost("c", ("dense",)))
    assert scale == pytest.approx(2.0) and t.calibration == "scale"
    assert t.model_cost({"c": ("ch", 4)}) == pytest.approx(2 * t.cost("c", ("ch", 4)))


def test_predictor_source_uses_shipped_predictors_and_their_aggregation() -> None:
    from hwloop.predict.io import load_predictor

    assert shipped_predictor("asic-tpu32") is not None and shipped_predictor("asic-eyeriss") is None
    specs = _specs("small_cnn")
    layers = [s for s in specs if s.op in ("conv2d", "linear")]
    passive = [s for s in specs if s.op not in ("conv2d", "linear")]
    levels = {s.name: conv_levels(s, out_channels=[max(1, s.out_channels // 2)]) for s in layers}
    full = {s.name: ("dense",) for s in layers}
    # asic: timed op by op, so the predictions are summed
    a = build_cost_table(levels, device="asic-tpu32", source="predictor", passive=passive)
    pa = load_predictor(shipped_predictor("asic-tpu32"))
    assert a.calibration == "sum" and a.unit == "ms"
    assert a.cost(layers[0].name, ("dense",)) == pytest.approx(float(pa.predict([layers[0]])[0]), rel=1e-9)
    assert a.model_cost(full) == pytest.approx(float(np.sum(pa.predict(layers + passive))), rel=1e-9)
    # cpu: the predictor's whole-model aggregation, as its own predict_workload
    c = build_cost_table(levels, device="local-cpu", source="predictor", passive=passive)
    pc = load_predictor(shipped_predictor("local-cpu"))
    assert c.calibration == "aggregator"
    assert c.model_cost(full) == pytest.approx(pc.predict_workload(layers + passive, calibrated=True), rel=1e-6)
    assert c.model_cost(full) != pytest.approx(c.raw_sum(full), rel=1e-3)
    # a given predictor object; auto picks it
    g = build_cost_table(levels, device="asic-tpu32", source="auto", predictor=pa)
    assert g.source == "predictor" and g.cost(layers[0].name, ("dense",)) == a.cost(layers[0].name, ("dense",))
    with pytest.raises(CostTableError, match="no predictor for device 'asic-eyeriss'"):
        build_cost_table(levels, device="asic-eyeriss", source="predictor")


@pytest.mark.parametrize(("call", "err", "match"), [
    (lambda: build_cost_table({"conv": {("d",): [CONV]}}, device="nope"), ConfigError, "device 'nope' is unknown"),
    (lambda: build_cost_table({"conv": {("d",): [CONV]}}, source="guess"), CostTableError,
     "cost source 'guess' is unknown; allowed: auto, measure, predictor, surrogate"),
    (lambda: build_cost_table({}), CostTableError, "at least one layer"),
    (lambda: build_cost_table({"conv": {("d",): ["x"]}}), CostTableError, "str is not a LayerSpec"),
    (lambda: build_cost_table({"conv": {("d",): []}}), CostTableError, "no LayerSpec"),
    (lambda: _table().cost("nope", ("d",)), CostTableError, "layer 'nope' is not in the cost table; layers: 'conv'"),
    (lambda: _table().cost("conv", ("ch", 3)), CostTableError, r"level \('ch', 3\) of layer 'conv'.*levels: \('d',\)"),
    (lambda: _table().model_cost({}), CostTableError, "missing: 'conv'"),
    (lambda: _table().model_cost({"conv": ("d",), "x": 1}), CostTableError, "layer\\(s\\) 'x' are not"),
    (lambda: conv_levels(LayerSpec("activation", (1, 4, 2, 2), variant="relu")), CostTableError, "not 'activation'"),
])
def test_bad_input_is_one_line(call, err, match) -> None:
    with pytest.raises(err, match=match) as e:
        call()
    assert isinstance(e.value, HwloopError) and "\n" not in str(e.value)


def _table():
    return build_cost_table({"conv": {("d",): [CONV]}}, device="asic-tpu32", source="surrogate")


def test_conv_levels_keeps_depthwise() -> None:
    dw = LayerSpec("conv2d", (1, 16, 8, 8), out_channels=16, kernel=3, padding=1, groups=16, name="dw")
    lv = conv_levels(dw, out_channels=[8])
    s = lv[("ch", 8)][0]
    assert (s.in_channels, s.out_channels, s.groups, s.name) == (8, 8, 8, "dw")
    assert torch.Size(s.out_shape) == torch.Size([1, 8, 8, 8])


def test_whole_model_calibration_is_measured_once_and_cached(tmp_path) -> None:
    ref = ModelRef("small_cnn")
    layers, passive = model_layers(ref.build().eval(), ref.example_input())
    levels = {n: conv_levels(s) for n, s in layers.items()}
    full = {n: ("dense",) for n in layers}
    asic = build_cost_table(levels, device="asic-tpu32", source="measure", store=False, passive=passive,
                            progress=False)
    assert asic.calibrate_model(ref, full, store=False) == pytest.approx(1.0, rel=1e-9)  # op by op = whole model
    db = str(tmp_path / "cpu.db")
    cpu = build_cost_table(levels, device=_quick_cpu(), source="measure", store=db, passive=passive,
                           progress=False)
    with MeasurementStore(db) as st:
        n = st.count()
    scale = cpu.calibrate_model(ref, full, store=db)
    with MeasurementStore(db) as st:
        assert st.count() == n + 1  # the whole model, stored beside its layers
        whole = next(iter(st.rows("local-cpu", kind="model")))["latency_ms"]
    assert cpu.model_cost(full) == pytest.approx(whole, rel=1e-9) and scale > 0
    assert cpu.calibrate_model(ref, full, store=db) == scale  # read back, not measured again
    with pytest.raises(CostTableError, match="needs a 'measure' table"):
        build_cost_table(levels, source="surrogate").calibrate_model(ref, full)
