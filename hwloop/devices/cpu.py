"""``cpu`` backend: PyTorch on the local CPU, timed by the wall clock or the thread CPU clock.

The thread count is fixed for the duration of :meth:`CpuDevice.measure` (and restored
after) and is part of the fingerprint, since latency depends on it. ``clock="wall"``
(default) reads ``time.perf_counter_ns``; ``clock="thread_cpu"`` reads the measuring
thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``), which needs ``threads=1`` and does not
count the time other processes hold the core (see :class:`CpuDevice`). A sample during which
the process was switched out involuntarily is taken again (``preemption = "retake"``), every
result records the machine load it started under (``extra["load1"]``), and
:meth:`CpuDevice.measure_interleaved` times models against each other, interleaved.

Example:
    >>> from hwloop.devices.cpu import CpuDevice
    >>> from hwloop.devices.base import MeasureRequest, TimingConfig
    >>> from hwloop.workload import LayerSpec
    >>> dev = CpuDevice(threads=1)
    >>> spec = LayerSpec("conv2d", (1, 8, 16, 16), out_channels=8, kernel=3, padding=1)
    >>> [r.ok for r in dev.measure([MeasureRequest.for_layer(spec)], TimingConfig(repeats=3))]
    [True]
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch

from hwloop.devices._timing import (
    Deadline,
    MeasureTimeout,
    PerfCounterTimer,
    Timer,
    involuntary_switches,
    time_fn,
    time_interleaved,
)
from hwloop.devices.base import (
    Comparison,
    DeviceFingerprint,
    MeasureRequest,
    MeasureResult,
    TimingConfig,
    machine_load,
    summarize,
)
from hwloop.devices.signature import clock_info, speed_signature
from hwloop.errors import ConfigError
from hwloop.workload_build import build_layer, make_inputs

__all__ = [
    "CLOCKS",
    "PREEMPTION",
    "PRIORITIES",
    "CpuDevice",
    "ThreadCpuTimer",
    "cpu_model_name",
    "error_message",
    "prepare_request",
    "time_model_layers",
]

#: clocks of the cpu backend; the fingerprint identity value of each non-wall clock
CLOCKS = ("wall", "thread_cpu")
_CLOCK_IDENTITY = {"thread_cpu": "thread_cpu_time"}
#: what to do with a sample during which the process was switched out involuntarily
PREEMPTION = ("retake", "keep")
#: scheduling of the measuring threads: ``normal`` (as started) or ``realtime`` (SCHED_FIFO while measuring)
PRIORITIES = ("normal", "realtime")


def error_message(e: BaseException) -> str:
    """One line describing an exception, for :meth:`MeasureResult.failure`.

    Example:
        >>> error_message(ValueError("bad shape\\nmore detail"))
        'ValueError: bad shape'
    """
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def cpu_model_name() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (falls back to ``platform.processor``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class ThreadCpuTimer(Timer):
    """Milliseconds of CPU time of the calling thread per call (``CLOCK_THREAD_CPUTIME_ID``).

    With ``detect_preemption`` it sets :attr:`disturbed` like
    :class:`~hwloop.devices._timing.PerfCounterTimer` (the thread clock does not count the
    wait, but a switch still evicts caches).

    Example:
        >>> ThreadCpuTimer().time(lambda: sum(range(1000)), 10) > 0
        True
    """

    def __init__(self, detect_preemption: bool = False) -> None:
        self.detect_preemption = detect_preemption
        self.disturbed = False

    def time(self, fn: Callable[[], object], number: int) -> float:
        c0 = involuntary_switches() if self.detect_preemption else 0
        t0 = time.thread_time_ns()
        for _ in range(number):
            fn()
        t1 = time.thread_time_ns()
        self.disturbed = self.detect_preemption and involuntary_switches() != c0
        return (t1 - t0) / 1e6 / number


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_REFUSED: dict[str, str] = {}  # why realtime scheduling was refused here (asked once per process)


@contextmanager
def _realtime(on: bool) -> Iterator[str]:
    """Run the block with every thread of this process (the intra-op pool included, started first)
    under ``SCHED_FIFO`` priority 1, restored after; yields the priority in effect (``realtime``, or
    ``normal (realtime refused: ...)`` where the kernel, container or platform does not allow it).

    A real-time thread runs before every ordinary (CFS) task on its core, whatever their nice value
    or autogroup, so a busy neighbour no longer takes a core from a multi-threaded op mid-way. The
    kernel's real-time throttling (``/proc/sys/kernel/sched_rt_runtime_us``, 95% by default) still
    leaves the rest of the machine its share; measurements are bounded by ``timeout_s``.
    """
    if not on:
        yield "normal"
        return
    if "why" in _REFUSED:
        yield f"normal (realtime refused: {_REFUSED['why']})"
        return
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None or not os.path.isdir("/proc/self/task"):
        _REFUSED["why"] = "no sched_setscheduler on this platform"
        yield f"normal (realtime refused: {_REFUSED['why']})"
        return
    torch.mm(torch.ones(256, 256), torch.ones(256, 256))  # start the intra-op pool, so it is in /proc/self/task
    saved: list[tuple[int, int, Any]] = []
    try:
        for t in os.listdir("/proc/self/task"):
            tid = int(t)
            try:
                old = (os.sched_getscheduler(tid), os.sched_getparam(tid))
                setter(tid, os.SCHED_FIFO, os.sched_param(1))
                saved.append((tid, *old))
            except ProcessLookupError:  # the thread ended meanwhile
                continue
    except OSError as e:
        for tid, pol, par in saved:
            with suppress(OSError):
                setter(tid, pol, par)
        _REFUSED["why"] = f"{type(e).__name__}: {e.strerror or e}"
        yield f"normal (realtime refused: {_REFUSED['why']})"
        return
    try:
        yield "realtime"
    finally:
        for tid, pol, par in saved:
            with suppress(OSError):
                setter(tid, pol, par)


def prepare_request(req: MeasureRequest, device: str = "cpu") -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Build the module and inputs a request times, on ``device``."""
    if req.layer is not None:
        mod = build_layer(req.layer).to(device)
        return mod, make_inputs(req.layer, device=device)
    assert req.model is not None
    model = req.model.build().to(device)
    return model, (req.model.example_input(device),)


_LEAF_TYPES = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm, torch.nn.ReLU,
               torch.nn.ReLU6, torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d)


def time_model_layers(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], timing: TimingConfig,
                      clock: Callable[[], Any], elapsed_ms: Callable[[Any, Any], float],
                      sync: Callable[[], None] | None = None,
                      check: Callable[[], None] | None = None) -> dict[str, float]:
    """Per-leaf-module in-context times (median ms) over ``timing.repeats`` whole-model runs.

    ``clock()`` returns a timestamp token (``perf_counter_ns`` on CPU, a recorded CUDA event
    on GPU); ``elapsed_ms(a, b)`` turns two tokens into milliseconds after the run. No host
    synchronisation happens between modules. Names are the ``named_modules`` names of the
    timed leaves (conv, linear, batchnorm, activations, pooling); a module called twice in one
    forward pass is summed. ``check`` (e.g. :meth:`Deadline.check`) runs after every pass.

    Example:
        >>> import time, torch
        >>> from hwloop.devices.base import TimingConfig
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> per = time_model_layers(net, (torch.randn(1, 3, 8, 8),), TimingConfig(warmup=1, repeats=3),
        ...                         time.perf_counter_ns, lambda a, b: (b - a) / 1e6)
        >>> sorted(per)
        ['0', '1']
    """
    names: dict[torch.nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, _LEAF_TYPES)}
    marks: list[tuple[str, Any, Any]] = []
    starts: dict[torch.nn.Module, Any] = {}

    def pre(mod: torch.nn.Module, _inp: Any) -> None:
        starts[mod] = clock()

    def post(mod: torch.nn.Module, _inp: Any, _out: Any) -> None:
        marks.append((names[mod], starts.pop(mod), clock()))

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    samples: dict[str, list[float]] = {}
    try:
        with torch.inference_mode():
            for _ in range(max(1, timing.warmup)):
                model(*inputs)
                if check:
                    check()
            if sync:
                sync()
            for _ in range(timing.repeats):
                marks.clear()
                model(*inputs)
                if sync:
                    sync()
                run: dict[str, float] = {}
                for n, a, b in marks:
                    run[n] = run.get(n, 0.0) + elapsed_ms(a, b)
                for n, v in run.items():
                    samples.setdefault(n, []).append(v)
                if check:
                    check()
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) for n, v in samples.items()}


def resolve_threads(threads: int | str | None, clock: str = "wall") -> int:
    """The intra-op thread count a ``threads`` option means: an int >= 1, ``"all"`` (the cores this
    process may run on), or None (1: see :class:`CpuDevice`).

    Example:
        >>> resolve_threads(None), resolve_threads(3)
        (1, 3)
    """
    if threads is None:
        return 1
    if threads == "all":
        return int(machine_load()["cores"])
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be a positive integer or 'all'")
    return threads


class CpuDevice:
    """PyTorch on the local CPU.

    **Which clock answers which question.** ``clock="wall"`` (default) is the latency a caller
    of the model waits for, including the time other processes hold the core: it is what a
    deployment on this CPU sees. ``clock="thread_cpu"`` is the CPU time the measuring thread
    spent computing: it does not count waiting for the core, so on a shared machine it
    reproduces between sessions, but it is a cost, not a latency (no sleeping, I/O or other
    threads' work). It therefore requires ``threads=1``, and it is recorded in the fingerprint
    identity (``"clock": "thread_cpu_time"``), so its rows never mix with wall-clock rows. The
    wall clock adds nothing to the identity (keys stay as before).

    **Threads** are fixed while measuring and recorded in the fingerprint. The default is 1
    (``threads = "all"`` uses every core this process may run on): at batch 1 a small CNN gains
    little from intra-op threads, while a multi-threaded op waits for its slowest thread, so on a
    core shared with anything else its wall-clock latency swings by integer factors.

    **Preemption.** With ``preemption="retake"`` (default) a sample during which the process was
    switched out involuntarily (:func:`~hwloop.devices._timing.involuntary_switches` changed) is
    taken again, up to twice the samples asked for; the result's ``extra`` counts them
    (``discarded``; ``disturbed`` = kept once the allowance ran out). ``"keep"`` keeps every sample.
    Every result records the 1-minute load average it started under (``extra["load1"]``).

    **Priority.** ``priority="realtime"`` runs every thread of the process under ``SCHED_FIFO``
    while measuring (restored after; needs root or ``CAP_SYS_NICE`` and a real-time budget in the
    cgroup): a busy neighbour then cannot take a core from a multi-threaded op mid-way, which the
    retake filter alone cannot repair when every sample waits. Where it is refused the device
    measures at normal priority and each result says so (``extra["priority"]``). The fingerprint
    info records the request, not the identity: it changes how often a neighbour disturbs a sample,
    not what is timed.

    Args:
        name: the device's name (its profile's name).
        threads: intra-op thread count used while measuring (int, ``"all"``, or None for 1).
        timing: default :class:`TimingConfig` for :meth:`measure`.
        clock: ``"wall"`` (``time.perf_counter_ns``, default) or ``"thread_cpu"``.
        preemption: ``"retake"`` (default) or ``"keep"``.
        priority: ``"normal"`` (default) or ``"realtime"``.

    Example:
        >>> dev = CpuDevice(threads=1, clock="thread_cpu")
        >>> dev.fingerprint().identity["clock"]
        'thread_cpu_time'
    """

    backend = "cpu"

    def __init__(self, name: str = "local-cpu", threads: int | str | None = None, timing: TimingConfig | None = None,
                 clock: str = "wall", preemption: str = "retake", priority: str = "normal") -> None:
        if clock not in CLOCKS:
            raise ConfigError(f"clock={clock!r} is unknown; allowed: {', '.join(CLOCKS)}")
        if preemption not in PREEMPTION:
            raise ConfigError(f"preemption={preemption!r} is unknown; allowed: {', '.join(PREEMPTION)}")
        if priority not in PRIORITIES:
            raise ConfigError(f"priority={priority!r} is unknown; allowed: {', '.join(PRIORITIES)}")
        n = resolve_threads(threads, clock)
        if clock == "thread_cpu" and n != 1:
            raise ConfigError(f"clock='thread_cpu' needs threads = 1 (got {n}): the thread clock counts only the "
                              "measuring thread")
        self.name = name
        self.threads = n
        self.clock = clock
        self.preemption = preemption
        self.priority = priority
        self.priority_in_effect = priority
        self.timing = timing or TimingConfig()

    def fingerprint(self) -> DeviceFingerprint:
        identity: dict[str, Any] = {"cpu": cpu_model_name(), "machine": platform.machine(), "threads": self.threads,
                                    "torch": torch.__version__.split("+")[0], "cores": os.cpu_count()}
        if self.clock != "wall":
            identity["clock"] = _CLOCK_IDENTITY[self.clock]
        return DeviceFingerprint(
            name=self.name, backend=self.backend, identity=identity,
            info={"hostname": platform.node(), "python": platform.python_version(),
                  "mkldnn": bool(torch.backends.mkldnn.is_available()), "os": platform.platform(),
                  "preemption": self.preemption, "priority": self.priority, **clock_info(), "speed_signature": speed_signature()})

    def _timer(self) -> Timer:
        detect = self.preemption == "retake"
        return ThreadCpuTimer(detect) if self.clock == "thread_cpu" else PerfCounterTimer(detect_preemption=detect)

    def _clock_ns(self) -> Callable[[], int]:
        return time.thread_time_ns if self.clock == "thread_cpu" else time.perf_counter_ns

    def _extra(self) -> dict[str, object]:
        extra: dict[str, object] = {"threads": self.threads, "load1": machine_load()["load1"]}
        if self.priority != "normal":
            extra["priority"] = self.priority_in_effect
        if self.clock != "wall":
            extra["clock"] = _CLOCK_IDENTITY[self.clock]
        return extra

    def _measure_one(self, req: MeasureRequest, timing: TimingConfig, deadline: Deadline) -> MeasureResult:
        extra = self._extra()
        model, inputs = prepare_request(req)
        deadline.check()
        with torch.inference_mode():
            fn = lambda: model(*inputs)
            res = time_fn(fn, timing, self._timer(), request_key=req.key, extra=extra, deadline=deadline)
        if req.kind == "model_layers":
            per = time_model_layers(model, inputs, timing, self._clock_ns(), lambda a, b: (b - a) / 1e6,
                                    check=deadline.check)
            res = summarize(res.samples_ms, timing, request_key=req.key, attempts=res.attempts, per_layer_ms=per,
                            extra=dict(res.extra))
        return res

    @contextmanager
    def _priority(self) -> Iterator[None]:
        with _realtime(self.priority == "realtime") as got:
            self.priority_in_effect = got
            yield

    def _check_mode(self, t: TimingConfig) -> None:
        if t.mode != "eager":
            raise ConfigError(f"the cpu backend supports mode 'eager' only, not {t.mode!r}")

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        """Time each request; one result per request, in order, failures as ``MeasureResult.error``.

        Each request (build + timing) runs under ``timing.timeout_s``, checked between calls.
        Any exception a request raises (a layer that cannot be built, a model factory that
        fails, an unsupported dtype...) becomes that request's error; the next request still runs.

        Raises:
            ConfigError: ``timing.mode`` is not ``eager`` (the whole batch is malformed).
        """
        t = timing or self.timing
        self._check_mode(t)
        out: list[MeasureResult] = []
        with _threads(self.threads), self._priority():
            for req in requests:
                try:
                    out.append(self._measure_one(req, t, Deadline(t.timeout_s)))
                except MeasureTimeout as e:
                    out.append(MeasureResult.failure(req.key, t, f"timeout: {e}"))
                except Exception as e:  # noqa: BLE001 - a failure is data, the sweep goes on
                    out.append(MeasureResult.failure(req.key, t, error_message(e)))
        return out

    def measure_interleaved(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None
                            ) -> Comparison:
        """Time ``requests`` against each other, interleaved (see :func:`~hwloop.devices._timing.time_interleaved`).

        ``model_layers`` requests are timed as whole models (no per-layer times). The ratios are
        relative to ``requests[0]``. Failures are data: if one request cannot be built or run,
        every result is a failure naming it (ratios need all of them) and nothing raises.

        Raises:
            ConfigError: ``timing.mode`` is not ``eager``, or no request was given.
        """
        t = timing or self.timing
        self._check_mode(t)
        if not requests:
            raise ConfigError("measure_interleaved needs at least one request")
        load = machine_load()
        keys = [r.key for r in requests]
        nan = float("nan")

        def failed(msg: str) -> Comparison:
            return Comparison(tuple(MeasureResult.failure(k, t, msg) for k in keys), tuple(nan for _ in keys),
                              tuple((nan, nan) for _ in keys), 0, True, True, load, machine_load())

        with _threads(self.threads), self._priority():
            deadline = Deadline(t.timeout_s * len(requests))
            built = []
            for req in requests:
                try:
                    built.append(prepare_request(req))
                except Exception as e:  # noqa: BLE001 - a failure is data
                    return failed(f"{req.model.label if req.model else req.op}: {error_message(e)}")
            extras = [self._extra() for _ in requests]
            try:
                with torch.inference_mode():
                    fns = [(lambda m=m, x=x: m(*x)) for m, x in built]
                    got = time_interleaved(fns, t, self._timer(), request_keys=keys, extras=extras,
                                           deadline=deadline)
            except MeasureTimeout as e:
                return failed(f"timeout: {e}")
            except Exception as e:  # noqa: BLE001 - a failure is data
                return failed(error_message(e))
        return Comparison(got.results, got.ratios, got.ratio_ci, got.rounds, got.unstable, True, load,
                          machine_load())

    def close(self) -> None:
        return None
