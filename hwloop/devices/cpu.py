"""``cpu`` backend: PyTorch on the local CPU, timed by the wall clock or the thread CPU clock.

The thread count is fixed for the duration of :meth:`CpuDevice.measure` (and restored
after) and is part of the fingerprint, since latency depends on it. ``clock="wall"``
(default) reads ``time.perf_counter_ns``; ``clock="thread_cpu"`` reads the measuring
thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``), which needs ``threads=1`` and does not
count the time other processes hold the core (see :class:`CpuDevice`).

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
from contextlib import contextmanager
from typing import Any

import torch

from hwloop.devices._timing import Deadline, MeasureTimeout, PerfCounterTimer, Timer, time_fn
from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig, summarize
from hwloop.errors import ConfigError
from hwloop.workload import build_layer, make_inputs

__all__ = [
    "CLOCKS",
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

    Example:
        >>> ThreadCpuTimer().time(lambda: sum(range(1000)), 10) > 0
        True
    """

    def time(self, fn: Callable[[], object], number: int) -> float:
        t0 = time.thread_time_ns()
        for _ in range(number):
            fn()
        return (time.thread_time_ns() - t0) / 1e6 / number


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
    names = {m: n for n, m in model.named_modules() if isinstance(m, _LEAF_TYPES)}
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


class CpuDevice:
    """PyTorch on the local CPU.

    ``clock="thread_cpu"`` times with the measuring thread's CPU time instead of the wall
    clock. With one intra-op thread every op runs on the calling thread, so on an idle core
    the two clocks agree; on a core shared with other users only the thread clock
    reproduces (it does not count the time other processes hold the core). It therefore
    requires ``threads=1`` (other threads' work would be missed), and it is recorded in the
    fingerprint identity (``"clock": "thread_cpu_time"``), so its rows never mix with
    wall-clock rows. The wall clock adds nothing to the identity (keys stay as before).

    Args:
        name: the device's name (its profile's name).
        threads: intra-op thread count used while measuring (default: all cores; 1 with
            ``clock="thread_cpu"``).
        timing: default :class:`TimingConfig` for :meth:`measure`.
        clock: ``"wall"`` (``time.perf_counter_ns``, default) or ``"thread_cpu"``.

    Example:
        >>> dev = CpuDevice(threads=1, clock="thread_cpu")
        >>> dev.fingerprint().identity["clock"]
        'thread_cpu_time'
    """

    backend = "cpu"

    def __init__(self, name: str = "local-cpu", threads: int | None = None, timing: TimingConfig | None = None,
                 clock: str = "wall", **_ignored: Any) -> None:
        if clock not in CLOCKS:
            raise ConfigError(f"clock={clock!r} is unknown; allowed: {', '.join(CLOCKS)}")
        default = 1 if clock == "thread_cpu" else (os.cpu_count() or 1)
        n = threads if threads is not None else default
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"threads={threads!r} must be a positive integer")
        if clock == "thread_cpu" and n != 1:
            raise ConfigError(f"clock='thread_cpu' needs threads = 1 (got {n}): the thread clock counts only the "
                              "measuring thread")
        self.name = name
        self.threads = n
        self.clock = clock
        self.timing = timing or TimingConfig()

    def fingerprint(self) -> DeviceFingerprint:
        identity: dict[str, Any] = {"cpu": cpu_model_name(), "machine": platform.machine(), "threads": self.threads,
                                    "torch": torch.__version__.split("+")[0], "cores": os.cpu_count()}
        if self.clock != "wall":
            identity["clock"] = _CLOCK_IDENTITY[self.clock]
        return DeviceFingerprint(
            name=self.name, backend=self.backend, identity=identity,
            info={"hostname": platform.node(), "python": platform.python_version(),
                  "mkldnn": bool(torch.backends.mkldnn.is_available()), "os": platform.platform()})

    def _timer(self) -> Timer:
        return ThreadCpuTimer() if self.clock == "thread_cpu" else PerfCounterTimer()

    def _clock_ns(self) -> Callable[[], int]:
        return time.thread_time_ns if self.clock == "thread_cpu" else time.perf_counter_ns

    def _measure_one(self, req: MeasureRequest, timing: TimingConfig, deadline: Deadline) -> MeasureResult:
        model, inputs = prepare_request(req)
        deadline.check()
        extra: dict[str, object] = {"threads": self.threads}
        if self.clock != "wall":
            extra["clock"] = _CLOCK_IDENTITY[self.clock]
        with torch.inference_mode():
            fn = lambda: model(*inputs)
            res = time_fn(fn, timing, self._timer(), request_key=req.key, extra=extra, deadline=deadline)
        if req.kind == "model_layers":
            per = time_model_layers(model, inputs, timing, self._clock_ns(), lambda a, b: (b - a) / 1e6,
                                    check=deadline.check)
            res = summarize(res.samples_ms, timing, request_key=req.key, attempts=res.attempts, per_layer_ms=per,
                            extra=dict(res.extra))
        return res

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        """Time each request; one result per request, in order, failures as ``MeasureResult.error``.

        Each request (build + timing) runs under ``timing.timeout_s``, checked between calls.
        Any exception a request raises (a layer that cannot be built, a model factory that
        fails, an unsupported dtype...) becomes that request's error; the next request still runs.

        Raises:
            ConfigError: ``timing.mode`` is not ``eager`` (the whole batch is malformed).
        """
        t = timing or self.timing
        if t.mode != "eager":
            raise ConfigError(f"the cpu backend supports mode 'eager' only, not {t.mode!r}")
        out: list[MeasureResult] = []
        with _threads(self.threads):
            for req in requests:
                try:
                    out.append(self._measure_one(req, t, Deadline(t.timeout_s)))
                except MeasureTimeout as e:
                    out.append(MeasureResult.failure(req.key, t, f"timeout: {e}"))
                except Exception as e:  # noqa: BLE001 - a failure is data, the sweep goes on
                    out.append(MeasureResult.failure(req.key, t, error_message(e)))
        return out

    def close(self) -> None:
        return None
