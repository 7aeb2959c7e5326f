"""The per-device loop of :func:`hwloop.sweep.run_sweep` / :func:`~hwloop.sweep.run_farm`: claim a batch
in the store (:class:`~hwloop.store._claims.ClaimQueue`), measure it, commit each result as it arrives,
release the batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from hwloop.devices.base import Device, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import DeviceError, HwloopError

if TYPE_CHECKING:
    from hwloop.store import MeasurementStore
    from hwloop.store._claims import ClaimQueue

__all__ = ["Worker", "measure_batch"]

logger = logging.getLogger("hwloop.sweep")


def measure_batch(device: Device, batch: list[MeasureRequest], timing: TimingConfig
                  ) -> Iterator[tuple[MeasureRequest, MeasureResult]]:
    stream = getattr(device, "measure_iter", None)
    if callable(stream):
        yield from stream(batch, timing)
        return
    results = device.measure(batch, timing)
    if len(results) != len(batch):
        raise DeviceError(f"device {device.name!r} returned {len(results)} results for {len(batch)} requests")
    yield from zip(batch, results)


class Worker:
    """Claims batches from a :class:`ClaimQueue`, measures them on one device and commits each result."""

    def __init__(self, device: Device, fp: Any, timing: TimingConfig, store: MeasurementStore, claims: ClaimQueue,
                 by_key: Mapping[str, MeasureRequest], bs: int, stats: dict[str, Any], bar: Any,
                 on_result: Callable[[MeasureRequest, MeasureResult, bool], None] | None, lock: threading.Lock, stop: threading.Event) -> None:
        self.device, self.fp, self.timing, self.store, self.claims = device, fp, timing, store, claims
        self.by_key, self.bs, self.stats, self.bar, self.on_result = by_key, bs, stats, bar, on_result
        self.lock, self.stop = lock, stop
        self.exc: BaseException | None = None

    def _batch(self, keys: list[str]) -> None:
        done: list[str] = []
        try:
            for req, res in measure_batch(self.device, [self.by_key[k] for k in keys], self.timing):
                stored = self.store.add(self.fp, req, res)
                done.append(req.key)
                status = ("ok" if res.ok else "failed") if stored else "kept"
                logger.info("stored device=%s workload=%s timing=%s status=%s", self.device.name, req.key,
                            res.timing.key, status)
                self.stats["others" if not stored else "measured" if res.ok else "failed"] += 1
                if self.bar is not None:
                    self.bar.update(1)
                if self.on_result is not None:
                    with self.lock:
                        self.on_result(req, res, stored)
        finally:  # a batch cut short goes back to the queue (for this process's other devices, or others)
            self.claims.release(done)
            self.claims.release([k for k in keys if k not in set(done)], done=False)

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            while not self.stop.is_set():
                keys = self.claims.next_batch(self.bs, self.stop)
                if not keys:
                    break
                self._batch(keys)
        except Exception as e:  # noqa: BLE001 - recorded; run_sweep re-raises it, run_farm reports it
            self.exc = e
            self.stats["error"] = str(e) if isinstance(e, HwloopError) else f"{type(e).__name__}: {e}"
        finally:
            self.stats["wall_s"] = round(time.perf_counter() - t0, 3)
