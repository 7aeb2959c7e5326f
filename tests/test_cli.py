"""The CLI: commands run, and every bad input is one line on stderr with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwloop.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hwloop", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_devices_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "list"]) == 0
    assert "local-cpu" in capsys.readouterr().out
    assert main(["devices", "show", "local-cpu", "--json", "--probe"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "cpu" and out["fingerprint"]["backend"] == "cpu"
    assert len(out["fingerprint"]["key"]) == 16


def test_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["packages"]["torch"]
    assert rep["local_cpu_fingerprint"]["identity"]["threads"] >= 1


@pytest.mark.parametrize("args, fragment", [
    (["devices", "show", "nope"], "device 'nope' is unknown"),
    (["profile", "nonexistent_model", "--no-store"], "model 'nonexistent_model' is unknown"),
    (["profile", "small_cnn", "--no-store", "--kwargs", "{bad"], "--kwargs"),
    (["profile", "small_cnn", "--no-store", "--input-shape", "3,a"], "--input-shape"),
    (["profile", "small_cnn", "--no-store", "--repeats", "-3"], "repeats=-3"),
    (["profile", "small_cnn", "--no-store", "--device", "missing.toml"], "does not exist"),
    (["profile", "small_cnn", "--no-store", "--dtype", "int3"], "dtype 'int3' is unknown"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], fragment: str) -> None:
    p = run_cli(*args)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert fragment in lines[0]
    assert "Traceback" not in p.stderr


def test_profile_without_store_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "small_cnn", "--no-store", "--repeats", "3", "--warmup", "1", "--all"]) == 0
    out = capsys.readouterr().out
    assert "whole model:" in out and "features.0" in out


def test_profile_flags_stale_stored_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `hwloop profile` reuses the stored rows; the whole model is measured once more, and a stored row 10x
    faster than this device runs now (as if taken on a faster day) gives the stale warning naming --remeasure. A
    fresh profile (nothing reused) gives none."""
    import dataclasses
    import re

    from hwloop.cli._common import timing_with
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.devices.profiles import load_profile
    from hwloop.models import ModelRef
    from hwloop.store import MeasurementStore

    db = tmp_path / "m.db"
    args = ["profile", "small_cnn", "--store", str(db), "--repeats", "5", "--warmup", "1"]
    assert main(args) == 0
    assert "may be stale" not in capsys.readouterr().err
    dev = create_device("local-cpu")
    timing = timing_with(load_profile("local-cpu").timing, repeats=5, warmup=1)
    fp, req = dev.fingerprint(), MeasureRequest.for_model(ModelRef("small_cnn"), per_layer=True)
    with MeasurementStore(db) as st:
        res = st.get(fp.key, req.key, timing.key)
        assert res is not None and res.ok
        # stored stable, so it is reused however noisy this machine made the first measurement
        st.add(fp, req, dataclasses.replace(res, latency_ms=res.latency_ms / 10, unstable=False), replace=True)
    assert main(args) == 0
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert "stored measurements may be stale" in err and "--remeasure" in err


def test_bench_list_and_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "list"]) == 0
    assert "bench_harness" in capsys.readouterr().out
    assert main(["bench", "run", "no_such_bench"]) == 2
    assert "benchmark 'no_such_bench' is unknown" in capsys.readouterr().err


def test_cuda_device_without_gpu_is_one_line_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = run_cli("profile", "small_cnn", "--no-store", "--device", "local-gpu")
    assert p.returncode == 2 and "needs CUDA" in p.stderr and "Traceback" not in p.stderr


def test_search_show_states_where_the_search_ended_the_repairs_and_the_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {"name": "t", "device": "asic-tpu32", "latency_model": "learned", "latency_unit": "ms",
               "original_accuracy": 97.0, "accuracy": 37.5, "target": 0.5, "search_ratio": 0.523, "model_ratio": 0.5,
               "repairs": [{"step": "enforce_budget", "when": "extract", "before": 0.0615, "after": 0.0588},
                           {"step": "fill_budget", "when": "extract", "before": 0.0588, "after": 0.0588}],
               "budget_status": "missed", "budget_reason": "met only by repair, which cost 59.5 accuracy points",
               "predicted_ratio": 0.5, "measured_ratio": 0.512, "measured_ratio_ci": [0.51, 0.514],
               "prediction_error": -0.023, "measure_method": "layers"}
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    assert main(["search", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "target 0.500 x; the method itself ended at 0.523 x (learned latency model), the result 0.500 x" in out
    assert "repair: enforce_budget (extract): 0.0615 -> 0.0588 ms\n" in out
    assert "repair: fill_budget (extract): 0.0588 -> 0.0588 ms (no change)" in out
    assert "status: missed (met only by repair, which cost 59.5 accuracy points)" in out
    assert ("latency ratio: predicted 0.500 x vs measured 0.512 x on asic-tpu32 (layers, 95% interval "
            "0.510-0.514) (prediction error -2.3% in ms)") in out
    # the verdict is in the latency model; the device's interval lies above the target: said so
    assert "measured: MISSES the target 0.500 x on the device (the status above is judged in the learned" in out
    # a run recorded before these fields: no budget lines, nothing invented
    (run / "metrics.json").write_text(json.dumps({"metrics": {"name": "old", "accuracy": 90.0}}), encoding="utf-8")
    assert main(["search", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "status:" not in out and "budget:" not in out and "repair" not in out and "MISSES" not in out
    # a surrogate run: its model ratio beside the measured one; inside the target: no miss line
    (run / "metrics.json").write_text(json.dumps({"metrics": {
        "name": "s", "device": "asic-tpu32", "latency_model": "surrogate", "target": 0.9, "model_ratio": 0.325,
        "measured_ratio": 0.877, "measured_ratio_ci": [0.876, 0.878], "measure_method": "layers"}}), encoding="utf-8")
    assert main(["search", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "latency ratio: surrogate latency model 0.325 x vs measured 0.877 x on asic-tpu32" in out
    assert "MISSES" not in out


@pytest.mark.parametrize(("field", "value", "message"), [
    ("repairs", {"a": 1}, "repairs is a JSON dict; allowed: a list"),
    ("repairs", [{"step": "x", "before": "big", "after": 1}], "repairs[0]="),
    ("budget_status", 3, "budget_status=3 is not text"),
    ("search_ratio", "half", "search_ratio='half' is not a number"),
])
def test_search_show_rejects_malformed_honesty_fields(tmp_path: Path, field: str, value: object,
                                                      message: str) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"metrics": {"name": "t", field: value}}), encoding="utf-8")
    r = run_cli("search", "show", str(run))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
