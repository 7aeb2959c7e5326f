"""The timing loop shared by the torch backends (CPU and CUDA).

:func:`time_fn` warms up, picks the inner iteration count, takes ``repeats`` samples
and re-measures while the spread is above ``TimingConfig.max_cv``. The clock is a
:class:`Timer` (host ``perf_counter_ns`` on CPU, CUDA events on GPU). Each request's
wall-clock budget is a :class:`Deadline`, checked cooperatively between calls: a
single call that never returns cannot be interrupted in-process (the remote agent
runs requests in a killable process for that).

Example:
    >>> from hwloop.devices._timing import PerfCounterTimer, time_fn
    >>> from hwloop.devices.base import TimingConfig
    >>> r = time_fn(lambda: sum(range(100)), TimingConfig(repeats=5, number=10), PerfCounterTimer(),
    ...             request_key="k")
    >>> r.ok, len(r.samples_ms), r.extra["number"]
    (True, 5, 10)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hwloop.devices.base import MeasureResult, TimingConfig, summarize

__all__ = ["Timer", "PerfCounterTimer", "Deadline", "time_fn", "retry_until_stable", "pick_number", "MeasureTimeout"]

#: most inner iterations a sample may use (keeps calibration of sub-microsecond ops bounded).
MAX_NUMBER = 100_000


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


@dataclass
class Deadline:
    """A request's wall-clock budget (``timeout_s`` = 0 means none), started on creation.

    Example:
        >>> d = Deadline(0.0)
        >>> d.check()  # never raises without a budget
        >>> d.remaining_s
        inf
    """

    timeout_s: float
    start: float = field(default_factory=time.monotonic)

    @property
    def remaining_s(self) -> float:
        if not self.timeout_s:
            return float("inf")
        return self.timeout_s - (time.monotonic() - self.start)

    def check(self) -> None:
        """Raise :class:`MeasureTimeout` once the budget is spent."""
        if self.remaining_s < 0:
            raise MeasureTimeout(f"timed out after {self.timeout_s:g} s")


def pick_number(fn: Callable[[], object], timer: Timer, timing: TimingConfig) -> int:
    """Inner iterations per sample: ``timing.number``, or enough for ``min_repeat_ms``.

    Calibrates like ``timeit.autorange``: one call, then (if it was short) a second estimate
    over the guessed count, so timer overhead does not dominate sub-microsecond ops.
    """
    if timing.number > 0:
        return timing.number
    one = max(timer.time(fn, 1), 1e-5)
    guess = max(1, min(MAX_NUMBER, int(timing.min_repeat_ms / one) + 1))
    if guess > 1:
        one = max(timer.time(fn, guess), 1e-5)
        guess = max(1, min(MAX_NUMBER, int(timing.min_repeat_ms / one) + 1))
    return guess


def time_fn(fn: Callable[[], object], timing: TimingConfig, timer: Timer, *, request_key: str,
            extra: dict[str, object] | None = None, deadline: Deadline | None = None,
            number: int | None = None) -> MeasureResult:
    """Warm up, pick the inner iteration count, take ``repeats`` samples; retry while unstable.

    An attempt whose coefficient of variation exceeds ``timing.max_cv`` is repeated, up to
    ``timing.max_retries`` more times; the attempt with the lowest CV is returned, with
    ``attempts`` set to the number of attempts made and ``unstable`` still True when even the
    steadiest attempt is above the threshold.

    Args:
        fn: the zero-argument call to time.
        timing: the timing protocol.
        timer: the clock.
        request_key: stored in the result.
        extra: merged into the result's ``extra``.
        deadline: the request's budget (default: a fresh one of ``timing.timeout_s``).
        number: inner iterations per sample, overriding :func:`pick_number` (CUDA graphs
            capture the iterations inside ``fn`` and pass 1).

    Raises:
        MeasureTimeout: the time spent exceeded the budget (checked between calls).
    """
    dl = deadline or Deadline(timing.timeout_s)
    for _ in range(timing.warmup):
        fn()
        dl.check()
    n = number if number is not None else pick_number(fn, timer, timing)
    dl.check()

    def take() -> list[float]:
        samples = []
        for _ in range(timing.repeats):
            samples.append(timer.time(fn, n))
            dl.check()
        return samples

    return retry_until_stable(take, timing, request_key=request_key, extra={"number": n, **(extra or {})})


def retry_until_stable(take: Callable[[], list[float]], timing: TimingConfig, *, request_key: str,
                       extra: dict[str, object]) -> MeasureResult:
    """Call ``take()`` for a sample set (ms) until one is stable (CV ≤ ``timing.max_cv``), at most
    ``timing.max_retries`` extra times; return the steadiest attempt with ``attempts`` = attempts made.

    Shared by :func:`time_fn` and backends that take their samples another way (TVM's
    ``time_evaluator``)."""
    best: MeasureResult | None = None
    attempt = 0
    for attempt in range(1, timing.max_retries + 2):
        res = summarize(take(), timing, request_key=request_key, attempts=attempt, extra=dict(extra))
        if best is None or res.cv < best.cv:
            best = res
        if not res.unstable:
            break
    assert best is not None
    if best.attempts != attempt:
        best = summarize(best.samples_ms, timing, request_key=request_key, attempts=attempt,
                         extra=dict(best.extra))
    return best
