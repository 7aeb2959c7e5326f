"""End to end on real components: CpuDevice → SQLite store → ``hwloop predictor fit|eval|show`` →
``hwloop predict``; adaptive sweeps; the shipped measurements/ predictors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hwloop.cli import main
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.cpu import CpuDevice
from hwloop.predict.sampling import random_model_refs, unique_specs
from hwloop.workload import WorkloadWarning, extract_workload

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FAST = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_retries=0, timeout_s=20)


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store with ~80 real CPU layer timings and 6 whole small_cnn models (a few seconds)."""
    from hwloop.store import MeasurementStore

    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'm.db'}"
    refs = random_model_refs(6, np.random.default_rng(0), families=("small_cnn",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        specs = unique_specs([s for r in refs[:5] for s in extract_workload(r.build(), r.example_input()).layers])
    dev = CpuDevice(name="local-cpu", threads=1)
    fp = dev.fingerprint()
    reqs = [MeasureRequest.for_layer(s) for s in specs] + [MeasureRequest.for_model(r, per_layer=True) for r in refs]
    with MeasurementStore(url) as st:
        for q, res in zip(reqs, dev.measure(reqs, FAST)):
            assert res.ok, res.error
            st.add(fp, q, res)
    assert len(specs) >= 50
    return url


def test_cli_fit_show_predict_eval(cpu_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cpu.json"
    png = tmp_path / "parity.png"
    assert main(["predictor", "fit", "--device", "local-cpu", "--store", cpu_store, "--out", str(out),
                 "--plot", str(png), "--statistic", "median"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "xgboost" in text and "learned predictor" in text and out.exists() and out.with_suffix(".ubj").exists()
    assert png.read_bytes()[:4] == b"\x89PNG"
    meta = json.loads(out.read_text())
    assert meta["metrics"]["layers_random_split"]["n"] > 0 and meta["aggregator"]["n_models"] == 6
    assert meta["target_statistic"] == "median"

    assert main(["predict", "small_cnn", "--predictor", str(out), "--json", "--layers"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["latency_ms"] > 0 and res["calibrated"] and len(res["layers"]) >= 10

    assert main(["predictor", "show", str(out)]) == 0
    assert "aggregation" in capsys.readouterr().out

    meta["metrics"] = {}
    assert main(["predictor", "eval", str(out), "--store", cpu_store, "--folds", "2"]) == 0
    meta2 = json.loads(out.read_text())
    assert meta2["metrics"]["models_calibrated"]["n"] == 6


def test_cli_errors_are_one_line(cpu_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictor", "fit", "--device", "local-cpu", "--store", cpu_store, "--kind", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --kind 'nope'") and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 0}')
    assert main(["predict", "small_cnn", "--predictor", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "schema version 0" in err and err.count("\n") == 1
    assert main(["predict", "small_cnn", "--predictor", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_fit_without_data_picks_the_surrogate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "asic.json"  # the default store does not exist (HWLOOP_HOME is a fresh folder)
    assert main(["predictor", "fit", "--device", "asic-tpu32", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "surrogate" in text and "nominal scale" in text
    meta = json.loads(out.read_text())
    assert meta["predictor"] == "surrogate" and meta["fingerprint"]["name"] == "asic-tpu32"
    assert not (tmp_path / "hwloop-home" / "measurements.db").exists()  # fit reads; it never creates a store
    url = f"sqlite:///{tmp_path / 'typo.db'}"  # an explicit store that does not exist is an error naming it
    assert main(["predictor", "fit", "--device", "asic-tpu32", "--store", url]) == 2
    assert "typo.db does not exist" in capsys.readouterr().err and not (tmp_path / "typo.db").exists()


def test_adaptive_sweep_measures_the_budget_into_the_store(tmp_path: Path) -> None:
    from hwloop.predict.adaptive import run_adaptive_sweep
    from hwloop.store import MeasurementStore
    from hwloop.sweep import SweepSpec

    spec = SweepSpec.from_dict({"name": "tiny", "kind": "layers", "sampling": "grid",
                                "space": {"op": ["linear"], "in_channels": [8, 16, 24, 32, 48, 64],
                                          "out_channels": [4, 8, 16, 32]}})
    with MeasurementStore(f"sqlite:///{tmp_path / 'a.db'}") as st:
        summary = run_adaptive_sweep(spec, CpuDevice(threads=1), st, budget=12, timing=FAST, rounds=2,
                                     progress=False)
        assert summary.measured == 12 and summary.candidates == 24 and summary.failed == 0
        assert len(st.to_dataframe(kind="layer")) == 12
        assert [r.n_measured for r in summary.rounds][-1] == 12


def test_adaptive_sample_spends_exactly_the_budget_without_repeats() -> None:
    from hwloop.predict.adaptive import adaptive_sample
    from hwloop.predict.sampling import random_layer_specs

    pool = random_layer_specs(120, np.random.default_rng(3))
    calls: list[int] = []

    def measure(specs: list) -> np.ndarray:
        calls.append(len(specs))
        return np.array([0.01 + s.macs * 1e-7 for s in specs])

    r = adaptive_sample(pool, measure, 50, rounds=3, members=3, n_estimators=30, progress=False)
    assert len(r.indices) == len(set(r.indices)) == 50 == sum(calls)
    assert len(calls) == 4 and r.rounds[-1].mean_spread > 0
    with pytest.raises(Exception, match="budget"):
        adaptive_sample(pool, measure, 0)


@pytest.mark.parametrize("name", [p.parent.name for p in sorted((REPO / "measurements").glob("*/predictor.json"))])
def test_shipped_predictors_load_and_predict(name: str) -> None:
    import hwloop
    from hwloop.models import ModelRef

    p = hwloop.load_predictor(REPO / "measurements" / name / "predictor.json")
    ref = ModelRef("resnet20")
    ms = p.predict_model(ref.build(), ref.example_input())
    assert 0 < ms < 1e4
    m = p.metrics_
    if "graph_within" in m:  # a whole-net cost model (H100 CUDA graphs): held-out net figures, not layer splits
        assert 0 <= m["graph_within"]["mean_acc10"] <= 1 and -1 <= m["graph_loao"]["mean_spearman"] <= 1
        assert p.fingerprint is not None and "H100" in str(p.fingerprint.to_dict())
    else:
        assert m["layers_random_split"]["n"] > 100 and m["models_calibrated"]["n"] >= 20
        assert p.fingerprint is not None and p.fingerprint.name.startswith(name.split("-")[0])
