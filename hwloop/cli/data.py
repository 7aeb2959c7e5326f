"""``hwloop data list|show|export|import``: inspect and move stored measurements."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hwloop.cli._app import data_app
from hwloop.errors import ConfigError

__all__ = ["data_list", "data_show", "data_export", "data_import"]

_STORE_HELP = "store URL or SQLite path (default ~/.hwloop/measurements.db)"


@data_app.command("list")
def data_list(store: str = typer.Option(None, "--store", help=_STORE_HELP)) -> None:
    """Devices in the store with their row counts."""
    from rich.table import Table

    from hwloop.cli._common import console
    from hwloop.store import MeasurementStore

    with MeasurementStore(store, create=False) as st:
        rows = st.counts()
        table = Table(title=f"{st!r} (schema v{st.opened_version})")
        for col in ("device", "key", "backend", "ok", "failed"):
            table.add_column(col, justify="right" if col in ("ok", "failed") else "left")
        for r in rows:
            table.add_row(r["device_name"], r["device_key"], r["backend"], str(r["ok"]), str(r["failed"]))
        console.print(table)
        console.print(f"{sum(r['rows'] for r in rows)} rows, {len(rows)} devices")


def _what(r: dict) -> str:  # type: ignore[type-arg]
    if r.get("spec_json"):
        s = json.loads(r["spec_json"])
        shape = "x".join(str(x) for x in s["in_shape"])
        k = s.get("kernel", [1, 1])
        geo = f" k{k[0]} s{s.get('stride', [1])[0]} g{s.get('groups', 1)}" if s["op"] == "conv2d" else ""
        return f"{s['op']} {shape}→{s.get('out_channels')}{geo} {s.get('dtype', '')}"
    if r.get("model_json"):
        m = json.loads(r["model_json"])
        kw = ",".join(f"{k}={v}" for k, v in sorted(m.get("kwargs", {}).items()))
        return f"{m['name']}({kw})"[:60]
    return r["workload_key"]


@data_app.command("show")
def data_show(
    device: str = typer.Option(None, "--device", "-d", help="device name or fingerprint key"),
    kind: str = typer.Option(None, "--kind", help="layer, model or model_layers"),
    limit: int = typer.Option(20, "--limit", "-n", help="rows to show"),
    failed: bool = typer.Option(False, "--failed", help="include failed rows"),
    store: str = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """Stored measurements as a table (oldest first)."""
    from rich.table import Table

    from hwloop.cli._common import console
    from hwloop.store import MeasurementStore

    if limit < 1:
        raise ConfigError(f"--limit {limit} must be >= 1")
    with MeasurementStore(store, create=False) as st:
        rows = st.rows(device, kind=kind, ok_only=not failed, limit=limit)
        table = Table(title=f"{st!r}: {len(rows)} rows")
        for col in ("device", "kind", "workload", "latency ms", "cv", "mode", "status"):
            table.add_column(col, justify="right" if col in ("latency ms", "cv") else "left")
        for r in rows:
            lat = "" if r["latency_ms"] is None else f"{r['latency_ms']:.4f}"
            cv = "" if r["cv"] is None else f"{r['cv']:.3f}"
            status = r["error"] or ("unstable" if r["unstable"] else "ok")
            table.add_row(r["device_name"], r["kind"], _what(r), lat, cv, r["mode"], status[:60])
        console.print(table)


@data_app.command("export")
def data_export(
    path: Path = typer.Argument(..., help="output file: .parquet or .csv"),
    store: str = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """Write every stored row (failures included) to Parquet or CSV."""
    from hwloop.cli._common import console
    from hwloop.store import MeasurementStore

    if path.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"export path {str(path)!r} must end in .parquet or .csv")
    with MeasurementStore(store, create=False) as st:
        n = st.export(path)
    console.print(f"exported {n} rows to {path}")


@data_app.command("import")
def data_import(
    path: Path = typer.Argument(..., help="a .parquet or .csv written by 'hwloop data export'"),
    store: str = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """Add the rows of an export; keys that already hold an ok row are kept."""
    from hwloop.cli._common import console
    from hwloop.store import MeasurementStore

    from hwloop.store._frame import read_frame_rows

    fps, rows = read_frame_rows(path)  # the whole file is checked before the store is opened (or created)
    with MeasurementStore(store) as st:
        n = st.import_rows(fps, rows)
        total = st.count()
    console.print(f"imported {n} rows from {path} ({total} rows in store)")
