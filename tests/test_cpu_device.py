"""The ``cpu`` backend and the shared timing loop (``hwloop.devices._timing``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import torch

from hwloop.devices import MeasureRequest, TimingConfig, create_device
from hwloop.devices._timing import Deadline, MeasureTimeout, PerfCounterTimer, Timer, pick_number, time_fn
from hwloop.devices.cpu import CpuDevice, error_message, time_model_layers
from hwloop.errors import ConfigError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

FAST = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_cv=10.0, max_retries=0, timeout_s=30)


def conv(c: int = 4, hw: int = 8) -> LayerSpec:
    return LayerSpec("conv2d", (1, c, hw, hw), out_channels=c, kernel=3, padding=1)


# --- factories used through ModelRef("test_cpu_device:...") -------------------------------------
class _Exploding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("division by zero inside forward")


def exploding_forward() -> torch.nn.Module:
    return _Exploding()


def exploding_factory() -> torch.nn.Module:
    raise KeyError("no such weights")


class _Sleepy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return x


def sleepy() -> torch.nn.Module:
    return _Sleepy()


class _ThreadProbe(torch.nn.Module):
    seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ThreadProbe.seen.append(torch.get_num_threads())
        return x * 2


def thread_probe() -> torch.nn.Module:
    return _ThreadProbe()


def ref(factory: str) -> ModelRef:
    return ModelRef(f"{__name__}:{factory}", input_shape=(3, 4, 4))


# --- the device ------------------------------------------------------------------------------------
def test_one_result_per_request_in_order() -> None:
    dev = CpuDevice(threads=1)
    specs = [conv(4), LayerSpec("linear", (2, 16), out_channels=8), conv(8), LayerSpec("activation", (1, 4, 8, 8),
                                                                                        variant="relu")]
    res = dev.measure([MeasureRequest.for_layer(s) for s in specs], FAST)
    assert [r.request_key for r in res] == [s.key for s in specs]
    assert all(r.ok for r in res), [r.error for r in res]
    for r in res:
        assert r.min_ms <= r.latency_ms <= r.max_ms
        assert len(r.samples_ms) == FAST.repeats and r.timing == FAST
        assert r.extra["threads"] == 1 and r.extra["number"] >= 1


@pytest.mark.parametrize("factory, exc", [("exploding_factory", "KeyError"),
                                          ("exploding_forward", "ZeroDivisionError")])
def test_failing_request_is_an_error_result_and_the_next_still_runs(factory: str, exc: str) -> None:
    reqs = [MeasureRequest.for_model(ref(factory)), MeasureRequest.for_layer(conv())]
    res = CpuDevice(threads=1).measure(reqs, FAST)
    assert len(res) == 2
    assert not res[0].ok and res[0].error is not None and res[0].error.startswith(exc)
    assert "\n" not in res[0].error
    assert res[0].request_key == reqs[0].key
    assert res[1].ok and res[1].latency_ms > 0


def test_layer_whose_forward_fails_is_an_error_result() -> None:
    # a spec whose module raises at run time: LayerSpec now rejects a 5x5 max-pool over a 2x2 input,
    # so forge one past validation (as a spec from an older hwloop or a foreign store could be)
    bad = LayerSpec("pooling", (1, 2, 2, 2), kernel=1, variant="max")
    object.__setattr__(bad, "kernel", (5, 5))
    res = CpuDevice(threads=1).measure([MeasureRequest.for_layer(bad), MeasureRequest.for_layer(conv())], FAST)
    assert res[0].error is not None and res[0].error.startswith("RuntimeError:")
    assert "too small" in res[0].error
    assert res[1].ok


def test_timeout_becomes_an_error_result() -> None:
    t = TimingConfig(warmup=20, repeats=5, number=1, max_retries=0, timeout_s=0.02)
    res = CpuDevice(threads=1).measure([MeasureRequest.for_model(ref("sleepy")), MeasureRequest.for_layer(conv())], t)
    assert res[0].error is not None and res[0].error.startswith("timeout"), res[0].error
    assert res[1].ok  # the budget is per request


def test_unstable_flag_and_retries() -> None:
    never_stable = TimingConfig(warmup=1, repeats=4, number=2, max_cv=0.0, max_retries=2)
    (r,) = CpuDevice(threads=1).measure([MeasureRequest.for_layer(conv())], never_stable)
    assert r.ok and r.unstable and r.attempts == 3 and r.cv > 0
    lenient = TimingConfig(warmup=1, repeats=4, number=2, max_cv=10.0, max_retries=2)
    (r2,) = CpuDevice(threads=1).measure([MeasureRequest.for_layer(conv())], lenient)
    assert r2.ok and not r2.unstable and r2.attempts == 1


def test_model_layers_names_match_the_model_modules() -> None:
    mref = ModelRef("resnet20", {"width_mult": 0.25})
    (r,) = CpuDevice(threads=1).measure([MeasureRequest.for_model(mref, per_layer=True)], FAST)
    assert r.ok, r.error
    names = {n for n, _ in mref.build().named_modules()}
    convs = {n for n, m in mref.build().named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(r.per_layer_ms) <= names
    assert convs <= set(r.per_layer_ms)
    assert "fc" in r.per_layer_ms
    assert all(v > 0 for v in r.per_layer_ms.values())
    # in-context layers run inside one forward pass: their sum cannot exceed the whole model by much
    assert sum(r.per_layer_ms.values()) < 3 * r.latency_ms


def test_thread_count_is_fixed_during_measure_and_restored() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ThreadProbe.seen.clear()
        (r,) = CpuDevice(threads=2).measure([MeasureRequest.for_model(ref("thread_probe"))], FAST)
        assert r.ok
        assert set(_ThreadProbe.seen) == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fingerprint_records_threads() -> None:
    a, b = CpuDevice(threads=1).fingerprint(), CpuDevice(threads=2).fingerprint()
    assert a.identity["threads"] == 1 and b.identity["threads"] == 2
    assert a.key != b.key
    assert a.key == CpuDevice(threads=1).fingerprint().key


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_count(threads: object) -> None:
    with pytest.raises(ConfigError, match="threads"):
        CpuDevice(threads=threads)  # type: ignore[arg-type]


def test_cpu_rejects_cuda_graph_mode() -> None:
    with pytest.raises(ConfigError, match="eager"):
        CpuDevice(threads=1).measure([MeasureRequest.for_layer(conv())], TimingConfig(mode="cuda_graph"))


def test_profile_creates_a_cpu_device() -> None:
    dev = create_device("local-cpu")
    assert isinstance(dev, CpuDevice) and dev.timing.repeats == 20


# --- the clock option ------------------------------------------------------------------------------
def test_thread_cpu_clock_is_in_the_fingerprint_identity() -> None:
    wall, tc = CpuDevice(threads=1).fingerprint(), CpuDevice(threads=1, clock="thread_cpu").fingerprint()
    assert "clock" not in wall.identity  # wall-clock keys are unchanged by the option
    assert tc.identity["clock"] == "thread_cpu_time" and tc.key != wall.key
    assert {k: v for k, v in tc.identity.items() if k != "clock"} == wall.identity


@pytest.mark.parametrize(("kw", "match"), [({"clock": "cycles"}, "clock='cycles'.*wall, thread_cpu"),
                                           ({"clock": "thread_cpu", "threads": 2}, "threads = 1")])
def test_bad_clock_options(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CpuDevice(**kw)


def test_thread_cpu_clock_does_not_count_sleeping() -> None:
    """A 5 ms sleep is 5 ms of wall time but ~0 ms of the measuring thread's CPU time."""
    t = TimingConfig(warmup=0, repeats=3, number=1, max_cv=10.0, max_retries=0, timeout_s=30)
    req = [MeasureRequest.for_model(ref("sleepy"))]
    wall = CpuDevice(threads=1).measure(req, t)[0]
    tc = CpuDevice(threads=1, clock="thread_cpu").measure(req, t)[0]
    assert wall.ok and tc.ok, (wall.error, tc.error)
    assert wall.min_ms >= 4.5
    assert tc.min_ms < 2.0
    assert tc.extra["clock"] == "thread_cpu_time" and "clock" not in wall.extra


def test_thread_cpu_clock_times_compute_and_model_layers() -> None:
    dev = CpuDevice(threads=1, clock="thread_cpu")
    res = dev.measure([MeasureRequest.for_layer(conv(16, 16)),
                       MeasureRequest.for_model(ModelRef("small_cnn"), per_layer=True)], FAST)
    assert all(r.ok for r in res), [r.error for r in res]
    assert res[0].min_ms > 0
    assert res[1].per_layer_ms and all(v >= 0 for v in res[1].per_layer_ms.values())
    assert sum(res[1].per_layer_ms.values()) <= res[1].max_ms * 1.5


def test_threadclock_profile() -> None:
    dev = create_device("local-cpu-threadclock")
    assert isinstance(dev, CpuDevice) and dev.clock == "thread_cpu" and dev.threads == 1
    assert dev.fingerprint().identity["clock"] == "thread_cpu_time"


# --- the timing loop with a scripted clock --------------------------------------------------------
class ScriptedTimer(Timer):
    """Returns prepared sample values (the timing loop's logic, not the clock, is under test)."""

    def __init__(self, values: list[float]) -> None:
        self.values: Iterator[float] = iter(values)
        self.calls: list[int] = []

    def time(self, fn: Callable[[], object], number: int) -> float:
        self.calls.append(number)
        return next(self.values)


def test_retry_stops_once_stable() -> None:
    t = TimingConfig(warmup=0, repeats=4, number=3, max_cv=0.05, max_retries=3)
    timer = ScriptedTimer([1.0, 2.0, 1.0, 2.0,   # attempt 1: CV 0.33
                           1.0, 1.01, 0.99, 1.0])  # attempt 2: steady
    r = time_fn(lambda: None, t, timer, request_key="k")
    assert r.attempts == 2 and not r.unstable
    assert r.samples_ms == (1.0, 1.01, 0.99, 1.0)
    assert timer.calls == [3] * 8


def test_steadiest_attempt_is_kept_when_never_stable() -> None:
    t = TimingConfig(warmup=0, repeats=2, number=1, max_cv=0.01, max_retries=2)
    timer = ScriptedTimer([1.0, 3.0, 1.0, 1.5, 1.0, 2.0])
    r = time_fn(lambda: None, t, timer, request_key="k")
    assert r.attempts == 3 and r.unstable
    assert r.samples_ms == (1.0, 1.5)


def test_pick_number_reaches_min_repeat_ms() -> None:
    t = TimingConfig(number=0, min_repeat_ms=2.0)
    # a call takes 0.1 ms: first estimate 21 calls, second confirms
    n = pick_number(lambda: None, ScriptedTimer([0.1, 0.1]), t)
    assert n * 0.1 >= 2.0 and n <= 25
    assert pick_number(lambda: None, ScriptedTimer([]), TimingConfig(number=7)) == 7


def test_perf_counter_timer_measures_sleep() -> None:
    ms = PerfCounterTimer().time(lambda: time.sleep(0.002), 3)
    assert 1.9 <= ms < 50


def test_deadline() -> None:
    d = Deadline(0.01)
    d.check()
    time.sleep(0.02)
    with pytest.raises(MeasureTimeout, match="0.01 s"):
        d.check()
    assert Deadline(0).remaining_s == float("inf")


def test_time_model_layers_with_a_host_clock_sums_repeated_modules() -> None:
    relu = torch.nn.ReLU()
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), relu, torch.nn.Conv2d(2, 2, 1), relu)
    per = time_model_layers(net, (torch.randn(1, 2, 4, 4),), TimingConfig(warmup=1, repeats=3),
                            time.perf_counter_ns, lambda a, b: (b - a) / 1e6)
    assert set(per) == {"0", "1", "2"}  # the shared ReLU is one module, named once


def test_error_message_is_one_line() -> None:
    assert error_message(RuntimeError("a\nb")) == "RuntimeError: a"
    assert error_message(KeyError()) == "KeyError"
