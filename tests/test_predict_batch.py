"""Predictor schema 2: columnar batches, the XGBoost baseline, threaded chunks, schema-1 files still
loading, and adaptive sweeps that skip what the store holds (real AsicDevice + SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwloop.errors import PredictorError
from hwloop.predict import load_predictor, make_predictor
from hwloop.predict.columnar import table_from_columns
from hwloop.predict.features import FEATURE_NAMES, FEATURE_NAMES_V1, features_from_table, spec_table
from hwloop.predict.sampling import random_layer_specs
from hwloop.workload import LayerSpec, Workload

REPO = Path(__file__).resolve().parents[1]
V1 = REPO / "measurements" / "local-cpu" / "schema-v1"


def columns(specs: list[LayerSpec]) -> dict[str, np.ndarray]:
    """The columnar form of NCHW / 2-D linear specs."""
    d: dict[str, list] = {k: [] for k in ("op", "batch", "in_channels", "out_channels", "in_h", "in_w", "kernel_h",
                                          "kernel_w", "stride", "padding", "groups", "bias", "rank", "w_bits",
                                          "a_bits", "variant", "dtype", "out_h", "out_w")}
    for s in specs:
        four = len(s.in_shape) == 4
        vals = {"op": s.op, "batch": s.batch, "in_channels": s.in_channels, "out_channels": s.out_channels,
                "in_h": s.in_shape[2] if four else 1, "in_w": s.in_shape[3] if four else 1,
                "out_h": s.out_shape[2] if four else 1, "out_w": s.out_shape[3] if four else 1,
                "kernel_h": s.kernel[0], "kernel_w": s.kernel[1], "stride": s.stride[0], "padding": s.padding[0],
                "groups": s.groups, "bias": int(s.bias), "rank": s.rank or 0, "w_bits": s.w_bits or 0,
                "a_bits": s.a_bits or 0, "variant": s.variant, "dtype": s.dtype}
        for k, v in vals.items():
            d[k].append(v)
    return {k: np.asarray(v) for k, v in d.items()}


@pytest.fixture(scope="module")
def specs() -> list[LayerSpec]:
    bits = ((None, None), (8, 8), (4, 8), (2, 8))
    out = random_layer_specs(400, np.random.default_rng(11), bits=bits)
    return out + random_layer_specs(40, np.random.default_rng(12), dtype="bfloat16")


@pytest.fixture(scope="module")
def asic_ms(specs: list[LayerSpec]) -> np.ndarray:
    """Latencies from the real analytical cost model of the simulated accelerator."""
    from hwloop.devices.asic import AcceleratorSpec, cost_layers

    return np.array([c.latency_ms for c in cost_layers(specs, AcceleratorSpec())])


# --- columnar batches ------------------------------------------------------------------------------
def test_columnar_table_equals_the_spec_table(specs: list[LayerSpec]) -> None:
    assert {s.op for s in specs} >= {"conv2d", "linear", "batchnorm", "activation", "pooling", "add"}
    assert any(s.rank for s in specs) and any(s.groups > 1 for s in specs) and any(s.w_bits for s in specs)
    np.testing.assert_array_equal(table_from_columns(columns(specs)), spec_table(specs))


def test_columnar_batch_from_a_dataframe_and_a_structured_array(specs: list[LayerSpec]) -> None:
    import pandas as pd

    cols = columns(specs)
    want = spec_table(specs)
    np.testing.assert_array_equal(table_from_columns(pd.DataFrame(cols)), want)
    rec = np.rec.fromarrays([v.astype(str) if v.dtype.kind == "U" else v for v in cols.values()],
                            names=list(cols))
    np.testing.assert_array_equal(table_from_columns(np.asarray(rec)), want)


def test_columnar_defaults_and_computed_output_size() -> None:
    t = table_from_columns({"op": np.array(["conv2d", "pooling", "linear"]), "batch": [2, 1, 4],
                            "in_channels": [8, 16, 32], "out_channels": [4, 0, 10], "in_h": [9, 8, 1],
                            "in_w": [9, 8, 1], "kernel_h": [3, 2, 1], "stride": [2, 2, 1], "padding": [1, 0, 0],
                            "variant": np.array(["", "max", ""])})
    want = spec_table([LayerSpec("conv2d", (2, 8, 9, 9), out_channels=4, kernel=3, stride=2, padding=1),
                       LayerSpec("pooling", (1, 16, 8, 8), (1, 16, 4, 4), kernel=2, stride=2, variant="max"),
                       LayerSpec("linear", (4, 32), out_channels=10)])
    np.testing.assert_array_equal(t, want)


@pytest.mark.parametrize(("batch", "match"), [
    ({"op": ["conv2d"], "in_channels": [8]}, r"needs columns \['batch'\]"),
    ({"op": ["softmax"], "batch": [1], "in_channels": [8]}, "op 'softmax' is unknown"),
    ({"op": ["conv2d"], "batch": [1], "in_channels": [6], "out_channels": [8], "groups": [4]}, "column 'groups'"),
    ({"op": ["add"], "batch": [0], "in_channels": [8]}, "column 'batch' row 0"),
    ({"op": ["add"], "batch": [1], "in_channels": [8], "colour": [1]}, r"columns \['colour'\] are unknown"),
    ({"op": ["add"], "batch": [1, 2], "in_channels": [8]}, "column 'batch' has shape"),
    ({"op": ["conv2d"], "batch": [1], "in_channels": [8], "out_channels": [8], "in_h": [2], "kernel_h": [5]},
     "output would be empty"),
])
def test_columnar_bad_input_names_the_column(batch: dict, match: str) -> None:
    with pytest.raises(PredictorError, match=match):
        table_from_columns({k: np.asarray(v) for k, v in batch.items()})


# --- schema 2: features and the XGBoost baseline --------------------------------------------------
def test_feature_schemas() -> None:
    t = spec_table([LayerSpec("conv2d", (1, 8, 16, 16), out_channels=16, kernel=3, padding=1, w_bits=4)])
    x1, x2 = features_from_table(t, 1), features_from_table(t)
    assert x1.shape == (1, len(FEATURE_NAMES_V1)) and x2.shape == (1, len(FEATURE_NAMES))
    np.testing.assert_array_equal(x2[:, :x1.shape[1]], x1)  # schema 2 extends schema 1
    assert x2[0, FEATURE_NAMES.index("weight_pack")] == 2.0  # 4-bit weights: two per 8-bit PE
    with pytest.raises(PredictorError, match="feature schema 4"):
        features_from_table(t, 4)


def test_baseline_beats_plain_trees_on_the_accelerator(specs: list[LayerSpec], asic_ms: np.ndarray) -> None:
    tr, te = slice(0, 300), slice(300, None)
    accs = {}
    for baseline in ("nnls", "none"):
        p = make_predictor("xgboost", baseline=baseline, n_jobs=1).fit(specs[tr], asic_ms[tr])
        accs[baseline] = p.score(specs[te], asic_ms[te])
    # 300 training layers: trees alone get about half within ±10%, boosting from the baseline ~3/4
    assert accs["nnls"] >= 0.7 and accs["nnls"] >= accs["none"] + 0.15, accs


def test_threaded_chunks_equal_one_pass(specs: list[LayerSpec], asic_ms: np.ndarray) -> None:
    p = make_predictor("xgboost", n_estimators=30, n_jobs=2).fit(specs, asic_ms)
    table = np.tile(spec_table(specs), (5, 1))
    whole = p.predict(table)
    p.batch_rows = 97  # many chunks over two worker threads with their own booster copies
    np.testing.assert_allclose(p.predict(table), whole, rtol=1e-6)
    np.testing.assert_allclose(p.predict(columns(specs)), whole[:len(specs)], rtol=1e-6)
    with pytest.raises(PredictorError, match="margin"):
        p.predict_features(features_from_table(table))


def test_bad_xgboost_params() -> None:
    with pytest.raises(PredictorError, match="baseline 'linear' is unknown"):
        make_predictor("xgboost", baseline="linear")
    with pytest.raises(PredictorError, match="batch_rows=0"):
        make_predictor("xgboost", batch_rows=0)


# --- files -----------------------------------------------------------------------------------------
def test_schema2_file_round_trip(tmp_path: Path, specs: list[LayerSpec], asic_ms: np.ndarray) -> None:
    p = make_predictor("xgboost", n_estimators=30, n_jobs=1).fit(specs, asic_ms)
    path = p.save(tmp_path / "p.json")
    meta = json.loads(path.read_text())
    assert meta["schema_version"] == 2 and meta["feature_schema"] == 3 and meta["features"] == list(FEATURE_NAMES)
    assert set(meta["state"]["baseline_coef"]) == {"per_op", "global"}
    q = load_predictor(path)
    np.testing.assert_allclose(q.predict(specs), p.predict(specs), rtol=1e-6)


def test_schema1_file_still_loads_and_predicts_the_same(tmp_path: Path) -> None:
    meta = json.loads((V1 / "predictor.json").read_text())
    assert meta["schema_version"] == 1 and meta["feature_schema"] == 1
    exp = json.loads((V1 / "expected.json").read_text())
    p = load_predictor(V1 / "predictor.json")
    assert p.baseline == "none" and p.feature_schema_ == 1
    s = [LayerSpec.from_dict(d) for d in exp["specs"]]
    np.testing.assert_allclose(p.predict(s), exp["predict_ms"], rtol=1e-6)
    assert p.predict_workload(Workload.from_dict(exp["workload"])) == pytest.approx(exp["predict_workload_ms"],
                                                                                    rel=1e-6)
    # re-saved by this hwloop: schema 2 file, still feature schema 1, same predictions
    q = load_predictor(p.save(tmp_path / "resaved.json"))
    assert json.loads((tmp_path / "resaved.json").read_text())["feature_schema"] == 1
    np.testing.assert_allclose(q.predict(s), exp["predict_ms"], rtol=1e-6)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    from hwloop.predict.io import metadata_hash

    path = make_predictor("ridge_macs").fit([LayerSpec("linear", (1, n), out_channels=n) for n in (8, 16, 32)],
                                            [0.01, 0.02, 0.05]).save(tmp_path / "r.json")
    meta = json.loads(path.read_text())
    meta["schema_version"] = 99
    meta["metadata_sha256"] = metadata_hash(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(PredictorError, match="schema version 99; this hwloop reads versions 1, 2"):
        load_predictor(path)


# --- adaptive sampling -----------------------------------------------------------------------------
def test_adaptive_known_rows_are_not_remeasured() -> None:
    from hwloop.predict.adaptive import adaptive_sample

    pool = random_layer_specs(90, np.random.default_rng(5))
    seen: list[str] = []

    def measure(batch: list[LayerSpec]) -> np.ndarray:
        seen.extend(s.key for s in batch)
        return np.array([0.01 + s.macs * 1e-7 for s in batch])

    known = {i: 0.01 + pool[i].macs * 1e-7 for i in range(0, 90, 3)}
    r = adaptive_sample(pool, measure, 20, rounds=2, members=2, n_estimators=10, known=known, progress=False)
    assert len(r.indices) == 20 == len(seen) == len(set(seen))
    assert not set(r.indices) & set(known)


def _grid_spec() -> object:
    from hwloop.sweep import SweepSpec

    return SweepSpec.from_dict({"name": "tiny", "kind": "layers", "sampling": "grid",
                                "space": {"op": ["conv2d"], "in_channels": [8, 16, 24, 32, 48],
                                          "out_channels": [8, 16, 32, 64], "kernel": [1, 3], "resolution": [8]}})


def test_adaptive_sweep_skips_what_the_store_holds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwloop.devices.profiles import create_device
    from hwloop.predict.adaptive import run_adaptive_sweep
    from hwloop.store import MeasurementStore

    dev = create_device("asic-tpu32")
    measured: list[str] = []
    real = dev.measure

    def counting(reqs, timing=None):  # the real device, recording what it is asked to measure
        measured.extend(r.key for r in reqs)
        return real(reqs, timing)

    dev.measure = counting  # type: ignore[method-assign]
    spec = _grid_spec()
    with MeasurementStore(f"sqlite:///{tmp_path / 'a.db'}") as st:
        first = run_adaptive_sweep(spec, dev, st, budget=12, rounds=2, progress=False)
        assert first.measured == 12 and first.skipped == 0 and first.candidates == 40
        assert capsys.readouterr().err == ""  # progress=False: no bar
        before = set(measured)
        second = run_adaptive_sweep(spec, dev, st, budget=10, rounds=2, progress=True)
        assert "adaptive (error)" in capsys.readouterr().err  # progress=True: a bar on stderr
        assert second.skipped == 12 and second.measured == 10
        assert len(measured) == 22 and not before & set(measured[12:])
        assert len(st.to_dataframe(kind="layer")) == 22
        rest = run_adaptive_sweep(spec, dev, st, budget=100, rounds=2, progress=False)
        assert rest.skipped == 22 and rest.measured == 18 and len(st.to_dataframe(kind="layer")) == 40
        done = run_adaptive_sweep(spec, dev, st, budget=5, progress=False)
        assert done.measured == 0 and done.skipped == 40
    assert "40 candidates (40 already stored" in str(done)


@pytest.mark.parametrize("flag", ["--no-progress", "--progress"])
def test_cli_adaptive_sweep_honours_progress(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str) -> None:
    from hwloop.cli import main

    spec = tmp_path / "tiny.toml"
    spec.write_text('name = "tiny"\nkind = "layers"\nsampling = "grid"\n[space]\nop = ["conv2d"]\n'
                    'in_channels = [8, 16, 32]\nout_channels = [8, 16, 32]\nkernel = [1, 3]\nresolution = [8]\n')
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["sweep", str(spec), "--device", "asic-tpu32", "--store", url, "--adaptive", "--budget", "8", flag]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "measured 8 of budget 8" in " ".join(out.split())
    assert ("adaptive (error)" in err) == (flag == "--progress")
    assert main(args) == 0  # the second run skips the 8 stored rows
    assert "(8 already stored" in " ".join(capsys.readouterr().out.split())
