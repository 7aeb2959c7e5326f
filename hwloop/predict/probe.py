"""The probe: does this machine run as fast as the one a predictor was fitted on?

A predictor's fingerprint names a CPU model and core count, but two machines with the same name
can differ 1.5-1.8x (issue 15). The probe measures a few reference layers (:data:`PROBE_LAYERS`,
about a second on a CPU) on the local device, configured as the predictor's fingerprint says
(backend, threads, clock), and compares them with the values recorded on the fitting machine
(:func:`record_probe`, saved in the predictor file as ``probe``). A file without a recorded probe is
compared with its own predictions of the same layers (less exact: the predictor's error enters).

The ratio (geometric mean over the layers, here / recorded) decides:

* within ``tolerance`` (default ±15%): **match**, predictions unchanged;
* else with ``on_mismatch="scale"`` (default): **scaled** — every prediction of this predictor object
  (``predict``, ``predict_workload``, ``predict_model``) is multiplied by the ratio, with a
  :class:`~hwloop.predict.base.PredictorWarning` saying so;
* else with ``on_mismatch="refuse"``: **refused** — a :class:`~hwloop.errors.PredictorError`.

``hwloop predict --probe scale|refuse`` and ``HWLOOP_PREDICTOR_PROBE=scale|refuse`` (read by
:func:`hwloop.load_predictor`, so searches that load a predictor probe too) use it. The scale is not
saved in the file: it belongs to the machine a process runs on.

Example:
    >>> import hwloop  # doctest: +SKIP
    >>> p = hwloop.load_predictor("measurements/local-cpu/predictor.json")  # doctest: +SKIP
    >>> run_probe(p).status  # doctest: +SKIP
    'scaled'
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwloop.errors import ConfigError, PredictorError

__all__ = ["PROBE_ACTIONS", "PROBE_LAYERS", "ProbeResult", "env_probe_action", "measure_probe", "probe_device",
           "record_probe", "run_probe"]

#: reference layers (LayerSpec form): the op kinds a CNN spends its time in, each 0.05-2 ms on one core
PROBE_LAYERS: tuple[dict[str, Any], ...] = (
    {"op": "conv2d", "in_shape": [1, 32, 32, 32], "out_channels": 32, "kernel": 3, "padding": 1},
    {"op": "conv2d", "in_shape": [1, 64, 16, 16], "out_channels": 64, "kernel": 3, "padding": 1},
    {"op": "conv2d", "in_shape": [1, 32, 32, 32], "out_channels": 64, "kernel": 3, "stride": 2, "padding": 1},
    {"op": "conv2d", "in_shape": [1, 64, 16, 16], "out_channels": 128, "kernel": 1},
    {"op": "conv2d", "in_shape": [1, 96, 16, 16], "out_channels": 96, "kernel": 3, "padding": 1, "groups": 96},
    {"op": "linear", "in_shape": [1, 1024], "out_channels": 1024},
    {"op": "batchnorm", "in_shape": [1, 64, 32, 32]},
    {"op": "pooling", "in_shape": [1, 64, 32, 32], "kernel": 2, "stride": 2, "variant": "max"},
)
#: what to do on a mismatch
PROBE_ACTIONS = ("scale", "refuse")
ENV = "HWLOOP_PREDICTOR_PROBE"


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of :func:`run_probe`.

    Attributes:
        status: ``match``, ``scaled`` or ``refused``.
        ratio: measured here / reference (geometric mean over the probe layers; > 1: this machine is slower).
        reference: ``recorded`` (values measured on the fitting machine) or ``predicted`` (no recorded probe).
        per_layer: the ratio of each probe layer.
        seconds: wall time the probe took.
        message: one line saying what was found and done.
    """

    status: str
    ratio: float
    reference: str
    per_layer: tuple[float, ...] = field(default=())
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "ratio": self.ratio, "reference": self.reference,
                "per_layer": list(self.per_layer), "seconds": self.seconds, "message": self.message}


def env_probe_action() -> str | None:
    """The probe action ``HWLOOP_PREDICTOR_PROBE`` asks for (``scale``/``refuse``), None when unset/``off``."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("", "off", "0", "no"):
        return None
    if v not in PROBE_ACTIONS:
        raise ConfigError(f"{ENV}={v!r} is unknown; allowed: off, {', '.join(PROBE_ACTIONS)}")
    return v


def probe_device(fingerprint: Any) -> Any:
    """A local device configured as ``fingerprint`` says: a ``CpuDevice`` with its threads and clock for
    a CPU fingerprint, else the device profile of its name. Raises PredictorError when none opens here."""
    from hwloop.errors import HwloopError

    if fingerprint is None:
        raise PredictorError("the predictor has no device fingerprint; nothing to probe against")
    if fingerprint.backend == "cpu":
        from hwloop.devices.cpu import CpuDevice

        ident = dict(fingerprint.identity)
        clock = "thread_cpu" if ident.get("clock") == "thread_cpu_time" else "wall"
        return CpuDevice(name=fingerprint.name, threads=int(ident.get("threads", 1)), clock=clock)
    from hwloop.devices.profiles import create_device, load_profile

    try:
        return create_device(load_profile(fingerprint.name))
    except (HwloopError, OSError, RuntimeError) as e:
        raise PredictorError(f"cannot probe device {fingerprint.name!r} ({fingerprint.backend}) here: "
                             f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def measure_probe(device: Any, layers: Sequence[Mapping[str, Any]] = PROBE_LAYERS) -> np.ndarray:
    """Median ms of each probe layer on ``device`` (a short timing: 3 warm-up runs, 7 samples of >= 2 ms)."""
    from hwloop.devices.base import MeasureRequest, TimingConfig
    from hwloop.workload import LayerSpec

    timing = TimingConfig(warmup=3, repeats=7, min_repeat_ms=2.0, max_cv=0.1, max_retries=1, timeout_s=30.0)
    reqs = [MeasureRequest.for_layer(LayerSpec.from_dict(d)) for d in layers]
    res = device.measure(reqs, timing)
    bad = [r.error for r in res if r.error]
    if bad:
        raise PredictorError(f"the probe could not measure {len(bad)} of {len(reqs)} layers: {bad[0]}")
    return np.array([r.latency_ms for r in res], dtype=np.float64)


def record_probe(p: Any, device: Any = None) -> dict[str, Any]:
    """Measure the probe layers here and keep them in ``p.probe_`` (saved with ``p.save``); run it on the
    machine the predictor's data was measured on."""
    dev = device if device is not None else probe_device(p.fingerprint)
    try:
        ms = measure_probe(dev)
        fp = dev.fingerprint()
    finally:
        if device is None and hasattr(dev, "close"):
            dev.close()
    p.probe_ = {"layers": [dict(d) for d in PROBE_LAYERS], "ms": [float(v) for v in ms],
                "fingerprint_key": getattr(fp, "key", None),
                "signature": dict(getattr(fp, "info", {}).get("speed_signature") or {}),
                "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return p.probe_


def run_probe(p: Any, device: Any = None, *, on_mismatch: str = "scale", tolerance: float = 0.15,
              measured_ms: Sequence[float] | None = None) -> ProbeResult:
    """Probe the local device against predictor ``p`` and act on a mismatch (see the module docstring).

    Args:
        p: a loaded predictor.
        device: the device to measure on (default: :func:`probe_device` of ``p.fingerprint``).
        on_mismatch: ``scale`` or ``refuse``.
        tolerance: relative difference still counted as the same speed.
        measured_ms: use these times of the probe layers instead of measuring (tests, or a probe run elsewhere).

    Raises:
        PredictorError: ``refuse`` and a mismatch, or the device cannot be probed here.
    """
    if on_mismatch not in PROBE_ACTIONS:
        raise ConfigError(f"on_mismatch={on_mismatch!r} is unknown; allowed: {', '.join(PROBE_ACTIONS)}")
    if not (0 < tolerance < 10):
        raise ConfigError(f"tolerance={tolerance!r} must be a number in (0, 10)")
    t0 = time.perf_counter()
    rec = getattr(p, "probe_", None)
    layers = list(rec["layers"]) if rec else list(PROBE_LAYERS)
    if measured_ms is None:
        dev = device if device is not None else probe_device(p.fingerprint)
        try:
            here = measure_probe(dev, layers)
        finally:
            if device is None and hasattr(dev, "close"):
                dev.close()
    else:
        here = np.asarray(measured_ms, dtype=np.float64)
        if here.shape != (len(layers),) or not np.all(np.isfinite(here) & (here > 0)):
            raise PredictorError(f"measured_ms must hold {len(layers)} finite times > 0, got {here.tolist()}")
    if rec:
        ref, kind = np.asarray(rec["ms"], dtype=np.float64), "recorded"
    else:
        p.speed_scale_ = 1.0
        ref, kind = p.predict(layers), "predicted"
    per = here / ref
    ratio = float(math.exp(np.mean(np.log(per))))
    who = f"{p.fingerprint.name if p.fingerprint is not None else '?'}"
    what = (f"probe: this machine runs {len(layers)} reference layers {ratio:.2f}x "
            f"{'slower' if ratio > 1 else 'faster'} than the predictor's {kind} probe ({who}; per layer "
            f"{per.min():.2f}-{per.max():.2f}x)")
    secs = time.perf_counter() - t0
    if abs(math.log(ratio)) <= math.log1p(tolerance):
        p.speed_scale_ = 1.0
        res = ProbeResult("match", ratio, kind, tuple(per.tolist()), secs,
                          f"{what}: within ±{tolerance:.0%}, predictions unchanged")
    elif on_mismatch == "refuse":
        res = ProbeResult("refused", ratio, kind, tuple(per.tolist()), secs,
                          f"{what}: beyond ±{tolerance:.0%}; refusing to predict for this machine "
                          "(refit on its measurements, or probe with 'scale' to rescale)")
        p.probe_result_ = res
        raise PredictorError(res.message)
    else:
        p.speed_scale_ = ratio
        res = ProbeResult("scaled", ratio, kind, tuple(per.tolist()), secs,
                          f"{what}: beyond ±{tolerance:.0%}; predictions scaled by {ratio:.3f}")
        warnings.warn(res.message, _warning_class(), stacklevel=2)
    p.probe_result_ = res
    return res


def _warning_class() -> type[Warning]:
    from hwloop.predict.base import PredictorWarning

    return PredictorWarning
