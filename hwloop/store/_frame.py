"""Store rows ↔ pandas frames ↔ Parquet/CSV files."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
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
        rec: dict[str, Any] = {c: r.get(c) for c in FRAME_COLUMNS}
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


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v)


#: numeric columns: (name, strictly positive?) -- latencies are > 0 ms, spreads >= 0
_NUMERIC = (("latency_ms", True), ("min_ms", True), ("max_ms", True), ("iqr_ms", False), ("cv", False))


def _float(v: Any, col: str, positive: bool) -> float | None:
    """A finite number in range, or None when missing; ValueError naming the value otherwise."""
    if _missing(v):
        return None
    allowed = f"allowed: a finite number {'> 0' if positive else '>= 0'}"
    try:
        if isinstance(v, (bool, bytes)):
            raise TypeError
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{col}={v!r} is not a number; {allowed}") from None
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise ValueError(f"{col}={v!r} is out of range; {allowed}")
    return f


def _int(v: Any, col: str, lo: int) -> int:
    try:
        if isinstance(v, bool) or _missing(v):
            raise TypeError
        f = float(v)
        if not f.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{col}={v!r} is not an integer; allowed: an integer >= {lo}") from None
    if f < lo:
        raise ValueError(f"{col}={v!r} is out of range; allowed: an integer >= {lo}")
    return int(f)


def _bool(v: Any, col: str = "unstable") -> bool:
    if isinstance(v, str):
        if v.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{col}={v!r} is not a boolean; allowed: true, false, 1, 0")
        return v.lower() in ("true", "1")
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    raise ValueError(f"{col}={v!r} is not a boolean; allowed: true, false, 1, 0")


def _json(v: Any, col: str, kind: type, *, required: bool = False) -> Any:
    """Parse a JSON text column into ``kind`` (dict or list); missing gives None unless ``required``."""
    if _missing(v):
        if required:
            raise ValueError(f"{col} is missing; allowed: a JSON {'object' if kind is dict else 'array'}")
        return None
    try:
        out = json.loads(str(v))
    except json.JSONDecodeError as e:
        raise ValueError(f"{col}={_short(v)} is not valid JSON ({e.msg}); allowed: a JSON "
                         f"{'object' if kind is dict else 'array'}") from None
    if not isinstance(out, kind):
        raise ValueError(f"{col}={_short(v)} is a JSON {type(out).__name__}; allowed: a JSON "
                         f"{'object' if kind is dict else 'array (list)'}")
    return out


def _short(v: Any, n: int = 40) -> str:
    t = repr(v)
    return t if len(t) <= n else t[: n - 3] + "..."


def _samples(v: Any) -> list[float]:
    xs = _json(v, "samples_json", list, required=True)
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise ValueError(f"samples_json holds {x!r}; allowed: a list of finite numbers >= 0 (ms)")
    return [float(x) for x in xs]


def _created(v: Any) -> str:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if _missing(v):
        return ""
    try:
        return pd.Timestamp(str(v)).isoformat()
    except (ValueError, TypeError):
        raise ValueError(f"created_at={_short(v)} is not a timestamp; allowed: ISO 8601, e.g. "
                         "2026-01-31T12:00:00+00:00") from None


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
            rows.append(_row(r, fps))
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        except HwloopError as e:
            raise StoreError(f"{where}: {e}") from e
    return list(fps.values()), rows


def _row(r: dict[str, Any], fps: dict[str, DeviceFingerprint]) -> dict[str, Any]:
    """One validated ``measurements`` row of an export (ValueError naming the bad value)."""
    from hwloop.devices.base import EXEC_MODES

    fpd = _json(r["fingerprint_json"], "fingerprint_json", dict, required=True)
    fp = DeviceFingerprint.from_dict(fpd)
    if fp.key != r["device_key"]:
        raise ValueError(f"device_key {r['device_key']!r} does not match its fingerprint_json ({fp.key})")
    if r["kind"] not in REQUEST_KINDS:
        raise ValueError(f"kind {r['kind']!r} is unknown; allowed: {', '.join(REQUEST_KINDS)}")
    if r["mode"] not in EXEC_MODES:
        raise ValueError(f"mode {r['mode']!r} is unknown; allowed: {', '.join(EXEC_MODES)}")
    spec = _json(r.get("spec_json"), "spec_json", dict)
    model = _json(r.get("model_json"), "model_json", dict)
    req = MeasureRequest.from_dict({"kind": r["kind"], "layer": spec, "model": model})
    if req.key != r["workload_key"]:
        raise ValueError(f"workload_key {r['workload_key']!r} does not match its spec ({req.key})")
    if str(r["op"]) != req.op:
        raise ValueError(f"op {r['op']!r} does not match its spec ({req.op!r})")
    timing = TimingConfig.from_dict(_json(r["timing_json"], "timing_json", dict, required=True))
    if timing.key != r["timing_key"]:
        raise ValueError(f"timing_key {r['timing_key']!r} does not match its timing ({timing.key})")
    err = _text(r.get("error"))
    samples = _samples(r["samples_json"])
    nums = {c: _float(r.get(c), c, pos) for c, pos in _NUMERIC}
    if err is None:
        if not samples:
            raise ValueError("samples_json=[]: an ok row needs samples (a row without them must carry an error)")
        if nums["latency_ms"] is None:
            raise ValueError("latency_ms is missing; an ok row needs a finite latency_ms > 0")
    per_layer = _json(r.get("per_layer_json"), "per_layer_json", dict) or {}
    for k, v in per_layer.items():
        _float(v, f"per_layer_json[{k!r}]", False)
    extra = _json(r.get("extra_json"), "extra_json", dict) or {}
    fps.setdefault(fp.key, fp)
    return {
        "device_key": fp.key, "workload_key": req.key, "timing_key": timing.key, "kind": req.kind,
        "op": req.op, "mode": str(r["mode"]), **nums,
        "unstable": _bool(r["unstable"]), "attempts": _int(r["attempts"], "attempts", 0), "error": err,
        "samples_json": json.dumps(samples), "per_layer_json": json.dumps(per_layer, sort_keys=True),
        "extra_json": json.dumps(extra, sort_keys=True), "spec_json": json.dumps(spec, sort_keys=True) if spec else None,
        "model_json": json.dumps(model, sort_keys=True) if model else None,
        "timing_json": json.dumps(timing.to_dict(), sort_keys=True), "created_at": _created(r.get("created_at")),
        "hwloop_version": _text(r.get("hwloop_version")) or "unknown",
    }
