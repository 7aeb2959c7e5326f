"""benchmarks/record_cpu_dataset.py records into the measurement store: an earlier JSON-lines log is imported once,
the exports are the device's stored rows, a bad store URL is one line and exit code 2.

(Measuring itself is run_sweep's, tested in tests/test_sweep.py; a whole --quick recording takes minutes.)
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hwloop.devices import MeasureRequest, create_device
from hwloop.predict.sampling import random_layer_specs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _record(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "record_cpu_dataset.py"), *args], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=300, check=False)


def _legacy_log(raw: Path) -> tuple[list[str], list[str]]:
    """The earlier recorder's files: layers.jsonl (6 asic-tpu32 layers, a torn last line), repeat.jsonl (2)."""
    dev = create_device("asic-tpu32")
    fp = dev.fingerprint().to_dict()
    reqs = [MeasureRequest.for_layer(s) for s in random_layer_specs(6, np.random.default_rng(3))]
    res = dev.measure(reqs)
    raw.mkdir()
    for name, rows in (("layers.jsonl", list(zip(reqs, res))), ("repeat.jsonl", list(zip(reqs, res))[:2])):
        lines = [json.dumps({"request_key": q.key, "fingerprint": fp, "request": q.to_dict(), "result": r.to_dict()})
                 for q, r in rows]
        (raw / name).write_text("\n".join(lines) + "\n" + ('{"request_key": "torn' if name == "layers.jsonl" else ""),
                                encoding="utf-8")
    (raw / "workloads.jsonl").write_text('{"model_key": "m", "model": {}, "workload": {}}\n', encoding="utf-8")
    return [q.key for q in reqs], [q.key for q in reqs[:2]]


def test_an_old_log_is_imported_once_and_exported_from_the_store(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    keys, rep_keys = _legacy_log(raw)
    r = _record("--device", "asic-tpu32", "--export-only", "--raw", str(raw), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "imported 6 rows" in r.stdout and "imported 2 rows" in r.stdout and (raw / "jsonl-imported").is_file()
    m, rep = pd.read_parquet(out / "measurements.parquet"), pd.read_parquet(out / "repeat.parquet")
    assert list(m["workload_key"]) == keys and list(rep["workload_key"]) == rep_keys
    assert (m["error"].isna()).all() and (m["latency_ms"] > 0).all()
    # the format of the shipped data sets (recorded by the earlier recorder): the same columns, in order
    assert pq.read_schema(out / "measurements.parquet").names == \
        pq.read_schema(REPO / "measurements" / "asic-tpu32" / "measurements.parquet").names
    assert gzip.decompress((out / "workloads.jsonl.gz").read_bytes()) == (raw / "workloads.jsonl").read_bytes()
    # the stores are the log now: a second run imports nothing and exports the same rows
    r = _record("--device", "asic-tpu32", "--export-only", "--raw", str(raw), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0 and "imported " not in r.stdout.replace(str(tmp_path), ""), r.stderr[-2000:]
    again = pd.read_parquet(out / "measurements.parquet")
    assert list(again["workload_key"]) == keys and list(again.columns) == list(m.columns)
    assert {p.name for p in raw.iterdir()} >= {"measurements.db", "repeat.db", "layers.jsonl"}  # the log is kept


def test_a_bad_store_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = _record("--device", "asic-tpu32", "--export-only", "--raw", str(tmp_path / "raw"), "--out",
                str(tmp_path / "out"), "--store", "mysql://x@y/z", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "mysql://x@y/z" in r.stderr and len(r.stderr.strip().splitlines()) == 1
