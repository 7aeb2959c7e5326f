"""The ``tvm`` device: real TVM builds on ``llvm``, timed with ``time_evaluator``; MetaSchedule tuning reuse.

Tuning budgets are tiny (8 trials, population 16, one small conv) because the machine is shared.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import require_tvm

from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.errors import ConfigError, DeviceUnavailableError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

pytestmark = [require_tvm, pytest.mark.tvm]

CONV = LayerSpec("conv2d", (1, 8, 12, 12), out_channels=16, kernel=3, padding=1, bias=True)
FAST = TimingConfig(warmup=1, repeats=5, min_repeat_ms=1.0, max_retries=0, mode="eager", timeout_s=60)


class FFTNet(torch.nn.Module):
    """A model whose op (``aten._fft_r2c``) TVM's torch front end does not import."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs()


def fft_net() -> torch.nn.Module:
    return FFTNet()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _dev(**kw):
    from hwloop.devices.tvm import TvmDevice

    return TvmDevice(name="tvm-test", **kw)


def test_conv_layer_builds_times_and_computes_what_torch_computes() -> None:
    dev = _dev()
    req = MeasureRequest.for_layer(CONV)
    (res,) = dev.measure([req], FAST)
    assert res.ok, res.error
    assert res.timing.mode == "tvm" and res.timing.repeats == 5
    assert len(res.samples_ms) == 5 and res.latency_ms > 0 and res.min_ms <= res.latency_ms <= res.max_ms
    assert res.extra["tuned"] is False and res.extra["tune_trials"] == 0
    assert res.extra["tvm"].startswith("0.") and json.loads(res.extra["target"])["kind"] == "llvm"
    # number was picked so one sample lasts >= min_repeat_ms
    assert res.extra["number"] * res.min_ms >= 0.5 * FAST.min_repeat_ms
    # the timed executable computes the layer: compare with torch on the same weights/inputs
    c = dev.compiled(req)
    with torch.no_grad():
        want = c.module(*c.inputs).numpy()
    got = c.vm["main"](*c.args)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # cached per workload key in-process
    assert dev.compiled(req) is c
    dev.close()


def test_resnet20_model_and_model_layers_on_llvm() -> None:
    dev = _dev()
    ref = ModelRef("resnet20", {"widths": [8, 16, 32]})
    reqs = [MeasureRequest.for_model(ref), MeasureRequest.for_model(ref, per_layer=True)]
    t = TimingConfig(warmup=1, repeats=3, number=1, max_retries=0, mode="tvm", timeout_s=120)
    res = dev.measure(reqs, t)
    assert [r.ok for r in res] == [True, True], [r.error for r in res]
    assert res[0].latency_ms > 0 and res[0].extra["number"] == 1
    assert res[1].per_layer_ms == {} and "not available" in res[1].extra["per_layer"]
    c = dev.compiled(reqs[0])
    with torch.no_grad():
        want = c.module(*c.inputs).numpy()
    np.testing.assert_allclose(c.vm["main"](*c.args)[0].numpy(), want, rtol=1e-3, atol=1e-3)


def test_unsupported_op_is_a_failure_result_not_an_exception() -> None:
    sys.modules.setdefault("test_tvm_device", sys.modules[__name__])
    bad = MeasureRequest.for_model(ModelRef("test_tvm_device:fft_net", input_shape=(16,), allow_import=True))
    good = MeasureRequest.for_layer(CONV)
    res = _dev().measure([bad, good], FAST)
    assert not res[0].ok and "build failed" in res[0].error and "_fft_r2c" in res[0].error
    assert res[0].timing.mode == "tvm" and res[0].extra["tuned"] is False
    assert res[1].ok


def test_fingerprint_identity_separates_tuned_from_untuned(tmp_path) -> None:
    untuned, tuned = _dev(), _dev(tune_trials=8, work_dir=tmp_path)
    a, b = untuned.fingerprint(), tuned.fingerprint()
    assert a.identity["tune_trials"] == 0 and b.identity["tune_trials"] == 8
    assert a.identity["tvm"] == b.identity["tvm"] and "llvm" in a.identity["target"]
    assert a.key != b.key
    assert _dev(threads=2).fingerprint().key != a.key


@pytest.mark.slow
def test_tuning_twice_reuses_the_database_on_disk(tmp_path) -> None:
    req = MeasureRequest.for_layer(CONV)
    first = _dev(tune_trials=8, tune_population=16, work_dir=tmp_path)
    (r1,) = first.measure([req], FAST)
    first.close()
    assert r1.ok, r1.error
    s1 = r1.extra["tune"]
    assert r1.extra["tuned"] is True and r1.extra["tune_trials"] == 8
    assert s1["tuned_tasks"] >= 1 and s1["new_trials"] >= 1 and not s1["reused"]
    records = (tmp_path / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == s1["db_records"] >= s1["new_trials"]
    # a new device (as in a new process: nothing cached in memory) finds every function tuned
    second = _dev(tune_trials=8, tune_population=16, work_dir=tmp_path)
    (r2,) = second.measure([req], FAST)
    s2 = r2.extra["tune"]
    assert r2.ok and s2["reused"] and s2["new_trials"] == 0 and s2["tuned_tasks"] == 0
    assert s2["db_records"] == s1["db_records"]
    assert (tmp_path / "database_tuning_record.json").read_text().splitlines() == records
    # the tuned build still computes the layer
    from hwloop.devices._tvm_import import torch_to_relax

    c = second.compiled(req)
    with torch.no_grad():
        np.testing.assert_allclose(c.vm["main"](*c.args)[0].numpy(), c.module(*c.inputs).numpy(), rtol=1e-4,
                                   atol=1e-4)
    # a larger budget tops the same function up instead of starting over
    bigger = _dev(tune_trials=10, tune_population=16, work_dir=tmp_path)
    st = bigger.tune(torch_to_relax(c.module, c.inputs))
    assert st.tuned_tasks == s1["tuned_tasks"] and 1 <= st.new_trials <= 2 * s1["tuned_tasks"]
    bigger.close()
    second.close()


def test_profile_creates_a_tvm_device() -> None:
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.devices.tvm import TvmDevice

    prof = load_profile("tvm-llvm")
    dev = create_device(prof)
    assert isinstance(dev, TvmDevice) and dev.tune_trials == prof.options["tune_trials"] > 0
    ident = dev.fingerprint().identity
    assert json.loads(ident["target"])["mcpu"] not in ("", "native")  # resolved to the host CPU's name
    assert prof.timing.mode == "tvm"


@pytest.mark.parametrize("kw, match", [
    ({"tune_trials": -1}, "tune_trials=-1"),
    ({"threads": 0}, "threads=0"),
    ({"opt_level": 5}, "opt_level=5"),
    ({"target": 3}, "target 3"),
])
def test_bad_options_are_config_errors(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        _dev(**kw)


def test_bad_target_mode_and_missing_gpu() -> None:
    with pytest.raises(ConfigError, match="llvm -mcpu=x"):
        _dev(target="llvm -mcpu=x").fingerprint()
    with pytest.raises(ConfigError, match="cuda_graph"):
        _dev().measure([MeasureRequest.for_layer(CONV)], TimingConfig(mode="cuda_graph"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="GPU"):
            _dev(target="cuda").measure([MeasureRequest.for_layer(CONV)], FAST)


def test_missing_tvm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwloop.devices.tvm import TvmDevice

    monkeypatch.setitem(sys.modules, "tvm", None)  # what an environment without apache-tvm looks like
    with pytest.raises(DeviceUnavailableError, match=r"pip install 'hwloop\[tvm\]'"):
        TvmDevice()
