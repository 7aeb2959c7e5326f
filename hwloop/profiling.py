"""Profile one model on one device: every layer in isolation, the whole model, and each layer in context.

This is what ``hwloop profile`` and ``hwloop demo`` run. Results go to the measurement
store as they arrive (already-measured requests are read back, not re-measured).

Example:
    >>> from hwloop.devices import create_device, TimingConfig
    >>> from hwloop.models import ModelRef
    >>> from hwloop.profiling import profile_model
    >>> rep = profile_model(ModelRef("small_cnn"), create_device("local-cpu"),
    ...                     timing=TimingConfig(repeats=3), progress=False)  # doctest: +SKIP
    >>> rep.model_ms > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hwloop.devices.base import Device, MeasureRequest, MeasureResult, TimingConfig
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec, Workload, extract_workload

__all__ = ["LayerRow", "ProfileReport", "profile_model", "measure_with_store"]

#: ops timed in isolation by default (the others are cheap and timed in context only)
ISOLATED_OPS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add")


@dataclass(frozen=True)
class LayerRow:
    """One layer of a profile: its spec and its isolated / in-context median latency (ms)."""

    spec: LayerSpec
    isolated_ms: float
    in_context_ms: float
    error: str | None = None


@dataclass(frozen=True)
class ProfileReport:
    """A model's profile on one device."""

    model: ModelRef
    device_name: str
    fingerprint_key: str
    workload: Workload
    rows: tuple[LayerRow, ...]
    model_ms: float
    model_cv: float
    store_url: str | None = None
    measured: int = 0
    reused: int = 0
    errors: tuple[str, ...] = field(default=())

    @property
    def isolated_sum_ms(self) -> float:
        return sum(r.isolated_ms for r in self.rows if not math.isnan(r.isolated_ms))

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"name": r.spec.name, "op": r.spec.op, "in_shape": "x".join(map(str, r.spec.in_shape)),
                              "out_shape": "x".join(map(str, r.spec.out_shape)), "macs": r.spec.macs,
                              "params": r.spec.params, "isolated_ms": r.isolated_ms,
                              "in_context_ms": r.in_context_ms, "error": r.error} for r in self.rows])


def measure_with_store(requests: Sequence[MeasureRequest], device: Device, store: Any | None, timing: TimingConfig,
                       *, progress: bool = True, on_result: Callable[[MeasureRequest, MeasureResult], None] | None = None
                       ) -> tuple[list[MeasureResult], int, int]:
    """Results for ``requests`` in order, reading what ``store`` already holds and storing the rest.

    Returns ``(results, n_measured, n_reused)``.
    """
    from tqdm.auto import tqdm

    fp = device.fingerprint()
    results: dict[str, MeasureResult] = {}
    todo: list[MeasureRequest] = []
    seen: set[str] = set()
    for r in requests:
        if r.key in seen:
            continue
        seen.add(r.key)
        got = store.get(fp.key, r.key, timing.key) if store is not None else None
        if got is not None and got.ok:
            results[r.key] = got
        else:
            todo.append(r)
    reused = len(results)
    bar = tqdm(total=len(todo), desc=f"measuring on {device.name}", disable=not progress or not todo, unit="job")
    for i in range(0, len(todo), 8):
        batch = todo[i:i + 8]
        for req, res in zip(batch, device.measure(batch, timing)):
            if store is not None:
                store.add(fp, req, res)
            results[req.key] = res
            if on_result:
                on_result(req, res)
            bar.update(1)
    bar.close()
    return [results[r.key] for r in requests], len(todo), reused


def profile_model(ref: ModelRef, device: Device, store: Any | None = None, timing: TimingConfig | None = None, *,
                  isolated_ops: Sequence[str] = ISOLATED_OPS, progress: bool = True) -> ProfileReport:
    """Measure ``ref`` on ``device``: each layer alone, the whole model, and each layer in context.

    Args:
        ref: the model to profile.
        device: any :class:`~hwloop.devices.base.Device`.
        store: a :class:`~hwloop.store.MeasurementStore` (or None to keep nothing).
        timing: the timing protocol (default: the device's).
        isolated_ops: op kinds timed in isolation.
        progress: show a progress bar.
    """
    t = timing or getattr(device, "timing", None) or TimingConfig()
    wl = extract_workload(ref.build(), ref.example_input(), name=ref.label)
    layer_reqs = [MeasureRequest.for_layer(s) for s in wl.layers if s.op in isolated_ops]
    model_req = MeasureRequest.for_model(ref, per_layer=True)
    results, measured, reused = measure_with_store([*layer_reqs, model_req], device, store, t, progress=progress)
    by_key = {req.key: res for req, res in zip(layer_reqs, results[:-1])}
    model_res = results[-1]
    in_ctx = dict(model_res.per_layer_ms) if model_res.ok else {}
    rows = []
    errors = [f"model: {model_res.error}"] if model_res.error else []
    for s in wl.layers:
        res = by_key.get(s.key) if s.op in isolated_ops else None
        iso = res.latency_ms if res is not None and res.ok else float("nan")
        err = res.error if res is not None else None
        if err:
            errors.append(f"{s.name}: {err}")
        rows.append(LayerRow(spec=s, isolated_ms=iso, in_context_ms=in_ctx.get(s.name, float("nan")), error=err))
    return ProfileReport(model=ref, device_name=device.name, fingerprint_key=device.fingerprint().key, workload=wl,
                         rows=tuple(rows), model_ms=model_res.latency_ms if model_res.ok else float("nan"),
                         model_cv=model_res.cv if model_res.ok else float("nan"),
                         store_url=getattr(store, "url", None), measured=measured, reused=reused,
                         errors=tuple(errors))
