"""The ``asic`` backend through the Device contract: profiles, layer/model requests, noise, errors."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import require_tvm

from hwloop.devices import Device, MeasureRequest, TimingConfig, create_device, load_profile
from hwloop.devices.asic import AcceleratorSpec, AsicDevice, cost_layer
from hwloop.errors import ConfigError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

CONV = LayerSpec("conv2d", (1, 32, 16, 16), out_channels=64, kernel=3, padding=1, name="c")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_profiles_create_distinct_devices() -> None:
    tpu, eye = create_device("asic-tpu32"), create_device("asic-eyeriss")
    assert isinstance(tpu, AsicDevice) and isinstance(tpu, Device)
    assert tpu.accel.rows == 32 and eye.accel.dataflow == "row_stationary"
    assert tpu.fingerprint().key != eye.fingerprint().key
    # identity is the spec's values: the same values under another name are the same hardware
    same = AsicDevice("other-name", spec=load_profile("asic-tpu32").spec)
    assert same.fingerprint().key == tpu.fingerprint().key
    faster = AsicDevice("x", spec={**load_profile("asic-tpu32").spec, "clock_mhz": 800.0})
    assert faster.fingerprint().key != tpu.fingerprint().key
    noisy = AsicDevice("x", spec=load_profile("asic-tpu32").spec, noise={"jitter_sigma": 0.05})
    assert noisy.fingerprint().key != tpu.fingerprint().key
    json.dumps(tpu.fingerprint().to_dict())


def test_layer_request_is_exact_and_honours_bits() -> None:
    dev = create_device("asic-tpu32")
    assert isinstance(dev, AsicDevice)
    reqs = [MeasureRequest.for_layer(CONV), MeasureRequest.for_layer(CONV.replace(w_bits=4, a_bits=4))]
    r8, r4 = dev.measure(reqs, TimingConfig(repeats=4))
    assert r8.ok and r8.timing.mode == "asic" and r8.request_key == CONV.key
    assert r8.samples_ms == (r8.latency_ms,) * 4 and r8.cv == 0 and not r8.unstable
    exact = cost_layer(CONV, dev.accel)
    assert r8.latency_ms == pytest.approx(exact.latency_ms)
    assert r8.extra["cycles"] == exact.cycles and r8.extra["bound"] in ("compute", "memory")
    assert {"dram_bytes", "utilisation", "energy_pj"} <= set(r8.extra)
    assert r4.latency_ms < r8.latency_ms and r4.extra["dram_bytes"] < r8.extra["dram_bytes"]
    json.dumps(r8.to_dict())


def test_noise_is_seeded_and_centred() -> None:
    spec = load_profile("asic-tpu32").spec
    noise = {"jitter_sigma": 0.03, "contention_prob": 0.2, "contention_frac": 0.5}
    a = AsicDevice("n", spec=spec, noise=noise, seed=1)
    b = AsicDevice("n", spec=spec, noise=noise, seed=1)
    c = AsicDevice("n", spec=spec, noise=noise, seed=2)
    t = TimingConfig(repeats=200, max_cv=1.0)
    ra, rb, rc = (d.measure([MeasureRequest.for_layer(CONV)], t)[0] for d in (a, b, c))
    assert ra.samples_ms == rb.samples_ms != rc.samples_ms
    exact = cost_layer(CONV, a.accel).latency_ms
    assert ra.extra["latency_exact_ms"] == pytest.approx(exact)
    assert len(set(ra.samples_ms)) == 200 and 0.01 < ra.cv < 0.2
    assert abs(ra.latency_ms / exact - 1) < 0.05
    # contention only slows down: the slowest samples are further above than the fastest below
    assert ra.max_ms / exact - 1 > 1 - ra.min_ms / exact


@pytest.mark.parametrize("bad,match", [
    ({"spec": {"rows": 0}}, "rows=0"),
    ({"spec": {"bogus": 1}}, "unknown key"),
    ({"noise": {"jitter": 0.1}}, "noise has unknown key"),
    ({"noise": {"contention_prob": 2.0}}, "contention_prob"),
    ({"default_bits": {"w": 0, "a": 8}}, "default_bits.w=0"),
    ({"default_bits": {"weights": 4}}, "default_bits"),
    ({"seed": "x"}, "seed='x'"),
])
def test_bad_options_are_config_errors(bad: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        AsicDevice("bad", **bad)


def test_bad_profile_spec_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "asic-bad.toml"
    p.write_text('name = "asic-bad"\nbackend = "asic"\n[spec]\nrows = 4\ndataflow = "diagonal"\n')
    with pytest.raises(ConfigError, match="dataflow='diagonal'"):
        create_device(load_profile(str(p)))


@require_tvm
def test_model_requests_lower_once_and_sum_per_layer() -> None:
    dev = create_device("asic-eyeriss")
    assert isinstance(dev, AsicDevice)
    ref = ModelRef("resnet20", {"widths": [8, 16, 32]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole, per = dev.measure([MeasureRequest.for_model(ref), MeasureRequest.for_model(ref, per_layer=True)],
                                 TimingConfig(repeats=2))
    assert whole.ok and per.ok, (whole.error, per.error)
    assert whole.latency_ms == per.latency_ms
    assert sum(per.per_layer_ms.values()) == pytest.approx(per.latency_ms)
    assert "layers.0.conv1" in per.per_layer_ms and "fc" in per.per_layer_ms
    assert whole.extra["host_ops"] == 0
    # lowered once per architecture: the cached graph object is reused
    g = dev.lower(ref)
    assert dev.lower(ref) is g and len(dev._graphs) == 1
    # the per-layer path agrees with the graph (a model = its LayerSpecs, costed one by one)
    conv1 = next(op for op in g.ops if op.name == "layers.0.conv1")
    # batch norm and ReLU run in the conv's epilogue: the fused op costs its conv LayerSpec (with or
    # without a float bias: every array op reads its per-channel bias + scale) plus the BN and ReLU specs
    spec = LayerSpec("conv2d", (1, 8, 32, 32), out_channels=8, kernel=3, padding=1, bias=True, w_bits=8, a_bits=8)
    bn = LayerSpec("batchnorm", (1, 8, 32, 32), a_bits=8)
    relu = LayerSpec("activation", (1, 8, 32, 32), variant="relu", a_bits=8)
    assert cost_layer(spec, dev.accel).cycles == cost_layer(spec.replace(bias=False), dev.accel).cycles
    assert sum(cost_layer(s, dev.accel).cycles for s in (spec, bn, relu)) == pytest.approx(
        per.per_layer_ms["layers.0.conv1"] * dev.accel.clock_mhz * 1e3)
    assert conv1.macs == spec.macs
    # default bits: a 4-bit device moves fewer bytes
    dev4 = AsicDevice("e4", spec=load_profile("asic-eyeriss").spec, default_bits={"w": 4, "a": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r4 = dev4.measure([MeasureRequest.for_model(ref)])[0]
    assert r4.extra["dram_bytes"] < whole.extra["dram_bytes"] and r4.latency_ms < whole.latency_ms


@require_tvm
def test_failure_is_data_not_an_exception() -> None:
    dev = AsicDevice("x", spec={"rows": 8, "cols": 8})
    good = MeasureRequest.for_layer(CONV)
    bad = MeasureRequest.for_model(ModelRef("torch.nn:Identity", input_shape=(3, 4, 4), allow_import=True))
    r_good, r_bad = dev.measure([good, bad])
    assert r_good.ok and not r_bad.ok
    assert "no ops" in (r_bad.error or "") and r_bad.timing.mode == "asic"
    assert math.isnan(r_bad.latency_ms)


def test_accelerator_spec_round_trips_through_profile_dict() -> None:
    acc = AcceleratorSpec.from_dict(load_profile("asic-eyeriss").spec)
    assert AcceleratorSpec.from_dict(acc.to_dict()) == acc
