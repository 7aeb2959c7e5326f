"""Work claims: several sweeps (processes or hosts) running into one store measure each key once.

A sweep worker **claims** keys in the store's ``claims`` table before it measures them: a row
``(device_key, workload_key, timing_key, worker, claimed_at, expires_at)`` is a lease, renewed
by a heartbeat thread while the worker lives and deleted when its batch is done (the stored
measurement is the record). Keys claimed by a live worker are left to it; a lease that expired
(its worker was SIGKILLed, lost power or its network) is **taken over**. Times are seconds on the
*database's* clock, so hosts with skewed clocks agree on who holds what.

One claim is one short write transaction, atomic on both backends:

* SQLite: the store's writes are ``BEGIN IMMEDIATE``, so claimers queue on the write lock and each
  sees every earlier claim (insert-or-ignore, then takeover of expired rows);
* PostgreSQL: ``INSERT … ON CONFLICT DO NOTHING RETURNING`` for unclaimed keys (in sorted key
  order, so two claimers never deadlock) and ``UPDATE … WHERE key IN (SELECT … WHERE expires_at <
  now FOR UPDATE SKIP LOCKED)`` for expired ones, so claimers never wait on each other's locks.

The same transaction reads the measurement rows of the window, before and after claiming: a key
already stored (an ok row, or a failure written after this sweep started) is *resolved* and never
measured, once no live lease of another worker is on it (an expired one is deleted). Because claims
are taken before the measurements are read again and a worker stores a result before it releases
the claim, a key is never measured twice by live workers.

Example:
    >>> from hwloop.devices import DeviceFingerprint, TimingConfig
    >>> from hwloop.store import MeasurementStore
    >>> st = MeasurementStore("sqlite://")
    >>> q = ClaimQueue(st, DeviceFingerprint("toy", "cpu", {"cpu": "x"}), TimingConfig(), ["a", "b", "c"])
    >>> q.todo, q.already
    (['a', 'b', 'c'], 0)
    >>> q.next_batch(2)
    ['a', 'b']
    >>> q.release(["a", "b"]); q.next_batch(2); q.pending
    ['c']
    0
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hwloop.errors import ConfigError, HwloopError, StoreError
from hwloop.store._schema import claims_t, measurements_t

if TYPE_CHECKING:
    from hwloop.devices.base import DeviceFingerprint, TimingConfig
    from hwloop.store import MeasurementStore

__all__ = ["DEFAULT_LEASE_S", "ClaimQueue", "check_lease", "worker_id"]

logger = logging.getLogger("hwloop.sweep")

#: Seconds a claim lives without a heartbeat (the heartbeat renews it every third of that).
DEFAULT_LEASE_S = 60.0
_WINDOW = 256  # keys looked at per claim statement (bounded bind-parameter lists)


def worker_id(label: str = "") -> str:
    """A unique worker name: ``host:pid[:label]:random``."""
    parts = [socket.gethostname()[:80], str(os.getpid()), *([label[:60]] if label else []), uuid.uuid4().hex[:8]]
    return ":".join(parts)


def check_lease(lease_s: object, what: str = "lease_s") -> float:
    """``lease_s`` as a float, or a one-line ConfigError when it is not a number of seconds in [1, 1e7).

    Example:
        >>> check_lease("0", "--lease")
        Traceback (most recent call last):
        hwloop.errors.ConfigError: --lease '0' must be a number of seconds from 1 to 1e7
    """
    try:
        v = float(lease_s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(lease_s, bool) or not 1.0 <= v < 1e7:  # also False for NaN
        raise ConfigError(f"{what} {lease_s!r} must be a number of seconds from 1 to 1e7")
    return v


def _chunks(keys: Sequence[str], n: int = _WINDOW) -> Iterable[list[str]]:
    for i in range(0, len(keys), n):
        yield list(keys[i:i + n])


class ClaimQueue:
    """The keys one sweep still has to measure for one (device fingerprint, timing), claimed via the store.

    Thread-safe: the threads of one process (a farm's identical boards) share one queue and one worker
    id; other processes and hosts coordinate through the ``claims`` table.

    Args:
        store: the shared store.
        fp: fingerprint of the device(s) measuring.
        timing: the timing of the sweep (part of the key).
        keys: the workload keys of the sweep (duplicates dropped, order kept).
        retry_failed: keys whose stored row is a failure are measured again (once per sweep).
        lease_s: lease length in seconds (>= 1); a heartbeat renews it every ``lease_s / 3``.
        worker: this worker's id (default :func:`worker_id`).
        on_resolved: called with the number of keys found stored by another worker.

    Attributes:
        todo: the keys that were not stored when the queue was made.
        already: how many keys were stored before (not retried).
        by_others: keys another worker stored while this one ran (counted once, when seen).
        taken_over: expired leases of other workers this worker took over.
    """

    def __init__(self, store: MeasurementStore, fp: DeviceFingerprint, timing: TimingConfig, keys: Iterable[str],
                 *, retry_failed: bool = True, lease_s: float = DEFAULT_LEASE_S, worker: str | None = None,
                 on_resolved: Callable[[int], None] | None = None) -> None:
        self.store, self.device_key, self.timing_key = store, fp.key, timing.key
        self.worker = worker or worker_id()
        self.lease_s = check_lease(lease_s)
        db = sa.make_url(store.url).database if store.backend == "sqlite" else "pg"
        self._shared = bool(db) and db != ":memory:"  # an in-memory store has no other process to share with
        self.on_resolved = on_resolved
        self.by_others = self.taken_over = 0
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        wanted = list(dict.fromkeys(keys))
        m = measurements_t.c
        # One read gives what is stored and the failures' timestamps: a failure rewritten after this (by
        # anyone) has another created_at, so this sweep never measures a failing key twice.
        self._failed_at: dict[str, str] = {}
        stored: set[str] = set()
        with store._read() as conn:
            for chunk in _chunks(wanted, 900):
                q = sa.select(m.workload_key, m.error, m.created_at).where(
                    m.device_key == self.device_key, m.timing_key == self.timing_key, m.workload_key.in_(chunk))
                for k, err, created in conn.execute(q):
                    if err is None or not retry_failed:
                        stored.add(k)
                    else:
                        self._failed_at[k] = created
        self.todo = [k for k in wanted if k not in stored]
        self.already = len(wanted) - len(self.todo)
        self._remaining: dict[str, None] = dict.fromkeys(self.todo)

    # ------------------------------------------------------------------ state
    @property
    def pending(self) -> int:
        """Keys neither resolved nor held by this process (other workers may hold some)."""
        with self._lock:
            return len(self._remaining)

    @property
    def finished(self) -> bool:
        """True when every key is stored (by anyone) or held by this process."""
        return self.pending == 0

    def _windows(self) -> Iterable[list[str]]:
        """The remaining keys, ``_WINDOW`` at a time, read lazily (claims rarely look past the first)."""
        start = 0
        while True:
            with self._lock:
                window = list(itertools.islice(self._remaining, start, start + _WINDOW))
            if not window:
                return
            yield window
            start += len(window)

    def _now(self, conn: sa.Connection) -> float:
        if self.store.backend == "postgresql":
            expr = sa.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        else:
            expr = sa.text("SELECT (julianday('now') - 2440587.5) * 86400.0")
        return float(conn.execute(expr).scalar_one())

    def _lease(self) -> float:
        return self.lease_s if self._shared else 1e9

    def _where(self, keys: Sequence[str]) -> Any:
        c = claims_t.c
        return sa.and_(c.device_key == self.device_key, c.timing_key == self.timing_key, c.workload_key.in_(keys))

    # ------------------------------------------------------------------ claiming
    def _stored(self, conn: sa.Connection, keys: Sequence[str]) -> set[str]:
        """Keys with a final row for this sweep: ok, or a failure written after the sweep started."""
        m = measurements_t.c
        q = sa.select(m.workload_key, m.error, m.created_at).where(
            m.device_key == self.device_key, m.timing_key == self.timing_key, m.workload_key.in_(keys))
        return {k for k, err, created in conn.execute(q) if err is None or self._failed_at.get(k) != created}

    def claim(self, n: int) -> list[str]:
        """Claim up to ``n`` keys in one transaction (may return [] while other workers hold the rest).

        A key found stored is resolved (and never measured) unless another worker still holds a live
        lease on it: then it waits for that worker's release, so no stale claim is left behind.
        A PostgreSQL deadlock or serialization failure (not expected: see the module docstring) is retried.
        """
        for attempt in range(5):
            try:
                return self._claim(n)
            except StoreError as e:
                code = getattr(getattr(e.__cause__, "orig", None), "sqlstate", None)
                if attempt == 4 or code not in ("40P01", "40001"):
                    raise
                logger.info("claim transaction retried after %s", code)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _claim(self, n: int) -> list[str]:
        c = claims_t.c
        got: list[str] = []
        resolved: list[str] = []
        took = 0
        if self.finished or n < 1:
            return []
        scanned: list[str] = []
        with self.store._write() as conn:
            now = self._now(conn)
            vals = {"worker": self.worker, "claimed_at": now, "expires_at": now + self._lease()}
            for window in self._windows():
                scanned += window
                seen = {k: e for k, e in conn.execute(sa.select(c.workload_key, c.expires_at)
                                                      .where(self._where(window)))}
                stored = self._stored(conn, window)
                stale = [k for k in stored if k in seen and seen[k] < now]  # a dead worker's finished keys
                if stale:
                    conn.execute(claims_t.delete().where(self._where(stale), c.expires_at < now))
                resolved += [k for k in stored if k not in seen or seen[k] < now]
                need = n - len(got)
                mine: list[str] = []
                free = [k for k in window if k not in seen and k not in stored][:need]
                if free:  # inserted in sorted key order: two claimers never wait on each other in a cycle
                    ins = self.store._insert(claims_t).values(
                        [{"device_key": self.device_key, "workload_key": k, "timing_key": self.timing_key, **vals}
                         for k in sorted(free)])
                    mine += [k for (k,) in conn.execute(ins.on_conflict_do_nothing().returning(c.workload_key))]
                expired = [k for k, e in seen.items() if e < now and k not in stored]
                if expired and len(mine) < need:
                    lock = (sa.select(c.workload_key).where(self._where(expired), c.expires_at < now)
                            .order_by(c.workload_key).limit(need - len(mine)).with_for_update(skip_locked=True))
                    upd = (claims_t.update().where(self._where(expired), c.expires_at < now, c.workload_key.in_(lock))
                           .values(**vals).returning(c.workload_key))
                    taken = [k for (k,) in conn.execute(upd)]
                    took += len(taken)
                    mine += taken
                if mine:  # read after claiming: whatever was stored before our claim is seen here
                    done = self._stored(conn, mine)
                    if done:
                        conn.execute(claims_t.delete().where(self._where(list(done)), c.worker == self.worker))
                    resolved += done
                    got += [k for k in mine if k not in done]
                if len(got) >= n:
                    break
        order = {k: i for i, k in enumerate(scanned)}
        got.sort(key=order.__getitem__)  # the sweep's order
        with self._lock:
            fresh = [k for k in dict.fromkeys(resolved) if k in self._remaining]
            for k in fresh + got:
                self._remaining.pop(k, None)
            self._held.update(got)
            self.by_others += len(fresh)
            self.taken_over += took
        if took:
            logger.warning("took over %d claim(s) whose lease had expired (their worker stopped renewing them)", took)
        if fresh and self.on_resolved is not None:
            self.on_resolved(len(fresh))
        if got:
            self._start_heartbeat()
        return got

    def next_batch(self, n: int, stop: threading.Event | None = None, poll_s: float = 1.0) -> list[str]:
        """Claim the next ``n`` keys, waiting while other workers hold all that is left.

        Returns [] when every key is resolved (or held by this process), or when ``stop`` is set.
        """
        while not (stop is not None and stop.is_set()):
            got = self.claim(n)
            if got or self.finished:
                return got
            # Everything left is held by others: wait for them to finish, or for a lease to expire.
            (stop or self._stop).wait(min(poll_s, self.lease_s / 4))
        return []

    def release(self, keys: Iterable[str], *, done: bool = True) -> None:
        """Drop this worker's claims on ``keys``; with ``done=False`` they go back to the queue (a failed batch)."""
        keys = list(keys)
        with self._lock:
            keys = [k for k in keys if k in self._held]
            self._held.difference_update(keys)
            if not done:
                for k in keys:
                    self._remaining[k] = None
        for chunk in _chunks(keys, 900):
            with self.store._write() as conn:
                conn.execute(claims_t.delete().where(self._where(chunk), claims_t.c.worker == self.worker))

    # ------------------------------------------------------------------ heartbeat
    def renew(self) -> int:
        """Extend every lease this worker holds; returns how many rows it renewed."""
        with self._lock:
            if not self._held:
                return 0
        with self.store._write() as conn:
            now = self._now(conn)
            res = conn.execute(claims_t.update().where(claims_t.c.worker == self.worker)
                               .values(expires_at=now + self._lease()))
            return int(res.rowcount or 0)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except HwloopError as e:  # the next beat retries; a lease lost meanwhile may be taken over
                logger.warning("claim heartbeat failed: %s", e)

    def _start_heartbeat(self) -> None:
        if not self._shared or self._beat is not None:
            return
        with self._lock:
            if self._beat is None:
                self._beat = threading.Thread(target=self._beat_loop, name="hwloop-claims-heartbeat", daemon=True)
                self._beat.start()

    def tidy(self) -> int:
        """Delete expired claims (of any worker) on keys of this device and timing that hold an ok row.

        A worker killed after storing a result but before releasing its batch leaves such rows; nothing
        needs them. Returns how many were deleted.
        """
        c, m = claims_t.c, measurements_t.c
        ok_row = sa.exists().where(m.device_key == c.device_key, m.workload_key == c.workload_key,
                                   m.timing_key == c.timing_key, m.error.is_(None))
        with self.store._write() as conn:
            now = self._now(conn)
            res = conn.execute(claims_t.delete().where(c.device_key == self.device_key,
                                                       c.timing_key == self.timing_key, c.expires_at < now, ok_row))
            return int(res.rowcount or 0)

    def close(self) -> None:
        """Stop the heartbeat, release every claim still held and :meth:`tidy` (best effort: leases expire)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
            self._beat = None
        with self._lock:
            held = list(self._held)
        try:
            self.release(held, done=False)
            self.tidy()
        except HwloopError as e:
            logger.warning("could not release %d claim(s); they expire in %.0f s: %s", len(held), self.lease_s, e)

