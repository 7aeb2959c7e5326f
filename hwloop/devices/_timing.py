"""The timing loop shared by the torch backends (CPU and CUDA)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hwloop.devices.base import MeasureResult, TimingConfig, summarize

__all__ = ["Timer", "PerfCounterTimer", "time_fn", "MeasureTimeout"]


class MeasureTimeout(Exception):
    """A request ran past ``TimingConfig.timeout_s``."""


class Timer:
    """Times ``number`` back-to-back calls of ``fn`` and returns milliseconds per call."""

    def time(self, fn: Callable[[], object], number: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class PerfCounterTimer(Timer):
    """Host clock (``time.perf_counter_ns``); ``sync`` is called before reading the clock."""

    sync: Callable[[], None] | None = None

    def time(self, fn: Callable[[], object], number: int) -> float:
        if self.sync:
            self.sync()
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        if self.sync:
            self.sync()
        return (time.perf_counter_ns() - t0) / 1e6 / number


def _pick_number(fn: Callable[[], object], timer: Timer, timing: TimingConfig) -> int:
    if timing.number > 0:
        return timing.number
    one = max(timer.time(fn, 1), 1e-4)
    return max(1, min(100_000, int(timing.min_repeat_ms / one) + 1))


def time_fn(fn: Callable[[], object], timing: TimingConfig, timer: Timer, *, request_key: str,
            extra: dict[str, object] | None = None) -> MeasureResult:
    """Warm up, pick the inner iteration count, take ``repeats`` samples; retry while unstable.

    Raises:
        MeasureTimeout: the time spent exceeded ``timing.timeout_s`` (checked between samples).
    """
    start = time.monotonic()

    def check() -> None:
        if timing.timeout_s and time.monotonic() - start > timing.timeout_s:
            raise MeasureTimeout(f"timed out after {timing.timeout_s:g} s")

    for _ in range(timing.warmup):
        fn()
        check()
    number = _pick_number(fn, timer, timing)
    best: MeasureResult | None = None
    for attempt in range(1, timing.max_retries + 2):
        samples = []
        for _ in range(timing.repeats):
            samples.append(timer.time(fn, number))
            check()
        res = summarize(samples, timing, request_key=request_key, attempts=attempt,
                        extra={"number": number, **(extra or {})})
        if best is None or res.cv < best.cv:
            best = res
        if not res.unstable:
            break
    assert best is not None
    if best.attempts != attempt:
        best = summarize(best.samples_ms, timing, request_key=request_key, attempts=attempt,
                         extra=dict(best.extra))
    return best
