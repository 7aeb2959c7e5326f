"""Recreate ``store_v0.db``: a tiny store in the v0 (prototype) layout, kept as an upgrade-test asset.

The committed ``store_v0.db`` is the artefact the tests open; this script documents how it was made
(run it only to regenerate the asset: ``python tests/assets/make_store_v0.py``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

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

# Keys below were computed by hwloop 0.1 (DeviceFingerprint.key, LayerSpec.key, TimingConfig.key, ModelRef).
FP = {"name": "old-cpu", "backend": "cpu", "identity": {"cpu": "Prototype CPU", "threads": 1}, "info": {}}
TIMING = {"warmup": 5, "repeats": 3, "number": 0, "min_repeat_ms": 1.0, "mode": "eager", "max_cv": 0.05,
          "max_retries": 2, "timeout_s": 60.0}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from hwloop.devices.base import DeviceFingerprint, MeasureRequest, TimingConfig
    from hwloop.models import ModelRef
    from hwloop.workload import LayerSpec

    fp = DeviceFingerprint.from_dict(FP)
    t = TimingConfig.from_dict(TIMING)
    conv = MeasureRequest.for_layer(LayerSpec("conv2d", (1, 16, 16, 16), out_channels=32, kernel=3, padding=1))
    lin = MeasureRequest.for_layer(LayerSpec("linear", (1, 64), out_channels=10))
    model = MeasureRequest.for_model(ModelRef("small_cnn"))
    rows = [
        (conv, 0.125, 0.120, 0.131, [0.120, 0.125, 0.131], None),
        (lin, 0.004, 0.004, 0.005, [0.004, 0.004, 0.005], None),
        (model, None, None, None, [], "RuntimeError: out of memory"),
    ]
    out = Path(__file__).with_name("store_v0.db")
    out.unlink(missing_ok=True)
    con = sqlite3.connect(out)
    con.execute(V0_DDL)
    for req, lat, lo, hi, samples, err in rows:
        con.execute(
            "INSERT INTO results (device_key, device_name, backend, fingerprint_json, workload_key, timing_key, kind,"
            " op, latency_ms, min_ms, max_ms, iqr_ms, cv, unstable, attempts, error, samples_json, spec_json,"
            " model_json, timing_json, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (fp.key, fp.name, fp.backend, json.dumps(fp.to_dict()), req.key, t.key, req.kind, req.op, lat, lo, hi,
             None if lat is None else hi - lo, None if lat is None else 0.04, 0, 1, err, json.dumps(samples),
             json.dumps(req.layer.to_dict()) if req.layer else None,
             json.dumps(req.model.to_dict()) if req.model else None, json.dumps(TIMING),
             "2025-01-01T00:00:00+00:00"))
    con.commit()
    con.execute("VACUUM")
    con.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
