"""The timing loop shared by the torch backends (CPU and CUDA).

:func:`time_fn` warms up, picks the inner iteration count, takes ``repeats`` samples
and re-measures while the spread is above ``TimingConfig.max_cv``. The clock is a
:class:`Timer` (host ``perf_counter_ns`` on CPU, CUDA events on GPU). A timer that can tell
when a sample was *disturbed* (the process was switched out involuntarily while it ran:
another process took the core) says so in :attr:`Timer.disturbed`; such a sample is taken
again, up to twice the samples asked for, and the counts go to ``extra`` (``discarded``,
``disturbed`` = disturbed samples kept once the allowance ran out). :func:`time_interleaved`
times several calls against each other, one sample of each per round in alternating order
(A, B, B, A, …), so load that drifts during the measurement cancels in their ratios. Each request's
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

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hwloop.devices.base import RATIO_TOLERANCE, MeasureResult, TimingConfig, ratio_stats, summarize

__all__ = ["Timer", "PerfCounterTimer", "Deadline", "time_fn", "retry_until_stable", "pick_number", "MeasureTimeout",
           "involuntary_switches", "runqueue_wait_ns", "take_samples", "time_interleaved", "Interleaved"]

#: most inner iterations a sample may use (keeps calibration of sub-microsecond ops bounded).
MAX_NUMBER = 100_000
#: times an interleaved sample is taken again while disturbed (then the fastest attempt is kept)
SLOT_RETAKES = 5


class MeasureTimeout(Exception):
    """A request ran past ``TimingConfig.timeout_s``."""


def involuntary_switches() -> int:
    """Involuntary context switches of this process so far (all threads; ``getrusage``), or 0 where
    the platform does not count them.

    The kernel counts one each time it takes a core from a thread that still wanted to run
    (another process's turn), so a change across a sample means the sample includes time the
    process spent waiting.

    Example:
        >>> involuntary_switches() >= 0
        True
    """
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw)
    except (ImportError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


def runqueue_wait_ns() -> int | None:
    """Nanoseconds the threads of this process have spent runnable but waiting for a core (the
    second field of ``/proc/self/task/*/schedstat``), or None where the kernel does not report it.

    Unlike :func:`involuntary_switches` this also counts a woken thread that found every core busy,
    which is how a multi-threaded op waits for its slowest thread.

    Example:
        >>> w = runqueue_wait_ns()
        >>> w is None or w >= 0
        True
    """
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[1])
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
    except (OSError, ValueError, IndexError):
        return None
    return total


#: a sample is disturbed when its threads waited for a core longer than this share of the sample
WAIT_SHARE = 0.02


class Timer:
    """Times ``number`` back-to-back calls of ``fn`` and returns milliseconds per call.

    ``disturbed`` is True after a call whose sample the timer knows was disturbed (only timers
    that detect it set it; the default is never)."""

    disturbed: bool = False

    def time(self, fn: Callable[[], object], number: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class PerfCounterTimer(Timer):
    """Host clock (``time.perf_counter_ns``); ``sync`` is called before reading the clock.

    With ``detect_preemption`` each sample also reads :func:`involuntary_switches` and
    :func:`runqueue_wait_ns` (``waits``) before and after, and :attr:`disturbed` says whether the
    process was switched out, or its threads waited for a core for more than :data:`WAIT_SHARE` of
    the sample."""

    sync: Callable[[], None] | None = None
    detect_preemption: bool = False
    disturbed: bool = False
    waits: Callable[[], int | None] = runqueue_wait_ns

    def time(self, fn: Callable[[], object], number: int) -> float:
        if self.sync:
            self.sync()
        detect = self.detect_preemption
        c0, w0 = (involuntary_switches(), self.waits()) if detect else (0, None)
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        if self.sync:
            self.sync()
        t1 = time.perf_counter_ns()
        if detect:
            w1 = self.waits()
            waited = w0 is not None and w1 is not None and w1 - w0 > WAIT_SHARE * (t1 - t0)
            self.disturbed = waited or involuntary_switches() != c0
        else:
            self.disturbed = False
        return (t1 - t0) / 1e6 / number


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


def pick_number(fn: Callable[[], object], timer: Timer, timing: TimingConfig, *, tries: int = 1) -> int:
    """Inner iterations per sample: ``timing.number``, or enough for ``min_repeat_ms``.

    Calibrates like ``timeit.autorange``: one call, then (if it was short) a second estimate
    over the guessed count, so timer overhead does not dominate sub-microsecond ops. With
    ``tries`` > 1 each estimate is the fastest of that many timings (a calibration call that
    another process preempted would otherwise shrink the count).
    """
    if timing.number > 0:
        return timing.number
    one = max(min(timer.time(fn, 1) for _ in range(tries)), 1e-5)
    guess = max(1, min(MAX_NUMBER, int(timing.min_repeat_ms / one) + 1))
    if guess > 1:
        one = max(min(timer.time(fn, guess) for _ in range(tries)), 1e-5)
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

    counts = {"discarded": 0, "disturbed": 0}

    def take() -> list[float]:
        samples, discarded, disturbed = take_samples(fn, timer, n, timing.repeats, dl)
        counts["discarded"] += discarded
        counts["disturbed"] += disturbed
        return samples

    res = retry_until_stable(take, timing, request_key=request_key, extra={"number": n, **(extra or {})})
    if counts["discarded"] or counts["disturbed"]:
        res = dataclasses.replace(res, extra={**res.extra, **counts})
    return res


def take_samples(fn: Callable[[], object], timer: Timer, number: int, count: int, deadline: Deadline | None = None,
                 *, max_discard: int | None = None) -> tuple[list[float], int, int]:
    """``count`` samples of ``number`` calls each; a disturbed sample is taken again while the
    allowance lasts (default ``2 * count``). Once it has run out, a slot keeps the fastest of the
    timings it took (waiting only ever adds time) and counts as disturbed.

    Returns:
        ``(samples, discarded, disturbed_kept)``.

    Example:
        >>> take_samples(lambda: None, PerfCounterTimer(), 10, 3)[0].__len__()
        3
    """
    allowance = 2 * count if max_discard is None else max_discard
    samples: list[float] = []
    discarded = kept = 0
    tried: list[float] = []
    while len(samples) < count:
        x = timer.time(fn, number)
        if deadline is not None:
            deadline.check()
        if timer.disturbed:
            tried.append(x)
            if discarded < allowance:
                discarded += 1
                continue
            kept += 1
            x = min(tried)
        samples.append(x)
        tried = []
    return samples, discarded, kept


@dataclass(frozen=True)
class Interleaved:
    """What :func:`time_interleaved` returns: each call's result, the ratios to the first call's
    samples (median of per-round ratios), their 95% intervals, the rounds taken, and whether some
    ratio's interval stayed wider than ``± max_cv`` after every retry."""

    results: tuple[MeasureResult, ...]
    ratios: tuple[float, ...]
    ratio_ci: tuple[tuple[float, float], ...]
    rounds: int
    unstable: bool


def time_interleaved(fns: Sequence[Callable[[], object]], timing: TimingConfig, timer: Timer, *,
                     request_keys: Sequence[str], extras: Sequence[dict[str, object]] | None = None,
                     deadline: Deadline | None = None) -> Interleaved:
    """Time several calls against each other, interleaved.

    Every call is warmed up and gets its own inner iteration count (each estimate the fastest of
    three); then each *round* takes one sample of every call, in forward order on even rounds and
    reversed on odd ones (A, B, B, A, …), so a change of machine load between rounds affects all
    calls alike and cancels in the per-round ratios. Each sample follows one untimed call of the
    same function: the other calls ran in between and evicted its weights from the caches, and a
    sample should time the warm steady state, as :func:`time_fn` does. A disturbed sample (see
    :class:`Timer`) is taken again, at most :data:`SLOT_RETAKES` times per slot, then the fastest
    attempt is kept. A batch is ``timing.repeats`` rounds; while a ratio's 95% interval
    (:func:`~hwloop.devices.base.median_ci` of the per-round ratios) is wider than
    ``± timing.max_cv / 2`` of the ratio (:data:`~hwloop.devices.base.RATIO_TOLERANCE`), another
    batch is added, at most ``timing.max_retries`` times (rounds accumulate, so the interval
    narrows); the comparison is unstable when an interval is still wider than ``± max_cv``. Each
    result is the summary of all its samples, with ``attempts`` = batches taken.

    Raises:
        MeasureTimeout: the time spent exceeded the budget (checked between samples).
    """
    k = len(fns)
    if k == 0 or len(request_keys) != k:
        raise ValueError("time_interleaved needs one request key per call")
    dl = deadline or Deadline(timing.timeout_s * k)
    for fn in fns:
        for _ in range(timing.warmup):
            fn()
            dl.check()
    numbers = [pick_number(fn, timer, timing, tries=3) for fn in fns]
    dl.check()
    samples: list[list[float]] = [[] for _ in fns]
    discarded = [0] * k
    disturbed = [0] * k
    batches = 0
    ratios: tuple[float, ...] = ()
    cis: tuple[tuple[float, float], ...] = ()
    unstable = True
    for batches in range(1, timing.max_retries + 2):
        for _ in range(timing.repeats):
            order = range(k) if len(samples[0]) % 2 == 0 else range(k - 1, -1, -1)
            for i in order:
                fns[i]()  # untimed: the other models ran since, so warm this one's caches again
                xs, d, kept = take_samples(fns[i], timer, numbers[i], 1, dl, max_discard=SLOT_RETAKES)
                samples[i].append(xs[0])
                discarded[i] += d
                disturbed[i] += kept
        ratios, cis, unstable = ratio_stats(samples, timing)
        if not ratio_stats(samples, timing, tolerance=RATIO_TOLERANCE)[2]:
            break
    results = []
    for i in range(k):
        extra: dict[str, object] = {"number": numbers[i], "interleaved": k, **((extras or [{}] * k)[i])}
        if discarded[i] or disturbed[i]:
            extra.update(discarded=discarded[i], disturbed=disturbed[i])
        results.append(summarize(samples[i], timing, request_key=request_keys[i], attempts=batches, extra=extra))
    if k == 1:
        unstable = results[0].unstable
    return Interleaved(tuple(results), ratios, cis, len(samples[0]), unstable)


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
