"""Measure a method's candidates on the context's device: every candidate gets ``measured_ms`` beside its prediction.

:func:`measure_candidates` times each candidate against the starting model with
:func:`hwloop.search.report.compare_compressed` (interleaved whole models on the CPU, alternating
measurements elsewhere) and charges the time to the context's ledger (phase ``measure``).

Example:
    >>> from hwloop.methods.measure import measure_candidates
    >>> measure_candidates(result, context)  # doctest: +SKIP
    >>> result.candidates[0].measured_ms, result.candidates[0].measured_ratio  # doctest: +SKIP
    (0.0031, 0.68)
"""

from __future__ import annotations

import time
from typing import Any

from hwloop.errors import SearchError
from hwloop.methods.base import MethodContext, MethodResult

__all__ = ["measure_candidates"]


def measure_candidates(result: MethodResult, context: MethodContext, *, device: str | Any = None,
                       timing: Any = None, rounds: int = 1) -> MethodResult:
    """Fill ``measured_ms`` / ``original_measured_ms`` of every candidate of ``result`` (in place; returned).

    Args:
        device: a profile name or a Device (default: ``context.device``).
        timing: a :class:`~hwloop.devices.base.TimingConfig` (default: the profile's).
        rounds: alternating rounds on devices that do not interleave (each keeps its fastest).
    """
    from hwloop.devices import create_device
    from hwloop.search.report import compare_compressed

    where = device if device is not None else context.device
    if where is None:
        raise SearchError("measure_candidates needs a device: set MethodContext.device or pass device=")
    dev = create_device(where) if isinstance(where, str) else where
    example = context.example()
    ledger = context.ledger
    assert ledger is not None
    for c in result.candidates:
        t0 = time.perf_counter()
        m = compare_compressed(dev, c.model, c.plan, context.model, example=example, timing=timing, rounds=rounds)
        dt = time.perf_counter() - t0
        ledger.add("measure", trial=context.trial, wall_s=dt, device_s=dt,
                   device_measurements=2 * max(1, int(m.get("rounds", rounds))))
        c.measured_ms, c.original_measured_ms = float(m["latency_ms"]), float(m["original_ms"])
        context.say(f"{result.method} {c.setting}: measured on {dev.name} {c.measured_ms:.4g} ms vs original "
                    f"{c.original_measured_ms:.4g} ms = {c.measured_ms / c.original_measured_ms:.3f} x "
                    f"(predicted {c.predicted_ratio:.3f} x)")
    return result
