"""Profile one model on one device: every layer in isolation, the whole model, and each layer in context.

This is what ``hwloop profile`` and ``hwloop demo`` run. Results go to the measurement
store as they arrive. A stored row is read back instead of measured again unless it is
*unstable* (its spread stayed above ``max_cv`` after the retries: it is measured again, not
silently reused) or ``remeasure`` is set; a new measurement of a stored key replaces the row
and the old one moves to the store's history (nothing stored is lost). The report marks the
rows that are still unstable and records the machine load the profile started under.

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

from hwloop.devices.base import Device, MeasureRequest, MeasureResult, TimingConfig, machine_load
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec, Workload, extract_workload

__all__ = ["LayerRow", "ProfileReport", "profile_model", "measure_with_store", "StoreOutcome", "stale_warning"]

#: ops timed in isolation by default (the others are cheap and timed in context only)
ISOLATED_OPS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add", "groupnorm", "instancenorm")


@dataclass(frozen=True)
class LayerRow:
    """One layer of a profile: its spec and its isolated / in-context median latency (ms).

    ``unstable`` is True when the isolated measurement's spread stayed above the threshold."""

    spec: LayerSpec
    isolated_ms: float
    in_context_ms: float
    error: str | None = None
    unstable: bool = False


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
    model_unstable: bool = False
    load: dict[str, Any] = field(default_factory=dict)
    remeasured_unstable: int = 0
    stale: str | None = None

    @property
    def unstable_count(self) -> int:
        """Unstable measurements in the report (layers timed in isolation + the whole model)."""
        return sum(r.unstable for r in self.rows) + int(self.model_unstable)

    @property
    def isolated_sum_ms(self) -> float:
        return sum(r.isolated_ms for r in self.rows if not math.isnan(r.isolated_ms))

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"name": r.spec.name, "op": r.spec.op, "in_shape": "x".join(map(str, r.spec.in_shape)),
                              "out_shape": "x".join(map(str, r.spec.out_shape)), "macs": r.spec.macs,
                              "params": r.spec.params, "isolated_ms": r.isolated_ms,
                              "in_context_ms": r.in_context_ms, "error": r.error, "unstable": r.unstable}
                             for r in self.rows])


@dataclass(frozen=True)
class StoreOutcome:
    """What :func:`measure_with_store` did: results in request order and how many of each kind."""

    results: list[MeasureResult]
    measured: int
    reused: int
    remeasured_unstable: int
    reused_keys: frozenset[str] = frozenset()


def measure_with_store(requests: Sequence[MeasureRequest], device: Device, store: Any | None, timing: TimingConfig,
                       *, progress: bool = True, on_result: Callable[[MeasureRequest, MeasureResult], None] | None = None,
                       remeasure: bool = False) -> StoreOutcome:
    """Results for ``requests`` in order, reading what ``store`` already holds and storing the rest.

    A stored ok row is reused unless it is unstable or ``remeasure`` is set; then the request is
    measured again and the new row replaces the stored one (which moves to the store's history).
    ``remeasured_unstable`` counts the unstable stored rows measured again.
    """
    from tqdm.auto import tqdm

    fp = device.fingerprint()
    results: dict[str, MeasureResult] = {}
    todo: list[MeasureRequest] = []
    stored: set[str] = set()
    seen: set[str] = set()
    unstable_again = 0
    for r in requests:
        if r.key in seen:
            continue
        seen.add(r.key)
        got = store.get(fp.key, r.key, timing.key) if store is not None else None
        if got is not None:
            stored.add(r.key)
        if got is not None and got.ok and not got.unstable and not remeasure:
            results[r.key] = got
        else:
            unstable_again += bool(got is not None and got.ok and got.unstable and not remeasure)
            todo.append(r)
    reused = len(results)
    reused_keys = set(results)
    bar = tqdm(total=len(todo), desc=f"measuring on {device.name}", disable=not progress or not todo, unit="job")
    for i in range(0, len(todo), 8):
        batch = todo[i:i + 8]
        for req, res in zip(batch, device.measure(batch, timing)):
            if store is not None:
                store.add(fp, req, res, replace=req.key in stored)
            results[req.key] = res
            if on_result:
                on_result(req, res)
            bar.update(1)
    bar.close()
    return StoreOutcome([results[r.key] for r in requests], len(todo), reused, unstable_again,
                        reused_keys=frozenset(reused_keys))


def profile_model(ref: ModelRef, device: Device, store: Any | None = None, timing: TimingConfig | None = None, *,
                  isolated_ops: Sequence[str] = ISOLATED_OPS, progress: bool = True,
                  remeasure: bool = False, check_stale: bool = True) -> ProfileReport:
    """Measure ``ref`` on ``device``: each layer alone, the whole model, and each layer in context.

    Args:
        ref: the model to profile.
        device: any :class:`~hwloop.devices.base.Device`.
        store: a :class:`~hwloop.store.MeasurementStore` (or None to keep nothing).
        timing: the timing protocol (default: the device's).
        isolated_ops: op kinds timed in isolation.
        progress: show a progress bar.
        remeasure: measure every request again instead of reusing stored rows (the new rows
            replace them; the old ones stay in the store's history).
        check_stale: when the whole model's row is reused from the store, measure the whole model once more
            (not stored) and set ``stale`` to a one-line warning if the two differ by more than
            :data:`STALE_FACTOR` (the device's speed moved since the rows were taken: the fingerprint's speed
            signature, thread CPU time, does not see a wall-clock slowdown).
    """
    t = timing or getattr(device, "timing", None) or TimingConfig()
    load = machine_load()
    wl = extract_workload(ref.build(), ref.example_input(), name=ref.label)
    layer_reqs = [MeasureRequest.for_layer(s) for s in wl.layers if s.op in isolated_ops]
    model_req = MeasureRequest.for_model(ref, per_layer=True)
    out = measure_with_store([*layer_reqs, model_req], device, store, t, progress=progress, remeasure=remeasure)
    results, measured, reused = out.results, out.measured, out.reused
    by_key = {req.key: res for req, res in zip(layer_reqs, results[:-1])}
    model_res = results[-1]
    stale = None
    if check_stale and model_req.key in out.reused_keys:
        now = device.measure([model_req], t)[0]
        stale = stale_warning(model_res.latency_ms, now.latency_ms) if now.ok else None
    in_ctx = dict(model_res.per_layer_ms) if model_res.ok else {}
    rows = []
    errors = [f"model: {model_res.error}"] if model_res.error else []
    for s in wl.layers:
        res = by_key.get(s.key) if s.op in isolated_ops else None
        iso = res.latency_ms if res is not None and res.ok else float("nan")
        err = res.error if res is not None else None
        if err:
            errors.append(f"{s.name}: {err}")
        rows.append(LayerRow(spec=s, isolated_ms=iso, in_context_ms=in_ctx.get(s.name, float("nan")), error=err,
                             unstable=bool(res is not None and res.ok and res.unstable)))
    return ProfileReport(model=ref, device_name=device.name, fingerprint_key=device.fingerprint().key, workload=wl,
                         rows=tuple(rows), model_ms=model_res.latency_ms if model_res.ok else float("nan"),
                         model_cv=model_res.cv if model_res.ok else float("nan"),
                         store_url=getattr(store, "url", None), measured=measured, reused=reused,
                         errors=tuple(errors), model_unstable=bool(model_res.ok and model_res.unstable), load=load,
                         remeasured_unstable=out.remeasured_unstable, stale=stale)


def timing_warnings(load: dict[str, Any], unstable: int, timing: TimingConfig | None = None, *,
                    what: str = "measurements", marked: bool = True) -> list[str]:
    """One-line warnings about timings that cannot be trusted, each naming the remedy.

    Example:
        >>> timing_warnings({"load1": 7.5, "cores": 2, "loaded": True}, 0)[0][:52]
        'the machine is loaded (load average 7.5 on 2 cores):'
        >>> timing_warnings({"load1": 0.1, "cores": 2, "loaded": False}, 0)
        []
    """
    out = []
    if load.get("loaded"):
        out.append(f"the machine is loaded (load average {load['load1']} on {load['cores']} cores): wall-clock "
                   "timings stretch with the load; stop other work and run again with --remeasure, or measure "
                   "CPU time with --device local-cpu-threadclock")
    if unstable:
        cv = f" {timing.max_cv:.0%}" if timing is not None else ""
        out.append(f"{unstable} {what} unstable (spread above max_cv{cv} after the retries"
                   f"{', marked *' if marked else ''}): they are measured again next time instead of reused; "
                   "run on a quieter machine or raise repeats")
    return out


#: a stored whole-model latency more than this factor away from the same request measured now means the
#: device's speed moved since the store's rows were taken
STALE_FACTOR = 1.2


def stale_warning(stored_ms: float, now_ms: float, *, factor: float = STALE_FACTOR) -> str | None:
    """A one-line warning when a stored latency and the same request measured now differ by more than ``factor``.

    The machine fingerprint's speed signature times reference ops by thread CPU time; a VM whose wall clock
    slows down (host contention) keeps its signature, so rows reused from the store can be stale without any
    other sign (on this project's VM: the same quiet ResNet-20 1.77 ms one morning, 2.79 ms that afternoon).

    Example:
        >>> stale_warning(1.0, 1.05) is None
        True
        >>> stale_warning(0.40, 0.68)[:43]
        'stored measurements may be stale: the whole'
    """
    if not (math.isfinite(stored_ms) and math.isfinite(now_ms) and stored_ms > 0 and now_ms > 0):
        return None
    r = now_ms / stored_ms
    if 1 / factor <= r <= factor:
        return None
    return (f"stored measurements may be stale: the whole model measures {now_ms:.4f} ms now against "
            f"{stored_ms:.4f} ms stored ({r:.2f}x): this device's speed moved since they were taken, so the "
            "predictor and the reported ratios may be off; run again with --remeasure")

