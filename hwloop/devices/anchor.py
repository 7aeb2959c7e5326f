"""Anchored latency: a whole model measured interleaved with a fixed anchor model.

On a shared or virtualised CPU the machine's speed drifts: on the 2-core VM this project is
developed on, the same model measured a minute apart moves by a median 2–12% while the load
average stays below 0.5, and longer measurements do not help (the drift is slower than one
measurement). Interleaving cancels it in *ratios* (:func:`hwloop.devices.base.compare`), so an
absolute latency that must be comparable across processes and sessions is taken as one::

    latency = (model / anchor, interleaved) × anchor's reference latency

The anchor's reference latency is measured once per device fingerprint and kept in the
measurement store (the oldest ok row for the anchor request wins; later re-measurements never move
it), so two independent measurements — other processes, other days — share the same unit. Every
anchored result records the ratio, the reference and the anchor as measured now
(``extra["anchor"]``): ``now_ms / ms`` is how fast the machine ran at that moment, which an
anchored latency deliberately factors out. Use it to compare or rank models measured at different
times on one machine; a plain measurement answers "how long does a caller wait right now".

>>> from hwloop.devices import MeasureRequest, create_device
>>> from hwloop.models import ModelRef
>>> dev = create_device("local-cpu")
>>> anchor = calibrate_anchor(dev, MeasureRequest.for_model(ModelRef("small_cnn")))
>>> (res,) = measure_anchored(dev, [MeasureRequest.for_model(ModelRef("small_cnn", {"width_mult": 0.5}))], anchor)
>>> res.latency_ms == res.extra["anchor"]["ratio"] * anchor.ms
True
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hwloop.devices.base import Device, MeasureRequest, MeasureResult, TimingConfig, compare
from hwloop.errors import ConfigError

if TYPE_CHECKING:
    from hwloop.store import MeasurementStore


@dataclass(frozen=True)
class Anchor:
    """A reference model and its latency on one device in the device's reference state.

    Attributes:
        request: the anchor's measure request (a whole model).
        ms: its reference latency in milliseconds.
        source: ``"store"`` (an earlier stored row), ``"measured"`` (measured by :func:`calibrate_anchor`)
            or ``"given"``.
    """

    request: MeasureRequest
    ms: float
    source: str = "given"

    def __post_init__(self) -> None:
        if not (self.ms > 0):
            raise ConfigError(f"anchor latency {self.ms!r} ms must be a positive number")
        if self.request.model is None:
            raise ConfigError(f"anchor {self.request.key!r} must be a whole-model request, not a layer")


def calibrate_anchor(device: Device, request: MeasureRequest, timing: TimingConfig | None = None, *,
                     store: MeasurementStore | None = None, rounds: int = 3) -> Anchor:
    """The anchor's reference latency on ``device``.

    With a ``store`` that already holds an ok row for the anchor on this device (same fingerprint and
    timing), the oldest such row is the reference; otherwise the anchor is measured ``rounds`` times
    (the median is kept) and, with a store, written there so later calls share it.

    Raises:
        ConfigError: ``request`` is not a whole model, ``rounds`` < 1, or the anchor could not be measured.
    """
    if rounds < 1:
        raise ConfigError(f"anchor calibration rounds={rounds!r} must be >= 1")
    t = timing or getattr(device, "timing", None) or TimingConfig()
    if request.model is None:
        raise ConfigError(f"anchor {request.key!r} must be a whole-model request, not a layer")
    fp = device.fingerprint()
    if store is not None:
        rows = [*store.history(fp.key, request.key, t.key), *filter(None, [store.get(fp.key, request.key, t.key)])]
        ok = [r for r in rows if r.ok]
        if ok:
            return Anchor(request, ok[0].latency_ms, "store")
    got = [device.measure([request], t)[0] for _ in range(rounds)]
    bad = [r for r in got if not r.ok]
    if bad:
        raise ConfigError(f"anchor {request.model.label} could not be measured on {fp.name}: {bad[0].error}")
    best = sorted(got, key=lambda r: r.latency_ms)[len(got) // 2]
    if store is not None:
        store.add(fp, request, best)
    return Anchor(request, best.latency_ms, "measured")


def measure_anchored(device: Device, requests: Sequence[MeasureRequest], anchor: Anchor,
                     timing: TimingConfig | None = None) -> list[MeasureResult]:
    """Each request measured interleaved with the anchor, its latency expressed in the anchor's unit.

    A result's samples (and so its median, min, max and IQR) are scaled by one factor so that its
    median equals ``ratio × anchor.ms``; ``extra["anchor"]`` holds ``ratio``, its 95% interval,
    ``ms`` (the reference), ``now_ms`` (the anchor as measured alongside), ``raw_ms`` (the request's
    own unscaled median) and ``key``. A request that fails comes back as its failure, unscaled.
    """
    out: list[MeasureResult] = []
    for req in requests:
        c = compare(device, [anchor.request, req], timing)
        res = c.results[1]
        if not c.ok or not res.ok:
            out.append(res if not res.ok else MeasureResult.failure(req.key, res.timing, c.results[0].error or
                                                                    "the anchor failed"))
            continue
        ratio = c.ratios[1]
        scale = ratio * anchor.ms / res.latency_ms
        info: dict[str, Any] = {"key": anchor.request.key, "ratio": ratio, "ratio_ci": list(c.ratio_ci[1]),
                                "ms": anchor.ms, "source": anchor.source, "now_ms": c.results[0].latency_ms,
                                "raw_ms": res.latency_ms, "rounds": c.rounds}
        out.append(dataclasses.replace(
            res, latency_ms=ratio * anchor.ms, min_ms=res.min_ms * scale, max_ms=res.max_ms * scale,
            iqr_ms=res.iqr_ms * scale, samples_ms=tuple(x * scale for x in res.samples_ms),
            unstable=res.unstable or c.unstable, extra={**res.extra, "anchor": info}))
    return out


def drift(results: Sequence[MeasureResult]) -> float | None:
    """Median of ``now_ms / ms`` over anchored results: how fast the machine ran against its reference."""
    xs = [r.extra["anchor"]["now_ms"] / r.extra["anchor"]["ms"] for r in results if "anchor" in r.extra]
    return statistics.median(xs) if xs else None
