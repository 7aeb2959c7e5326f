"""The ``cpu`` backend and the shared timing loop (``hwloop.devices._timing``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import torch

from hwloop.devices import MeasureRequest, TimingConfig, create_device
from hwloop.devices._timing import (Deadline, MeasureTimeout, PerfCounterTimer, Timer, pick_number, time_fn,
                                    time_interleaved)
from hwloop.devices.base import compare, machine_load, median_ci
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
    return ModelRef(f"{__name__}:{factory}", input_shape=(3, 4, 4), allow_import=True)


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
    t = TimingConfig(warmup=40, repeats=5, number=1, max_retries=0, timeout_s=0.1)
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


# --- preemption, interleaving, flagging (issue 14) -----------------------------------------------
class DriftTimer(Timer):
    """A deterministic clock: call i of fn ``f`` takes ``base[f] * (1 + drift * i)`` ms, where i counts
    every sample taken so far (the machine slows down steadily); ``disturb`` marks sample indices
    as disturbed (and makes them 50x slower)."""

    def __init__(self, base: dict[Callable[[], object], float], drift: float = 0.0,
                 disturb: set[int] | None = None, jitter: list[float] | None = None) -> None:
        self.base, self.drift, self.disturb = base, drift, disturb or set()
        self.jitter = jitter
        self.i = 0
        self.log: list[Callable[[], object]] = []
        self.disturbed = False

    def time(self, fn: Callable[[], object], number: int) -> float:
        x = self.base[fn] * (1 + self.drift * self.i)
        if self.jitter:
            x *= self.jitter[self.i % len(self.jitter)]
        self.disturbed = self.i in self.disturb
        if self.disturbed:
            x *= 50
        self.i += 1
        self.log.append(fn)
        return x


def _fns() -> tuple[Callable[[], object], Callable[[], object]]:
    def a() -> None:
        return None

    def b() -> None:
        return None

    return a, b


def test_interleaved_order_alternates_abba() -> None:
    a, b = _fns()
    timer = DriftTimer({a: 1.0, b: 0.5})
    t = TimingConfig(warmup=0, repeats=4, number=1, max_cv=1.0, max_retries=0)
    time_interleaved([a, b], t, timer, request_keys=["a", "b"])
    assert timer.log == [a, b, b, a, a, b, b, a]


def test_interleaving_cancels_drift_that_a_sequential_measurement_does_not() -> None:
    """The machine slows down 1% per sample: measured one after the other the ratio is off by
    ~20%; interleaved it stays within 1% of the true 0.5."""
    a, b = _fns()
    t = TimingConfig(warmup=0, repeats=20, number=1, max_cv=0.05, max_retries=0)
    got = time_interleaved([a, b], t, DriftTimer({a: 1.0, b: 0.5}, drift=0.01), request_keys=["a", "b"])
    assert got.ratios[0] == 1.0 and abs(got.ratios[1] / 0.5 - 1) < 0.01
    assert not got.unstable and got.rounds == 20
    seq = DriftTimer({a: 1.0, b: 0.5}, drift=0.01)
    ra = time_fn(a, t, seq, request_key="a").latency_ms
    rb = time_fn(b, t, seq, request_key="b").latency_ms
    assert rb / ra > 0.5 * 1.15  # the artefact interleaving removes


def test_disturbed_samples_are_retaken_and_counted() -> None:
    a, b = _fns()
    t = TimingConfig(warmup=0, repeats=6, number=1, max_cv=0.05, max_retries=0)
    got = time_interleaved([a, b], t, DriftTimer({a: 1.0, b: 0.25}, disturb={0, 5}), request_keys=["a", "b"])
    ra, rb = got.results
    assert max(ra.samples_ms) == 1.0 and max(rb.samples_ms) == 0.25  # the 50x samples were thrown away
    assert ra.extra.get("discarded", 0) + rb.extra.get("discarded", 0) == 2
    assert got.ratios[1] == 0.25 and not got.unstable


def test_time_fn_retakes_disturbed_samples_until_the_allowance_runs_out() -> None:
    a, _ = _fns()
    t = TimingConfig(warmup=0, repeats=3, number=2, max_cv=10.0, max_retries=0)
    r = time_fn(a, t, DriftTimer({a: 1.0}, disturb={1, 2}), request_key="a")
    assert r.samples_ms == (1.0, 1.0, 1.0) and r.extra["discarded"] == 2 and r.extra["disturbed"] == 0
    always = DriftTimer({a: 1.0}, disturb=set(range(100)))
    r2 = time_fn(a, t, always, request_key="a")
    assert r2.extra == {"number": 2, "discarded": 6, "disturbed": 3}  # 2x the samples retaken, then kept
    assert always.i == 9


def test_unstable_ratio_is_flagged_after_the_retries_and_rounds_accumulate() -> None:
    a, b = _fns()
    noisy = [1.0, 1.6, 0.7, 1.3, 0.8, 1.5, 0.6, 1.2]  # per-sample factors: the per-round ratios swing widely
    t = TimingConfig(warmup=0, repeats=8, number=1, max_cv=0.02, max_retries=2)
    got = time_interleaved([a, b], t, DriftTimer({a: 1.0, b: 0.5}, jitter=noisy), request_keys=["a", "b"])
    assert got.unstable and got.rounds == 24 and all(r.attempts == 3 for r in got.results)
    lo, hi = got.ratio_ci[1]
    assert lo < got.ratios[1] < hi and (hi - lo) / (2 * got.ratios[1]) > 0.02
    steady = time_interleaved([a, b], t, DriftTimer({a: 1.0, b: 0.5}), request_keys=["a", "b"])
    assert not steady.unstable and steady.rounds == 8 and steady.results[0].attempts == 1


def test_median_ci_is_distribution_free() -> None:
    med, lo, hi = median_ci([5.0] * 30 + [500.0] * 9)  # 9 preempted outliers of 39 do not move it
    assert (med, lo, hi) == (5.0, 5.0, 5.0)
    assert median_ci([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    with pytest.raises(ConfigError):
        median_ci([])


def test_cpu_measure_interleaved_compares_real_models() -> None:
    dev = CpuDevice(threads=1)
    small, big = ModelRef("resnet20", {"width_mult": 0.25}), ModelRef("resnet20")
    t = TimingConfig(warmup=1, repeats=6, min_repeat_ms=0.5, max_cv=0.5, max_retries=0, timeout_s=60)
    c = compare(dev, [MeasureRequest.for_model(big), MeasureRequest.for_model(small)], t)
    assert c.ok and c.interleaved and c.rounds == 6
    assert 0 < c.ratios[1] < 0.8  # a quarter of the width is much faster, whatever the load
    assert c.results[0].extra["interleaved"] == 2 and c.results[0].extra["threads"] == 1
    assert "load1" in c.results[0].extra and c.load["cores"] >= 1 and "load1" in c.load_end
    assert [r.request_key for r in c.results] == [MeasureRequest.for_model(m).key for m in (big, small)]
    assert len(c.to_dict()["results"]) == 2


def test_cpu_measure_interleaved_failure_is_data() -> None:
    c = CpuDevice(threads=1).measure_interleaved(
        [MeasureRequest.for_model(ModelRef("small_cnn")), MeasureRequest.for_model(ref("exploding_factory"))], FAST)
    assert not c.ok and c.unstable and all("KeyError" in (r.error or "") for r in c.results)
    with pytest.raises(ConfigError, match="eager"):
        CpuDevice(threads=1).measure_interleaved([MeasureRequest.for_layer(conv())], TimingConfig(mode="cuda_graph"))


def test_compare_on_a_device_without_interleaving_alternates_batches() -> None:
    """The simulated ASIC is deterministic: alternating batches give its exact ratio, marked not interleaved."""
    dev = create_device("asic-tpu32")
    reqs = [MeasureRequest.for_layer(conv(32, 16)), MeasureRequest.for_layer(conv(16, 16))]
    c = compare(dev, reqs, rounds=2)
    single = dev.measure(reqs)
    assert c.ok and not c.interleaved and c.rounds == 2
    assert c.ratios[1] == pytest.approx(single[1].latency_ms / single[0].latency_ms)


def test_every_result_records_the_load_and_the_profile_fixes_threads() -> None:
    (r,) = CpuDevice(threads=1).measure([MeasureRequest.for_layer(conv())], FAST)
    assert isinstance(r.extra["load1"], float)
    dev = create_device("local-cpu")
    assert isinstance(dev, CpuDevice) and dev.threads == 1 and dev.clock == "wall" and dev.preemption == "retake"
    assert dev.fingerprint().identity["threads"] == 1
    allt = create_device("local-cpu-allthreads")
    assert isinstance(allt, CpuDevice) and allt.threads == machine_load()["cores"]
    assert allt.fingerprint().identity["threads"] == allt.threads


def test_realtime_priority_holds_while_measuring_only_and_says_so() -> None:
    """The all-threads profile measures under SCHED_FIFO where this process may (root here); every thread
    is back at its own policy after; where refused, results say so and still measure."""
    import os

    from hwloop.devices import cpu as cpu_mod

    dev = create_device("local-cpu-allthreads")
    assert isinstance(dev, CpuDevice) and dev.priority == "realtime"
    assert dev.fingerprint().info["priority"] == "realtime" and "priority" not in dev.fingerprint().identity
    seen: list[int] = []
    ref = ModelRef(f"{__name__}:_policy_probe", input_shape=(3, 4, 4), allow_import=True)
    _POLICY_SINK.clear()
    (r,) = dev.measure([MeasureRequest.for_model(ref)], FAST)
    seen = list(_POLICY_SINK)
    assert r.ok, r.error
    allowed = r.extra["priority"] == "realtime"
    if allowed:  # root in CI: the model ran on a real-time thread
        assert seen and all(pol == os.SCHED_FIFO for pol in seen)
    else:
        assert str(r.extra["priority"]).startswith("normal (realtime refused: ")
    assert all(os.sched_getscheduler(int(t)) == os.SCHED_OTHER for t in os.listdir("/proc/self/task"))
    refused = dict(cpu_mod._REFUSED)
    cpu_mod._REFUSED["why"] = "PermissionError: Operation not permitted"
    try:
        (r,) = dev.measure([MeasureRequest.for_layer(conv())], FAST)
        assert r.ok and r.extra["priority"] == "normal (realtime refused: PermissionError: Operation not permitted)"
    finally:
        cpu_mod._REFUSED.clear()
        cpu_mod._REFUSED.update(refused)


_POLICY_SINK: list[int] = []


class _PolicyProbe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        _POLICY_SINK.append(os.sched_getscheduler(0))
        return x + 1


def _policy_probe() -> torch.nn.Module:
    return _PolicyProbe()


@pytest.mark.parametrize(("options", "match"), [({"threads": "many"}, "threads='many'.*'all'"),
                                                ({"preemption": "ignore"}, "preemption='ignore'.*retake, keep"),
                                                ({"priority": "high"}, "priority='high'.*normal, realtime"),
                                                ({"thread": 2}, "'thread'")])
def test_bad_cpu_options_are_config_errors(options: dict, match: str) -> None:
    from hwloop.devices.profiles import DeviceProfile

    with pytest.raises(ConfigError, match=match):  # refused by the profile or by the backend
        create_device(DeviceProfile.from_dict({"name": "x", "backend": "cpu", "options": options}))


def test_a_quantized_plan_is_timed_as_the_whole_extracted_model_on_the_cpu() -> None:
    """The CPU has no low-bit kernels: a plan with bits is the extracted float model, measured end to end
    against the original (never the sum of isolated layers that once reported 0.072x)."""
    from hwloop.compress import CompressionPlan, from_plan
    from hwloop.search.report import compare_compressed, measure_compressed

    plan = CompressionPlan(base={"name": "resnet20"}, widths={"layers.0.conv1": 4, "layers.3.conv1": 8},
                           w_bits={"layers.0.conv1": 4}, a_bits=8)
    model, original = from_plan(plan.to_dict()), ModelRef("resnet20").build()
    t = TimingConfig(warmup=1, repeats=4, min_repeat_ms=0.5, max_cv=0.5, max_retries=0, timeout_s=60)
    dev = CpuDevice(threads=1)
    m = measure_compressed(dev, model, plan, timing=t)
    assert m["method"] == "model" and m["n_requests"] == 1
    c = compare_compressed(dev, model, plan, original, timing=t)
    assert c["interleaved"] and c["method"] == "model" and c["rounds"] == 4
    assert 0.3 < c["ratio"] < 1.3 and c["ratio_ci"][0] <= c["ratio"] <= c["ratio_ci"][1]
    assert c["load"]["cores"] >= 1 and c["original_ms"] > 0
    assert measure_compressed("asic-tpu32", model, plan)["method"] == "layers"  # the ASIC has low-bit units


def test_interleaved_samples_time_the_warm_model() -> None:
    """Another model ran in between, so a model's first call is cache-cold; the untimed call before
    each sample keeps the sample warm (a same-model comparison is exactly 1, a pair its true ratio)."""
    last: list[object] = [None]

    def make() -> Callable[[], object]:
        def f() -> None:
            last[0] = f
        return f

    class CacheTimer(Timer):
        def __init__(self, base: dict[object, float]) -> None:
            self.base, self.cold = base, 0

        def time(self, fn: Callable[[], object], number: int) -> float:
            cold = last[0] is not fn
            self.cold += cold
            fn()
            return self.base[fn] * (3.0 if cold else 1.0)

    a, a2, b = make(), make(), make()
    t = TimingConfig(warmup=1, repeats=6, number=1, max_cv=0.05, max_retries=0)
    timer = CacheTimer({a: 1.0, a2: 1.0, b: 0.5})
    same = time_interleaved([a, a2], t, timer, request_keys=["a", "a2"])
    pair = time_interleaved([a, b], t, timer, request_keys=["a", "b"])
    assert timer.cold == 0 and same.ratios[1] == 1.0 and pair.ratios[1] == 0.5


def test_waiting_for_a_core_marks_a_sample_disturbed() -> None:
    """A multi-threaded op whose worker thread found every core busy waits without being switched out;
    the run-queue wait of the process's threads (schedstat) catches it."""
    from hwloop.devices._timing import runqueue_wait_ns

    waited = iter([0, 10**9, 5, 5])  # 1 s of waiting during the first sample, none during the second
    t = PerfCounterTimer(detect_preemption=True, waits=lambda: next(waited))
    t.time(lambda: None, 10)
    assert t.disturbed
    t.time(lambda: None, 10)
    assert not t.disturbed
    w = runqueue_wait_ns()
    assert w is None or w >= 0
    assert PerfCounterTimer().time(lambda: None, 3) >= 0 and not PerfCounterTimer().disturbed
