"""Store schema: the SQLAlchemy tables of each version and the upgrade path between them.

Version history:

* **v0** (prototype): one ``results`` table holding the device fingerprint inline; no
  ``meta`` table, no ``mode``, ``per_layer_json``, ``extra_json`` or ``hwloop_version``.
* **v1**: ``meta`` (``schema_version``), ``devices`` (key, name, backend, fingerprint JSON)
  and ``measurements`` with a unique constraint on (device_key, workload_key, timing_key).
  ``claims`` (work leases of concurrent sweeps, :mod:`hwloop.store._claims`) is additive: it
  is created on open when missing, so a v1 store of any age gains it without a version bump
  and older hwloop versions still open the store (they ignore the table). ``history`` (rows a
  re-measurement superseded, :meth:`MeasurementStore.add` with ``replace=True``) is additive in
  the same way.

``_MIGRATIONS`` maps a version to the function upgrading it to the next one; every
upgrade runs inside the same transaction as the version bump, so a crash leaves the old
version intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from hwloop.errors import StoreError

__all__ = ["SCHEMA_VERSION", "metadata", "meta_t", "devices_t", "measurements_t", "claims_t", "history_t", "V0_DDL",
           "detect_version", "ensure_schema"]

SCHEMA_VERSION = 1

metadata = sa.MetaData()

meta_t = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

devices_t = sa.Table(
    "devices", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("backend", sa.String(64), nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

measurements_t = sa.Table(
    "measurements", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_key", sa.String(64), sa.ForeignKey("devices.key"), nullable=False),
    sa.Column("workload_key", sa.String(64), nullable=False),
    sa.Column("timing_key", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("op", sa.String(32), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("latency_ms", sa.Float), sa.Column("min_ms", sa.Float), sa.Column("max_ms", sa.Float),
    sa.Column("iqr_ms", sa.Float), sa.Column("cv", sa.Float),
    sa.Column("unstable", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("error", sa.Text),
    sa.Column("samples_json", sa.Text, nullable=False),
    sa.Column("per_layer_json", sa.Text, nullable=False),
    sa.Column("extra_json", sa.Text, nullable=False),
    sa.Column("spec_json", sa.Text),
    sa.Column("model_json", sa.Text),
    sa.Column("timing_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("hwloop_version", sa.String(32), nullable=False),
    sa.UniqueConstraint("device_key", "workload_key", "timing_key", name="uq_measurement_key"),
)

#: In-flight work of concurrent sweeps: one row per (device, workload, timing) key a worker is measuring,
#: until ``expires_at`` (seconds since the epoch on the database's clock; renewed by the worker's heartbeat).
#: A row whose lease expired may be taken over; a finished key's row is deleted (its measurement is the record).
claims_t = sa.Table(
    "claims", metadata,
    sa.Column("device_key", sa.String(64), primary_key=True),
    sa.Column("workload_key", sa.String(64), primary_key=True),
    sa.Column("timing_key", sa.String(64), primary_key=True),
    sa.Column("worker", sa.String(200), nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

#: Measurement rows a re-measurement replaced (``add(..., replace=True)``): the same columns as ``measurements``
#: (no unique key: a key may have many) plus when the row was superseded. Nothing stored is lost.
history_t = sa.Table(
    "history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *(sa.Column(c.name, c.type, nullable=c.nullable) for c in measurements_t.columns if c.name != "id"),
    sa.Column("superseded_at", sa.String(40), nullable=False),
)

#: The v0 (prototype) layout, kept to create "old" stores in upgrade tests on any backend.
V0_DDL = """CREATE TABLE results (
    id INTEGER PRIMARY KEY,
    device_key VARCHAR(64) NOT NULL,
    device_name VARCHAR(200) NOT NULL,
    backend VARCHAR(64) NOT NULL,
    fingerprint_json TEXT NOT NULL,
    workload_key VARCHAR(64) NOT NULL,
    timing_key VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    op VARCHAR(32) NOT NULL,
    latency_ms FLOAT, min_ms FLOAT, max_ms FLOAT, iqr_ms FLOAT, cv FLOAT,
    unstable BOOLEAN NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT,
    samples_json TEXT NOT NULL,
    spec_json TEXT,
    model_json TEXT,
    timing_json TEXT NOT NULL,
    created_at VARCHAR(40) NOT NULL,
    UNIQUE (device_key, workload_key, timing_key)
)"""


def detect_version(conn: sa.Connection) -> int | None:
    """The schema version of the database behind ``conn``; None when it holds no tables at all."""
    names = set(sa.inspect(conn).get_table_names())
    if "meta" in names:
        row = conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == "schema_version")).first()
        if row is None:
            raise StoreError("store has a 'meta' table without schema_version; it is not a hwloop store")
        try:
            return int(row[0])
        except ValueError as e:
            raise StoreError(f"store schema_version {row[0]!r} is not an integer") from e
    if "results" in names:
        return 0
    if names:
        raise StoreError(f"database holds tables {sorted(names)} but no hwloop 'meta' table; "
                         "point --store at a hwloop store or an empty database")
    return None


def _upgrade_0_to_1(conn: sa.Connection) -> None:
    """v0 → v1: split devices out of ``results``, derive ``mode`` from the timing JSON."""
    metadata.create_all(conn, tables=[devices_t, measurements_t])
    old = sa.table("results", *(sa.column(c) for c in (
        "device_key", "device_name", "backend", "fingerprint_json", "workload_key", "timing_key", "kind", "op",
        "latency_ms", "min_ms", "max_ms", "iqr_ms", "cv", "unstable", "attempts", "error", "samples_json",
        "spec_json", "model_json", "timing_json", "created_at")))
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for r in conn.execute(sa.select(old).order_by(sa.text("id"))).mappings():
        if r["device_key"] not in seen:
            seen.add(r["device_key"])
            conn.execute(devices_t.insert().values(key=r["device_key"], name=r["device_name"], backend=r["backend"],
                                                   fingerprint=r["fingerprint_json"], created_at=r["created_at"]))
        timing = json.loads(r["timing_json"])
        rows.append({k: r[k] for k in ("device_key", "workload_key", "timing_key", "kind", "op", "latency_ms",
                                       "min_ms", "max_ms", "iqr_ms", "cv", "error", "samples_json", "spec_json",
                                       "model_json", "timing_json", "created_at")}
                    | {"unstable": bool(r["unstable"]), "attempts": int(r["attempts"]),
                       "mode": str(timing.get("mode", "eager")), "per_layer_json": "{}", "extra_json": "{}",
                       "hwloop_version": "0"})
    if rows:
        conn.execute(measurements_t.insert(), rows)
    conn.execute(sa.text("DROP TABLE results"))
    metadata.create_all(conn, tables=[meta_t])


#: from_version -> function upgrading a connection's schema to from_version + 1.
_MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {0: _upgrade_0_to_1}


def ensure_schema(conn: sa.Connection, url: str) -> int:
    """Create or upgrade the schema inside the caller's (locked, write) transaction.

    Returns:
        The version found before any upgrade (``SCHEMA_VERSION`` for a new store).

    Raises:
        StoreError: the store was written by a newer hwloop, or is not a hwloop store.
    """
    found = detect_version(conn)
    if found is None:
        metadata.create_all(conn)
        conn.execute(meta_t.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise StoreError(f"store {url} has schema version {found}, newer than this hwloop's {SCHEMA_VERSION}; "
                         "upgrade hwloop to open it")
    v = found
    while v < SCHEMA_VERSION:
        if v not in _MIGRATIONS:
            raise StoreError(f"store {url} has schema version {v} and no upgrade path; allowed: {sorted(_MIGRATIONS)}")
        _MIGRATIONS[v](conn)
        v += 1
    if found < SCHEMA_VERSION:
        conn.execute(meta_t.delete().where(meta_t.c.key == "schema_version"))
        conn.execute(meta_t.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
    tables = sa.inspect(conn).get_table_names()
    if "claims" not in tables:  # additive (see the module docstring)
        claims_t.create(conn)
    if "history" not in tables:  # additive too
        history_t.create(conn)
    return found
