"""Telling apart machines that report the same CPU: clock frequency and a microbenchmark signature.

Two cloud VMs can both report "AMD EPYC, 2 cores" and still differ 1.5-1.8x in measured latency
(issue 15). A CPU fingerprint's ``info`` therefore carries what the OS shows of the clock
(``cpu_mhz`` from ``/proc/cpuinfo``, ``cpu_max_mhz`` from cpufreq where present, ``bogomips``) and a
**speed signature**: a few reference operations timed on one thread in well under a second
(:func:`speed_signature`). :func:`machine_differences` compares two fingerprints on all of it.

These values live in ``info``, not ``identity``: the fingerprint key (which files measurements in the
store) stays what it was, so existing data keeps its key; a different machine behind the same key is
reported by :func:`machine_differences` and caught by a predictor's probe
(:mod:`hwloop.predict.probe`).

Example:
    >>> from hwloop.devices.base import DeviceFingerprint
    >>> a = DeviceFingerprint("cpu", "cpu", {"cpu": "AMD EPYC"}, {"speed_signature": {"matmul_us": 100.0}})
    >>> b = DeviceFingerprint("cpu", "cpu", {"cpu": "AMD EPYC"}, {"speed_signature": {"matmul_us": 170.0}})
    >>> machine_differences(a, b)
    ['speed signature 1.70x slower (1 reference ops)']
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["clock_info", "machine_differences", "signature_ratio", "speed_signature"]

#: a speed signature further than this factor from another one means another machine
SIGNATURE_TOLERANCE = 1.25
#: reported clock frequencies further apart than this (relative) mean another machine
MHZ_TOLERANCE = 0.03


def clock_info(cpuinfo: str = "/proc/cpuinfo",
               cpufreq: str = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") -> dict[str, float]:
    """What the OS shows of the CPU clock: ``cpu_mhz`` (median over cores), ``bogomips``, ``cpu_max_mhz``.

    Missing values are left out (e.g. no cpufreq in a VM, no ``cpu MHz`` on ARM).
    """
    out: dict[str, float] = {}
    mhz: list[float] = []
    bogo: list[float] = []
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, val = line.partition(":")
            key = key.strip().lower()
            try:
                if key == "cpu mhz":
                    mhz.append(float(val))
                elif key == "bogomips":
                    bogo.append(float(val))
            except ValueError:
                continue
    except OSError:
        pass
    if mhz:
        out["cpu_mhz"] = round(statistics.median(mhz), 1)
    if bogo:
        out["bogomips"] = round(statistics.median(bogo), 1)
    try:
        out["cpu_max_mhz"] = round(int(Path(cpufreq).read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        pass
    return out


def _best_us(fn: Callable[[], Any], reps: int, inner: int) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = time.thread_time_ns()
        for _ in range(inner):
            fn()
        best = min(best, (time.thread_time_ns() - t0) / inner / 1e3)
    return round(best, 2)


@functools.lru_cache(maxsize=1)
def speed_signature() -> dict[str, float]:
    """Microseconds of thread CPU time (best of 7) of four reference operations on one thread:
    a 256² float32 matmul, a 3×3 conv (32→32 channels, 32×32), a 1M-element float32 add (memory) and a
    100k-step Python loop (scalar). About 0.1-0.3 s; computed once per process.

    Needs torch (the CPU backend's library); without it only the numpy and Python ops are timed.
    """
    import numpy as np

    out: dict[str, float] = {}
    a = np.random.default_rng(0).standard_normal((1 << 20,)).astype(np.float32)
    b = a.copy()
    out["add1m_us"] = _best_us(lambda: np.add(a, b, out=b), 7, 2)
    out["pyloop_us"] = _best_us(lambda: sum(range(100_000)), 7, 1)
    try:
        import torch
    except ImportError:
        return out
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            m = torch.randn(256, 256)
            x = torch.randn(1, 32, 32, 32)
            w = torch.randn(32, 32, 3, 3)
            out["matmul256_us"] = _best_us(lambda: m @ m, 7, 3)
            out["conv3x3_us"] = _best_us(lambda: torch.nn.functional.conv2d(x, w, padding=1), 7, 3)
    finally:
        torch.set_num_threads(prev)
    return out


def signature_ratio(here: Mapping[str, Any], there: Mapping[str, Any]) -> float | None:
    """Geometric mean over the shared reference ops of ``here / there`` (> 1: ``here`` is slower);
    None when they share no op."""
    logs = [math.log(float(here[k]) / float(there[k])) for k in here
            if k in there and isinstance(here[k], (int, float)) and isinstance(there[k], (int, float))
            and here[k] > 0 and there[k] > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def machine_differences(a: Any, b: Any, *, tolerance: float = SIGNATURE_TOLERANCE) -> list[str]:
    """Why two fingerprints are different machines (empty when nothing tells them apart).

    Compares the identity (CPU model, cores, threads, library versions...), the reported clocks
    (``cpu_mhz``, ``cpu_max_mhz``: more than 3% apart) and the speed signatures (``b`` relative to
    ``a``: more than ``tolerance``× apart). A value missing from either side is not compared.
    """
    out: list[str] = []
    ia, ib = dict(a.identity), dict(b.identity)
    for k in sorted(set(ia) | set(ib)):
        if ia.get(k) != ib.get(k):
            out.append(f"{k} {ia.get(k)!r} vs {ib.get(k)!r}")
    fa, fb = dict(a.info), dict(b.info)
    for k in ("cpu_max_mhz", "cpu_mhz"):
        va, vb = fa.get(k), fb.get(k)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va > 0 and vb > 0 \
                and abs(vb / va - 1) > MHZ_TOLERANCE:
            out.append(f"{k} {va:g} vs {vb:g}")
    sa, sb = fa.get("speed_signature"), fb.get("speed_signature")
    if isinstance(sa, Mapping) and isinstance(sb, Mapping):
        r = signature_ratio(sb, sa)
        if r is not None and not (1 / tolerance <= r <= tolerance):
            n = len(set(sa) & set(sb))
            out.append(f"speed signature {r:.2f}x {'slower' if r > 1 else 'faster'} ({n} reference ops)")
    return out
