"""Store rows ↔ pandas frames ↔ Parquet/CSV files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from hwloop.devices.base import REQUEST_KINDS, DeviceFingerprint, MeasureRequest, TimingConfig
from hwloop.errors import HwloopError, StoreError

__all__ = ["FRAME_COLUMNS", "LAYER_COLUMNS", "rows_to_frame", "write_frame", "read_frame_rows"]

#: Columns every frame has, in order (``layer`` convenience columns follow, then ``model``).
FRAME_COLUMNS = ("device_key", "device_name", "backend", "kind", "op", "workload_key", "timing_key", "mode",
                 "latency_ms", "min_ms", "max_ms", "iqr_ms", "cv", "unstable", "attempts", "error", "created_at",
                 "hwloop_version", "spec_json", "model_json", "per_layer_json", "extra_json", "samples_json",
                 "timing_json", "fingerprint_json")
#: Flattened LayerSpec facts (rank/w_bits/a_bits are 0 for dense / native precision).
LAYER_COLUMNS = ("batch", "in_channels", "out_channels", "kernel_h", "kernel_w", "stride", "stride_w",
                 "padding", "groups", "h", "w", "dtype", "variant", "bias", "rank", "w_bits", "a_bits", "macs",
                 "params", "bytes_moved", "layer_name")
_TEXT = ("device_key", "device_name", "backend", "kind", "op", "workload_key", "timing_key", "mode", "error",
         "created_at", "hwloop_version", "spec_json", "model_json", "per_layer_json", "extra_json", "samples_json",
         "timing_json", "fingerprint_json", "dtype", "variant", "layer_name", "model")
_REQUIRED = ("device_key", "workload_key", "timing_key", "kind", "op", "mode", "unstable", "attempts",
             "samples_json", "timing_json", "fingerprint_json")


def _layer_facts(spec_json: str) -> dict[str, Any]:
    from hwloop.workload import LayerSpec

    s = LayerSpec.from_dict(json.loads(spec_json))
    if len(s.in_shape) == 4:
        h, w = s.in_shape[2], s.in_shape[3]
    else:
        h, w = (math.prod(s.in_shape[1:-1]) if len(s.in_shape) > 2 else 1), 1
    return {"batch": s.batch, "in_channels": s.in_channels, "out_channels": s.out_channels,
            "kernel_h": s.kernel[0], "kernel_w": s.kernel[1], "stride": s.stride[0], "stride_w": s.stride[1],
            "padding": s.padding[0], "groups": s.groups, "h": h, "w": w, "dtype": s.dtype, "variant": s.variant,
            "bias": s.bias, "rank": s.rank or 0, "w_bits": s.w_bits or 0, "a_bits": s.a_bits or 0,
            "macs": s.macs, "params": s.params, "bytes_moved": s.bytes_moved, "layer_name": s.name}


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame from :meth:`MeasurementStore.rows` output (JSON text columns kept, facts flattened)."""
    recs = []
    for r in rows:
        rec = {c: r.get(c) for c in FRAME_COLUMNS}
        for c in ("latency_ms", "min_ms", "max_ms", "iqr_ms", "cv"):
            rec[c] = float("nan") if rec[c] is None else float(rec[c])
        rec["unstable"] = bool(rec["unstable"])
        rec["attempts"] = int(rec["attempts"])
        if r.get("spec_json"):
            rec.update(_layer_facts(r["spec_json"]))
        if r.get("model_json"):
            m = json.loads(r["model_json"])
            rec.update({"model": m["name"], "batch": m.get("batch", 1), "dtype": m.get("dtype", "float32")})
        recs.append(rec)
    df = pd.DataFrame.from_records(recs, columns=[*FRAME_COLUMNS, *LAYER_COLUMNS, "model"])
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True, format="ISO8601")
    df["unstable"] = df["unstable"].astype(bool)
    return df


def write_frame(df: pd.DataFrame, path: Path) -> int:
    """Write ``df`` to ``path`` (``.parquet`` or ``.csv``); returns the number of rows."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise StoreError(f"export path {str(path)!r} must end in .parquet or .csv")
    if not path.parent.is_dir():
        raise StoreError(f"export folder {str(path.parent)!r} does not exist")
    out = df.copy()
    out["created_at"] = out["created_at"].map(lambda t: t.isoformat() if isinstance(t, pd.Timestamp) else None)
    if suffix == ".parquet":
        out.to_parquet(path, index=False)
    else:
        out.to_csv(path, index=False)
    return len(out)


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return str(v)


def _float(v: Any) -> float | None:
    if v is None or v is pd.NA:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a boolean: {v!r}")
        return v.lower() in ("true", "1")
    return bool(v)


def read_frame_rows(path: Path) -> tuple[list[DeviceFingerprint], list[dict[str, Any]]]:
    """Read an export back into device fingerprints and ``measurements`` rows (keys are checked)."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise StoreError(f"import path {str(path)!r} must end in .parquet or .csv")
    if not path.is_file():
        raise StoreError(f"import file {str(path)!r} does not exist")
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={c: "object" for c in _TEXT})
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise StoreError(f"cannot read {str(path)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise StoreError(f"{str(path)!r} is not a hwloop export: missing column(s) {', '.join(missing)}")
    fps: dict[str, DeviceFingerprint] = {}
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(df.to_dict("records")):
        where = f"{path.name} row {i}"
        try:
            fp = DeviceFingerprint.from_dict(json.loads(str(r["fingerprint_json"])))
            if fp.key != r["device_key"]:
                raise ValueError(f"device_key {r['device_key']!r} does not match its fingerprint ({fp.key})")
            if r["kind"] not in REQUEST_KINDS:
                raise ValueError(f"kind {r['kind']!r} is unknown")
            spec, model = _text(r.get("spec_json")), _text(r.get("model_json"))
            req = MeasureRequest.from_dict({"kind": r["kind"], "layer": json.loads(spec) if spec else None,
                                            "model": json.loads(model) if model else None})
            if req.key != r["workload_key"]:
                raise ValueError(f"workload_key {r['workload_key']!r} does not match its spec ({req.key})")
            timing = TimingConfig.from_dict(json.loads(str(r["timing_json"])))
            if timing.key != r["timing_key"]:
                raise ValueError(f"timing_key {r['timing_key']!r} does not match its timing ({timing.key})")
            err = _text(r.get("error"))
            samples = json.loads(str(r["samples_json"]))
            if err is None and not samples:
                raise ValueError("an ok row needs samples")
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
            raise StoreError(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        except HwloopError as e:
            raise StoreError(f"{where}: {e}") from e
        fps.setdefault(fp.key, fp)
        created = r.get("created_at")
        rows.append({
            "device_key": fp.key, "workload_key": req.key, "timing_key": timing.key, "kind": req.kind,
            "op": str(r["op"]), "mode": str(r["mode"]),
            **{c: _float(r.get(c)) for c in ("latency_ms", "min_ms", "max_ms", "iqr_ms", "cv")},
            "unstable": _bool(r["unstable"]), "attempts": int(r["attempts"]), "error": err,
            "samples_json": json.dumps(samples), "per_layer_json": _text(r.get("per_layer_json")) or "{}",
            "extra_json": _text(r.get("extra_json")) or "{}", "spec_json": spec, "model_json": model,
            "timing_json": json.dumps(timing.to_dict(), sort_keys=True),
            "created_at": (created.isoformat() if isinstance(created, pd.Timestamp) else _text(created)) or "",
            "hwloop_version": _text(r.get("hwloop_version")) or "unknown",
        })
    return list(fps.values()), rows
