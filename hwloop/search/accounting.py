"""Compute accounting shared by every search: what each trial / phase cost.

A :class:`ComputeRecord` is one frozen entry: wall seconds, seconds spent on the target device,
training images processed (and epochs), and the number of device measurements, tagged with a
``phase`` (``train``, ``finetune``, ``eval``, ``measure``, ``search``...) and the ``trial`` (Optuna
trial number or sweep index) it belongs to. A :class:`ComputeLedger` collects records; its
:meth:`ComputeLedger.phase` context manager times the wall clock for you, and the totals
(:meth:`ComputeLedger.total`) are what the comparison plots hypervolume against.

Example:
    >>> from hwloop.search.accounting import ComputeLedger
    >>> ledger = ComputeLedger()
    >>> with ledger.phase("train", trial=0) as p:
    ...     p.train_images += 512
    ...     p.epochs += 1.0
    >>> _ = ledger.add("measure", trial=0, device_s=0.25, device_measurements=1)
    >>> t = ledger.total()
    >>> (t.train_images, t.device_measurements, t.device_s)
    (512, 1, 0.25)
    >>> ComputeLedger.from_dict(ledger.to_dict()).total().train_images
    512
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError

__all__ = ["COMPUTE_UNITS", "ComputeLedger", "ComputeRecord", "PhaseCounter"]

#: The quantities a record counts; each can be the x-axis of a hypervolume-vs-compute curve.
COMPUTE_UNITS = ("wall_s", "device_s", "train_images", "epochs", "device_measurements")
LEDGER_VERSION = 1


@dataclass(frozen=True)
class ComputeRecord:
    """What one phase of one trial cost.

    Attributes:
        phase: free-form phase name (``train``, ``finetune``, ``eval``, ``measure``, ``search``, ``total``...).
        trial: trial number / sweep index it belongs to, None for study-level work.
        wall_s: wall-clock seconds on the host.
        device_s: seconds of target-device time (measurement time, including warm-up and repeats).
        train_images: training images processed (forward + backward), summed over epochs.
        epochs: training epochs (fractional for partial epochs).
        device_measurements: number of measure requests sent to a device.
    """

    phase: str
    trial: int | None = None
    wall_s: float = 0.0
    device_s: float = 0.0
    train_images: int = 0
    epochs: float = 0.0
    device_measurements: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.phase, str) or not self.phase:
            raise ConfigError(f"compute record phase={self.phase!r} must be a non-empty string")
        if self.trial is not None and (not isinstance(self.trial, int) or isinstance(self.trial, bool)
                                       or self.trial < 0):
            raise ConfigError(f"compute record trial={self.trial!r} must be an integer >= 0 or None")
        for n in ("wall_s", "device_s", "epochs"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or v < 0:
                raise ConfigError(f"compute record {n}={v!r} must be a number >= 0")
            object.__setattr__(self, n, float(v))
        for n in ("train_images", "device_measurements"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"compute record {n}={v!r} must be an integer >= 0")

    def __add__(self, other: ComputeRecord) -> ComputeRecord:
        return ComputeRecord(
            phase=self.phase if self.phase == other.phase else "total",
            trial=self.trial if self.trial == other.trial else None,
            wall_s=self.wall_s + other.wall_s, device_s=self.device_s + other.device_s,
            train_images=self.train_images + other.train_images, epochs=self.epochs + other.epochs,
            device_measurements=self.device_measurements + other.device_measurements)

    def value(self, unit: str) -> float:
        """The amount in ``unit`` (one of :data:`COMPUTE_UNITS`)."""
        if unit not in COMPUTE_UNITS:
            raise ConfigError(f"compute unit {unit!r} is unknown; allowed: {', '.join(COMPUTE_UNITS)}")
        return float(getattr(self, unit))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComputeRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown compute record field(s) {sorted(extra)}; allowed: {sorted(known)}")
        return cls(**dict(d))


@dataclass
class PhaseCounter:
    """Mutable counters filled inside :meth:`ComputeLedger.phase`; wall time is added on exit."""

    device_s: float = 0.0
    train_images: int = 0
    epochs: float = 0.0
    device_measurements: int = 0


class ComputeLedger:
    """An append-only list of :class:`ComputeRecord` with totals and JSON round-trips.

    Args:
        records: initial records (e.g. loaded from a previous run).
        clock: seconds clock used by :meth:`phase` (``time.perf_counter`` by default).

    Example:
        >>> led = ComputeLedger([ComputeRecord("train", trial=1, train_images=10)])
        >>> led.total(trial=1).train_images, led.total(trial=2).train_images
        (10, 0)
    """

    def __init__(self, records: Iterable[ComputeRecord] = (), *, clock: Any = time.perf_counter) -> None:
        self._records: list[ComputeRecord] = list(records)
        self._clock = clock

    @property
    def records(self) -> tuple[ComputeRecord, ...]:
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def add(self, phase: str, *, trial: int | None = None, wall_s: float = 0.0, device_s: float = 0.0,
            train_images: int = 0, epochs: float = 0.0, device_measurements: int = 0) -> ComputeRecord:
        """Append one record (validated) and return it."""
        rec = ComputeRecord(phase, trial, wall_s, device_s, train_images, epochs, device_measurements)
        self._records.append(rec)
        return rec

    def extend(self, records: Iterable[ComputeRecord]) -> None:
        for r in records:
            if not isinstance(r, ComputeRecord):
                raise ConfigError(f"ledger entries must be ComputeRecord, got {type(r).__name__}")
            self._records.append(r)

    @contextmanager
    def phase(self, name: str, *, trial: int | None = None) -> Iterator[PhaseCounter]:
        """Time a block's wall clock and record what the block adds to the yielded counter.

        The record is appended even when the block raises (the compute was spent).
        """
        counter = PhaseCounter()
        t0 = self._clock()
        try:
            yield counter
        finally:
            self.add(name, trial=trial, wall_s=max(0.0, self._clock() - t0), device_s=counter.device_s,
                     train_images=int(counter.train_images), epochs=counter.epochs,
                     device_measurements=int(counter.device_measurements))

    def total(self, *, trial: int | None = None, phase: str | None = None) -> ComputeRecord:
        """Sum of the records matching ``trial`` / ``phase`` (None matches everything)."""
        acc = ComputeRecord("total", trial)
        for r in self._records:
            if (trial is None or r.trial == trial) and (phase is None or r.phase == phase):
                acc = dataclasses.replace(acc + r, phase="total", trial=trial)
        return acc

    def by_trial(self) -> dict[int | None, ComputeRecord]:
        """Totals per trial, in the order trials first appear."""
        out: dict[int | None, ComputeRecord] = {}
        for r in self._records:
            if r.trial not in out:
                out[r.trial] = self.total(trial=r.trial) if r.trial is not None else self._study_level()
        return out

    def by_phase(self) -> dict[str, ComputeRecord]:
        """Totals per phase name, in the order phases first appear."""
        return {r.phase: self.total(phase=r.phase) for r in self._records}

    def _study_level(self) -> ComputeRecord:
        acc = ComputeRecord("total")
        for r in self._records:
            if r.trial is None:
                acc = dataclasses.replace(acc + r, phase="total", trial=None)
        return acc

    def to_dict(self) -> dict[str, Any]:
        return {"version": LEDGER_VERSION, "records": [r.to_dict() for r in self._records]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComputeLedger:
        if not isinstance(d, Mapping) or d.get("version") != LEDGER_VERSION or not isinstance(d.get("records"), list):
            raise ConfigError(f"a compute ledger needs version={LEDGER_VERSION} and a 'records' list")
        return cls(ComputeRecord.from_dict(r) for r in d["records"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ledger as JSON (atomically: temp file + rename)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ComputeLedger:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"compute ledger {path} does not exist") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"compute ledger {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)
