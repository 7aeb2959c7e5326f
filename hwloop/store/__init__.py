"""The measurement store: every :class:`~hwloop.devices.MeasureResult`, keyed and durable.

:class:`MeasurementStore` runs over SQLAlchemy: an SQLite file by default (WAL journal,
``synchronous=FULL``, busy timeout; each write is one ``BEGIN IMMEDIATE`` transaction) or
PostgreSQL by URL (``postgresql://user@host:port/db``, driven by psycopg 3). The same code
and the same contract tests serve both.

Rows are keyed by ``(device fingerprint key, workload key, timing key)``: re-running a
sweep skips what is stored (:meth:`MeasurementStore.missing`) and an interrupted sweep
resumes where it stopped. :meth:`MeasurementStore.add` commits before it returns. A
failed result may later be replaced by an ok one; an ok row is never overwritten.

The schema is versioned (``meta.schema_version``); older stores are upgraded on open
(see :mod:`hwloop.store._schema`), newer ones are refused with a :class:`StoreError`.

Example:
    >>> from hwloop.store import MeasurementStore
    >>> from hwloop.devices import DeviceFingerprint, MeasureRequest, TimingConfig, summarize
    >>> from hwloop.workload import LayerSpec
    >>> fp = DeviceFingerprint("toy", "cpu", {"cpu": "x"})
    >>> req = MeasureRequest.for_layer(LayerSpec("linear", (1, 8), out_channels=4))
    >>> res = summarize([1.0, 1.2, 0.9], TimingConfig(), request_key=req.key)
    >>> with MeasurementStore("sqlite://") as st:
    ...     (st.add(fp, req, res), st.add(fp, req, res), st.count())
    (True, False, 1)
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import StoreError
from hwloop.store._schema import (SCHEMA_VERSION, detect_version, devices_t, ensure_schema, history_t,
                                  measurements_t)

if TYPE_CHECKING:
    import pandas as pd

    from hwloop.workload import LayerSpec

__all__ = ["MeasurementStore", "default_store_url", "normalize_url", "specs_from_frame", "SCHEMA_VERSION"]

_PG_LOCK_ID = 0x68776C6F6F70  # "hwloop": serialises schema creation/upgrade across PostgreSQL clients
_UPDATABLE = ("kind", "op", "mode", "latency_ms", "min_ms", "max_ms", "iqr_ms", "cv", "unstable", "attempts",
              "error", "samples_json", "per_layer_json", "extra_json", "spec_json", "model_json", "timing_json",
              "created_at", "hwloop_version")


_ALLOWED_URLS = "allowed: a file path, sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB"


def default_store_url() -> str:
    """The default store: the SQLite file ``$HWLOOP_HOME/measurements.db`` (``HWLOOP_HOME`` defaults to ``~/.hwloop``).

    Example:
        >>> default_store_url().startswith("sqlite:///")
        True
    """
    from hwloop.paths import hwloop_home

    return f"sqlite:///{(hwloop_home() / 'measurements.db').resolve()}"


def normalize_url(url: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL for a path, an ``sqlite:`` or a ``postgresql:`` URL (None gives the default).

    Example:
        >>> normalize_url("postgresql://me@127.0.0.1:5432/db")
        'postgresql+psycopg://me@127.0.0.1:5432/db'
    """
    if url is None:
        return default_store_url()
    s = os.fspath(url)
    if not s.strip():
        raise StoreError(f"store URL {s!r} is empty; {_ALLOWED_URLS}")
    if "://" not in s:
        m = re.match(r"([A-Za-z][A-Za-z0-9+.\-]+):", s)
        if m:  # "sqlite:x.db", "postgresql:/h/db": a URL missing its "//", not a file name
            raise StoreError(f"store URL {s!r} has scheme {m.group(1)!r} but no '//'; {_ALLOWED_URLS} "
                             "(a file whose name holds ':' is written ./NAME)")
        return f"sqlite:///{Path(s).expanduser().resolve()}"
    scheme, _, rest = s.partition("://")
    if scheme == "sqlite":
        return s
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise StoreError(f"store URL {s!r} has unknown scheme {scheme!r}; {_ALLOWED_URLS}")


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get("hwloop_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class MeasurementStore:
    """Durable, keyed storage of measurements over SQLite or PostgreSQL.

    Args:
        url: a file path or ``sqlite:///PATH`` (SQLite), ``postgresql://USER[:PW]@HOST[:PORT]/DB``
            (PostgreSQL via psycopg 3), ``sqlite://`` (in memory), or None for :func:`default_store_url`.
        create: create the store (file and schema) if it does not exist. Read-only commands pass
            False: a missing file or a database without hwloop's tables is then an error naming
            it, so a typo'd path never turns into a new, empty store.

    Raises:
        StoreError: the URL is malformed, the database cannot be reached, it is not a hwloop
            store, it was written by a newer schema version, or (``create=False``) it does not exist.

    Example:
        >>> st = MeasurementStore("sqlite://")
        >>> st.count(), st.devices()
        (0, [])
        >>> st.close()
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        self.url = normalize_url(url)
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as e:
            raise StoreError(f"store URL {os.fspath(url) if url else self.url!r} is malformed: {e}") from e
        self._display = parsed.render_as_string(hide_password=True)
        self.backend = "postgresql" if parsed.get_backend_name() == "postgresql" else "sqlite"
        self._known_devices: set[str] = set()
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            db = parsed.database
            if db and db != ":memory:":
                parent = Path(db).parent
                if Path(db).is_dir():
                    raise StoreError(f"store {db} is a folder; {_ALLOWED_URLS}")
                if not create and not Path(db).is_file():
                    raise StoreError(f"store {db} does not exist" + (" (the default store: nothing measured yet)"
                                     if url is None else "") + "; read-only commands never create one "
                                     "(profile, sweep, demo and data import do)")
                if url is None:
                    parent.mkdir(parents=True, exist_ok=True)
                elif not parent.is_dir():
                    raise StoreError(f"store {self._display}: folder {parent} does not exist")
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
            else:
                kwargs["poolclass"] = sa.pool.StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
        else:
            try:
                import psycopg  # noqa: F401
            except ImportError as e:
                raise StoreError("a postgresql:// store needs psycopg 3; install hwloop[postgres]") from e
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": 10}
        self._engine = sa.create_engine(parsed, **kwargs)
        if self.backend == "sqlite":
            sa.event.listen(self._engine, "connect", _sqlite_connect)
            sa.event.listen(self._engine, "begin", _sqlite_begin)
        try:
            with self._write() as conn:
                if self.backend == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
                if not create and detect_version(conn) is None:
                    raise StoreError(f"store {self._display} is not a hwloop store (an empty database); "
                                     "read-only commands never create one (profile, sweep, demo and data import do)")
                self.opened_version = ensure_schema(conn, self._display)
        except BaseException:
            self._engine.dispose()
            raise

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return f"MeasurementStore({self._display!r})"

    def __enter__(self) -> MeasurementStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every connection (the store stays usable; a new call reconnects)."""
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.connect() as conn:
                conn.execution_options(hwloop_write=True)
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as e:
            raise StoreError(f"store {self._display}: {_first_line(e)}") from e

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.connect() as conn, conn.begin():
                yield conn
        except sa.exc.DBAPIError as e:
            raise StoreError(f"store {self._display}: {_first_line(e)}") from e

    def _insert(self, table: sa.Table) -> Any:
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _ensure_device(self, conn: sa.Connection, fp: DeviceFingerprint) -> None:
        key = fp.key
        if key in self._known_devices:
            return
        stmt = self._insert(devices_t).values(key=key, name=fp.name, backend=fp.backend,
                                              fingerprint=json.dumps(fp.to_dict(), sort_keys=True, default=str),
                                              created_at=_now()).on_conflict_do_nothing(index_elements=["key"])
        conn.execute(stmt)

    def _upsert(self, conn: sa.Connection, row: Mapping[str, Any], *, failure_replaces_failure: bool = True,
                replace: bool = False) -> bool:
        ins = self._insert(measurements_t).values(**row)
        if replace:
            key = (measurements_t.c.device_key == row["device_key"]) & (
                measurements_t.c.workload_key == row["workload_key"]) & (measurements_t.c.timing_key == row["timing_key"])
            old = conn.execute(sa.select(measurements_t).where(key)).mappings().first()
            if old is not None:
                conn.execute(history_t.insert().values(**{k: v for k, v in old.items() if k != "id"},
                                                       superseded_at=_now()))
            stmt = ins.on_conflict_do_update(index_elements=["device_key", "workload_key", "timing_key"],
                                             set_={c: getattr(ins.excluded, c) for c in _UPDATABLE})
            conn.execute(stmt)
            return True
        if row["error"] is not None and not failure_replaces_failure:
            stmt = ins.on_conflict_do_nothing(index_elements=["device_key", "workload_key", "timing_key"])
            return conn.execute(stmt.returning(measurements_t.c.id)).first() is not None
        stmt = ins.on_conflict_do_update(
            index_elements=["device_key", "workload_key", "timing_key"],
            set_={c: getattr(ins.excluded, c) for c in _UPDATABLE},
            where=measurements_t.c.error.is_not(None)).returning(measurements_t.c.id)
        return conn.execute(stmt).first() is not None  # no row comes back when an ok row was kept

    # ------------------------------------------------------------------ writing
    def add(self, fp: DeviceFingerprint, req: MeasureRequest, res: MeasureResult, *, replace: bool = False) -> bool:
        """Store one result; it is committed (durable) before this returns.

        With ``replace`` (a re-measurement, e.g. ``hwloop profile --remeasure``) the new result
        becomes the key's row whatever the old one held, and the old row moves to the ``history``
        table in the same transaction (:meth:`history`): the newest is used, nothing is lost.

        Returns:
            True if the row was written; False if its key already holds an ok row (kept as is).

        Raises:
            StoreError: ``res`` answers another request, or the database failed.
        """
        if res.request_key != req.key:
            raise StoreError(f"result for request {res.request_key!r} cannot be stored under request {req.key!r}")
        row = result_row(fp, req, res)
        with self._write() as conn:
            self._ensure_device(conn, fp)
            written = self._upsert(conn, row, replace=replace)
        with self._lock:
            self._known_devices.add(fp.key)
        return written

    # ------------------------------------------------------------------ reading
    def missing(self, fp: DeviceFingerprint, reqs: Sequence[MeasureRequest], timing: TimingConfig, *,
                retry_failed: bool = True) -> list[MeasureRequest]:
        """The requests (deduplicated by key, order kept) with no stored row for ``fp`` and ``timing``.

        With ``retry_failed`` (default) a request whose stored row is a failure counts as missing.
        """
        q = sa.select(measurements_t.c.workload_key, measurements_t.c.error).where(
            measurements_t.c.device_key == fp.key, measurements_t.c.timing_key == timing.key)
        with self._read() as conn:
            have = {k: err is None for k, err in conn.execute(q)}
        out: list[MeasureRequest] = []
        seen: set[str] = set()
        for r in reqs:
            k = r.key
            if k in seen:
                continue
            seen.add(k)
            if k not in have or (retry_failed and not have[k]):
                out.append(r)
        return out

    def get(self, fp_key: str, req_key: str, timing_key: str) -> MeasureResult | None:
        """The stored result for a key, or None."""
        q = sa.select(measurements_t).where(measurements_t.c.device_key == fp_key,
                                            measurements_t.c.workload_key == req_key,
                                            measurements_t.c.timing_key == timing_key)
        with self._read() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else row_result(row)

    def history(self, fp_key: str, req_key: str, timing_key: str) -> list[MeasureResult]:
        """The rows re-measurements superseded for a key, oldest first (the current row is :meth:`get`)."""
        q = sa.select(history_t).where(history_t.c.device_key == fp_key, history_t.c.workload_key == req_key,
                                       history_t.c.timing_key == timing_key).order_by(history_t.c.id)
        with self._read() as conn:
            return [row_result(r) for r in conn.execute(q).mappings()]

    def devices(self) -> list[DeviceFingerprint]:
        """Every device with stored rows (or ever added), by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(devices_t.c.fingerprint).order_by(devices_t.c.name, devices_t.c.key))
            return [DeviceFingerprint.from_dict(json.loads(f)) for (f,) in rows]

    def count(self, *, ok_only: bool = False) -> int:
        """Number of stored rows (only successful ones with ``ok_only``)."""
        q = sa.select(sa.func.count()).select_from(measurements_t)
        if ok_only:
            q = q.where(measurements_t.c.error.is_(None))
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    def counts(self) -> list[dict[str, Any]]:
        """Per device: key, name, backend, ok rows and failed rows."""
        m, d = measurements_t, devices_t
        ok = sa.func.sum(sa.case((m.c.error.is_(None), 1), else_=0))
        q = (sa.select(d.c.key, d.c.name, d.c.backend, sa.func.count(m.c.id), ok)
             .select_from(d.outerjoin(m, m.c.device_key == d.c.key))
             .group_by(d.c.key, d.c.name, d.c.backend).order_by(d.c.name, d.c.key))
        with self._read() as conn:
            return [{"device_key": k, "device_name": n, "backend": b, "rows": int(c or 0), "ok": int(o or 0),
                     "failed": int(c or 0) - int(o or 0)} for k, n, b, c, o in conn.execute(q)]

    def _resolve_device(self, conn: sa.Connection, device: str) -> list[str]:
        keys = [k for (k,) in conn.execute(sa.select(devices_t.c.key).where(
            sa.or_(devices_t.c.key == device, devices_t.c.name == device)))]
        if not keys:
            names = sorted({n for (n,) in conn.execute(sa.select(devices_t.c.name))})
            raise StoreError(f"device {device!r} has no rows in store {self._display}; "
                             f"stored devices: {', '.join(names) or 'none'}")
        return keys

    def rows(self, device: str | None = None, *, kind: str | None = None, mode: str | None = None,
             ok_only: bool = True, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored rows (measurement columns + device name/backend/fingerprint) as dicts, oldest first."""
        from hwloop.devices.base import EXEC_MODES, REQUEST_KINDS

        if kind is not None and kind not in REQUEST_KINDS:
            raise StoreError(f"kind {kind!r} is unknown; allowed: {', '.join(REQUEST_KINDS)}")
        if mode is not None and mode not in EXEC_MODES:
            raise StoreError(f"mode {mode!r} is unknown; allowed: {', '.join(EXEC_MODES)}")
        m, d = measurements_t, devices_t
        q = (sa.select(m, d.c.name.label("device_name"), d.c.backend, d.c.fingerprint.label("fingerprint_json"))
             .join(d, d.c.key == m.c.device_key).order_by(m.c.id))
        with self._read() as conn:
            q = self._where(conn, q, device, kind, mode)
            if ok_only:
                q = q.where(m.c.error.is_(None))
            if limit is not None:
                q = q.limit(int(limit))
            return [dict(r) for r in conn.execute(q).mappings()]

    def _where(self, conn: Any, q: Any, device: str | None, kind: str | None, mode: str | None) -> Any:
        """``q`` restricted to a device (name or key prefix), a request kind and an execution mode."""
        m = measurements_t
        if device is not None:
            q = q.where(m.c.device_key.in_(self._resolve_device(conn, device)))
        if kind is not None:
            q = q.where(m.c.kind == kind)
        if mode is not None:
            q = q.where(m.c.mode == mode)
        return q

    def values(self, column: str, device: str | None = None, *, kind: str | None = None,
               mode: str | None = None) -> list[float]:
        """One statistic column (``latency_ms``, ``min_ms``, ``max_ms``, ``iqr_ms`` or ``cv``) of the ok rows.

        Example:
            >>> MeasurementStore("sqlite://").values("cv")
            []
        """
        stats = ("latency_ms", "min_ms", "max_ms", "iqr_ms", "cv")
        if column not in stats:
            raise StoreError(f"column {column!r} is not a statistic; allowed: {', '.join(stats)}")
        m = measurements_t
        q = sa.select(m.c[column]).where(m.c.error.is_(None))
        with self._read() as conn:
            q = self._where(conn, q, device, kind, mode)
            return [float("nan") if v is None else float(v) for (v,) in conn.execute(q)]

    def to_dataframe(self, device: str | None = None, *, kind: str | None = None, mode: str | None = None,
                     ok_only: bool = True) -> pd.DataFrame:
        """The stored rows as a pandas DataFrame (one row per measurement, flattened spec columns).

        Args:
            device: a fingerprint key or device name (None: every device).
            kind: ``layer``, ``model`` or ``model_layers``.
            mode: execution mode (``eager``, ``cuda_graph``, ``tvm``, ``asic``).
            ok_only: drop failed rows (default).

        Example:
            >>> MeasurementStore("sqlite://").to_dataframe().empty
            True
        """
        from hwloop.store._frame import rows_to_frame

        return rows_to_frame(self.rows(device, kind=kind, mode=mode, ok_only=ok_only))

    # ------------------------------------------------------------------ exchange
    def export(self, path: str | os.PathLike[str]) -> int:
        """Write every row (failures included) to ``.parquet`` or ``.csv``; returns the row count."""
        from hwloop.store._frame import write_frame

        return write_frame(self.to_dataframe(ok_only=False), Path(path))

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Add the rows of a ``.parquet``/``.csv`` export, deduplicated by key.

        An ok row from the file replaces a stored failure; otherwise a key already stored is kept.

        Returns:
            The number of rows written. All rows go in one transaction.
        """
        from hwloop.store._frame import read_frame_rows

        return self.import_rows(*read_frame_rows(Path(path)))

    def import_rows(self, fps: Sequence[DeviceFingerprint], rows: Sequence[Mapping[str, Any]]) -> int:
        """Add rows read by :func:`hwloop.store._frame.read_frame_rows` (one transaction); returns rows written."""
        added = 0
        with self._write() as conn:
            for fp in fps:
                self._ensure_device(conn, fp)
            for row in rows:
                added += self._upsert(conn, row, failure_replaces_failure=False)
        return added


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def result_row(fp: DeviceFingerprint, req: MeasureRequest, res: MeasureResult) -> dict[str, Any]:
    """The ``measurements`` row of one result."""
    from hwloop import __version__

    return {
        "device_key": fp.key, "workload_key": req.key, "timing_key": res.timing.key, "kind": req.kind,
        "op": req.op, "mode": res.timing.mode, "latency_ms": _num(res.latency_ms), "min_ms": _num(res.min_ms),
        "max_ms": _num(res.max_ms), "iqr_ms": _num(res.iqr_ms), "cv": _num(res.cv), "unstable": bool(res.unstable),
        "attempts": int(res.attempts), "error": res.error, "samples_json": json.dumps(list(res.samples_ms)),
        "per_layer_json": json.dumps(dict(res.per_layer_ms), sort_keys=True),
        "extra_json": json.dumps(dict(res.extra), sort_keys=True, default=str),
        "spec_json": json.dumps(req.layer.to_dict(), sort_keys=True) if req.layer is not None else None,
        "model_json": json.dumps(req.model.to_dict(), sort_keys=True) if req.model is not None else None,
        "timing_json": json.dumps(res.timing.to_dict(), sort_keys=True), "created_at": _now(),
        "hwloop_version": __version__,
    }


def row_result(row: Mapping[Any, Any]) -> MeasureResult:
    """Rebuild a :class:`MeasureResult` from a ``measurements`` row."""
    def f(k: str) -> float:
        v = row[k]
        return float("nan") if v is None else float(v)

    return MeasureResult(
        request_key=row["workload_key"], timing=TimingConfig.from_dict(json.loads(row["timing_json"])),
        latency_ms=f("latency_ms"), min_ms=f("min_ms"), max_ms=f("max_ms"), iqr_ms=f("iqr_ms"), cv=f("cv"),
        samples_ms=tuple(json.loads(row["samples_json"])), unstable=bool(row["unstable"]),
        attempts=int(row["attempts"]), error=row["error"], per_layer_ms=json.loads(row["per_layer_json"]),
        extra=json.loads(row["extra_json"]))


def specs_from_frame(df: pd.DataFrame) -> list[LayerSpec]:
    """Rebuild the :class:`~hwloop.workload.LayerSpec` of each row from its ``spec_json`` column.

    Raises:
        StoreError: the frame has no ``spec_json`` column or a row has none (filter ``kind="layer"``).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"spec_json": ['{"op": "linear", "in_shape": [1, 8], "out_channels": 4}']})
        >>> specs_from_frame(df)[0].macs
        32
    """
    from hwloop.workload import LayerSpec

    if "spec_json" not in df.columns:
        raise StoreError(f"frame has no 'spec_json' column; columns: {', '.join(map(str, df.columns))}")
    out = []
    for i, s in enumerate(df["spec_json"].tolist()):
        if not isinstance(s, str) or not s:
            raise StoreError(f"row {i} has no spec_json (a model row?); select kind='layer' rows first")
        out.append(LayerSpec.from_dict(json.loads(s)))
    return out
