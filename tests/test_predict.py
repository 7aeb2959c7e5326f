"""Predictor contract suite, surrogate, features, aggregation, evaluation and files (no pickle)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hwloop.devices.base import DeviceFingerprint
from hwloop.errors import NotFittedError, PredictorError
from hwloop.predict import (
    PREDICTOR_KINDS,
    Aggregator,
    PredictorWarning,
    SurrogatePredictor,
    load_predictor,
    make_predictor,
    regression_metrics,
)
from hwloop.predict.evaluate import evaluate_models, parity_plot
from hwloop.predict.features import FEATURE_NAMES, RAW_COLUMNS, featurize, spec_table
from hwloop.predict.learned import export_sklearn_trees, predict_tree_arrays
from hwloop.predict.sampling import random_layer_specs
from hwloop.predict.surrogate import l1_l2_width, surrogate_cost, surrogate_cost_torch, surrogate_terms
from hwloop.workload import LayerSpec

torch.set_num_threads(1)
FP = DeviceFingerprint("test-dev", "cpu", {"cpu": "x", "threads": 1})


def synthetic_latency(specs: list[LayerSpec]) -> np.ndarray:
    """A deterministic 'device': per-op overhead + throughput with a tile-alignment penalty."""
    out = []
    for s in specs:
        over = {"conv2d": 0.01, "linear": 0.006}.get(s.op, 0.003)
        rate = 2e-7 if s.op in ("conv2d", "linear") else 1e-6
        pen = 1.4 if s.out_channels % 8 else 1.0
        out.append(over + s.macs * rate * pen)
    return np.array(out)


@pytest.fixture(scope="module")
def synth() -> tuple[list[LayerSpec], np.ndarray]:
    specs = random_layer_specs(500, np.random.default_rng(0))
    return specs, synthetic_latency(specs)


# ----------------------------------------------------------------------------- features
def test_features_shape_and_values() -> None:
    s = LayerSpec("conv2d", (2, 24, 16, 16), out_channels=40, kernel=3, padding=1)
    x = featurize([s])
    assert x.shape == (1, len(FEATURE_NAMES))
    f = dict(zip(FEATURE_NAMES, x[0].tolist()))
    assert f["op_conv2d"] == 1 and f["op_linear"] == 0
    assert f["cin_mod16"] == 8 and f["cout_mod32"] == 8 and f["cout_mod8"] == 0
    assert f["batch"] == 2 and f["out_spatial"] == 256
    assert math.isclose(f["log2_macs"], math.log2(s.macs + 1), rel_tol=1e-6)
    t = spec_table([s])
    assert t[0, RAW_COLUMNS.index("macs")] == s.macs


def test_features_reject_non_specs() -> None:
    with pytest.raises(PredictorError, match="LayerSpec"):
        spec_table([{"op": "conv2d"}])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- surrogate
def test_surrogate_cost_equals_macs_and_scales_with_bits() -> None:
    specs = random_layer_specs(200, np.random.default_rng(1))
    cost = surrogate_cost(surrogate_terms(specs))
    np.testing.assert_allclose(cost, [s.macs for s in specs], rtol=1e-9)
    conv = LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1)
    q = conv.replace(w_bits=8, a_bits=8)
    c0, c1 = surrogate_cost(surrogate_terms([conv, q]))
    assert math.isclose(c1, c0 * 64 / 1024)


def test_surrogate_torch_matches_numpy_and_is_differentiable() -> None:
    specs = [LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1),
             LayerSpec("conv2d", (1, 32, 8, 8), out_channels=32, kernel=3, padding=1, groups=32),
             LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1, rank=4),
             LayerSpec("linear", (2, 64), out_channels=10, rank=5),
             LayerSpec("batchnorm", (1, 32, 8, 8))]
    t = surrogate_terms(specs)
    n_in = torch.tensor(t["n_in"], dtype=torch.float32, requires_grad=True)
    per = surrogate_cost_torch(n_in, torch.tensor(t["n_out"]), torch.tensor(t["c"]), kind=torch.tensor(t["kind"]),
                               rank=torch.tensor(t["rank"]), k2=torch.tensor(t["k2"]), reduce=False)
    np.testing.assert_allclose(per.detach().numpy(), [s.macs for s in specs], rtol=1e-5)
    per.sum().backward()
    assert n_in.grad is not None and torch.all(n_in.grad > 0)
    g = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    assert math.isclose(float(l1_l2_width(g)), 3.0, rel_tol=1e-6)
    assert math.isclose(float(l1_l2_width(5 * g)), 3.0, rel_tol=1e-6)


def test_surrogate_unfitted_and_one_constant_fit() -> None:
    specs = random_layer_specs(40, np.random.default_rng(2))
    p = SurrogatePredictor()
    np.testing.assert_allclose(p.predict(specs), [max(s.macs, 1) * 1e-6 for s in specs])
    p.fit(specs, [max(s.macs, 1) * 3e-7 for s in specs])
    assert math.isclose(p.scale_ms_per_mac_, 3e-7, rel_tol=1e-9)


def test_predictor_registry_is_the_one_source_of_kinds() -> None:
    from hwloop.cli.predictor import _KINDS
    from hwloop.predict import PREDICTORS, WHOLE_MODEL_KINDS
    from hwloop.predict import io as pio
    from hwloop.trust import import_builtin

    assert pio.PREDICTORS is PREDICTORS
    assert set(PREDICTOR_KINDS) | set(WHOLE_MODEL_KINDS) == set(PREDICTORS)
    assert not set(PREDICTOR_KINDS) & set(WHOLE_MODEL_KINDS)
    for kind, target in PREDICTORS.items():  # each entry names the class whose kind it is
        assert import_builtin(target).kind == kind
    assert _KINDS.split(", ") == ["auto", *PREDICTOR_KINDS]
    with pytest.raises(PredictorError, match=r"'nope' is unknown; allowed: xgboost, surrogate, .*graph_cost"):
        make_predictor("nope")


# ----------------------------------------------------------------------------- contract suite
@pytest.mark.parametrize("kind", PREDICTOR_KINDS)
def test_predictor_contract(kind: str, synth: tuple[list[LayerSpec], np.ndarray], tmp_path: Path) -> None:
    specs, y = synth
    small = {"xgboost": {"n_estimators": 150}, "random_forest": {"n_estimators": 20},
             "gradient_boosting": {"n_estimators": 60}}.get(kind, {})
    p = make_predictor(kind, fingerprint=FP, mode="eager", **small)
    if kind != "surrogate":
        with pytest.raises(NotFittedError):
            p.predict(specs[:3])
    assert p.fit(specs[:400], y[:400]) is p
    pred = p.predict(specs[400:])
    assert pred.shape == (100,) and np.all(pred > 0) and np.all(np.isfinite(pred))
    assert 0.0 <= p.score(specs[400:], y[400:]) <= 1.0
    assert p.get_params() == make_predictor(kind, **small).get_params()
    path = p.save(tmp_path / f"{kind}.json")
    q = load_predictor(path)
    assert type(q) is type(p) and q.fingerprint.key == FP.key and q.mode == "eager"
    np.testing.assert_allclose(q.predict(specs[400:]), pred, rtol=1e-6)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pickle"))
    with pytest.raises(PredictorError, match="latencies"):
        make_predictor(kind).fit(specs[:10], y[:9])
    with pytest.raises(PredictorError, match="invalid"):
        make_predictor(kind).fit(specs[:3], [1.0, -1.0, 2.0])


@pytest.mark.parametrize("kind", ["xgboost", "random_forest", "gradient_boosting", "lookup"])
def test_learned_predictors_learn_the_synthetic_device(kind: str, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    specs, y = synth
    p = make_predictor(kind).fit(specs[:400], y[:400])
    m = regression_metrics(y[400:], p.predict(specs[400:]))
    ridge = regression_metrics(y[400:], make_predictor("ridge_macs").fit(specs[:400], y[:400]).predict(specs[400:]))
    assert m["spearman"] > 0.97
    if kind in ("xgboost", "gradient_boosting"):
        assert m["mape"] < ridge["mape"] and m["acc10"] > ridge["acc10"]


def test_dataframe_input_matches_spec_input(synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    import pandas as pd

    specs, y = synth
    df = pd.DataFrame({"spec_json": [json.dumps(s.to_dict()) for s in specs], "latency_ms": y})
    a = make_predictor("ridge_macs").fit(df)
    b = make_predictor("ridge_macs").fit(specs, y)
    np.testing.assert_allclose(a.predict(df), b.predict(specs))
    with pytest.raises(PredictorError, match="spec_json"):
        a.predict(pd.DataFrame({"x": [1]}))


def test_sklearn_tree_export_matches_sklearn() -> None:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = x[:, 0] ** 2 + np.sin(x[:, 1]) + 0.1 * rng.normal(size=300)
    rf = RandomForestRegressor(n_estimators=10, random_state=0).fit(x, y)
    np.testing.assert_allclose(predict_tree_arrays(export_sklearn_trees(rf.estimators_), x).mean(0), rf.predict(x),
                               rtol=1e-9)
    gb = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(x, y)
    per = predict_tree_arrays(export_sklearn_trees(gb.estimators_[:, 0]), x)
    np.testing.assert_allclose(gb.init_.constant_[0][0] + gb.learning_rate * per.sum(0), gb.predict(x), rtol=1e-9)


# ----------------------------------------------------------------------------- files
def _saved(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> Path:
    specs, y = synth
    return make_predictor("xgboost", n_estimators=30, fingerprint=FP).fit(specs, y).save(tmp_path / "p.json")


def test_tampered_metadata_fails_with_one_line(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    path = _saved(tmp_path, synth)
    meta = json.loads(path.read_text())
    meta["metrics"] = {"acc10": 1.0}
    path.write_text(json.dumps(meta))
    with pytest.raises(PredictorError, match="metadata hash") as e:
        load_predictor(path)
    assert "\n" not in str(e.value)


def test_other_schema_version_fails(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    from hwloop.predict.io import metadata_hash

    path = _saved(tmp_path, synth)
    meta = json.loads(path.read_text())
    meta["schema_version"] = 99
    meta["metadata_sha256"] = metadata_hash(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(PredictorError, match="schema version 99"):
        load_predictor(path)


def test_modified_model_file_fails(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    path = _saved(tmp_path, synth)
    ubj = path.with_suffix(".ubj")
    data = bytearray(ubj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ubj.write_bytes(bytes(data))
    with pytest.raises(PredictorError, match="SHA-256"):
        load_predictor(path)
    ubj.unlink()
    with pytest.raises(PredictorError, match="missing"):
        load_predictor(path)


def test_saved_file_records_the_contract_fields(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    meta = json.loads(_saved(tmp_path, synth).read_text())
    for k in ("schema_version", "features", "fingerprint", "mode", "training_data_hash", "metrics",
              "hwloop_version", "files", "metadata_sha256"):
        assert k in meta
    assert meta["features"] == list(FEATURE_NAMES)
    assert meta["fingerprint"]["key"] == FP.key
    assert meta["files"]["model"]["name"] == "p.ubj"


# ----------------------------------------------------------------------------- whole models
def test_aggregator_recovers_known_calibration() -> None:
    rng = np.random.default_rng(0)
    per_model, ys = [], []
    for _ in range(30):
        n = int(rng.integers(10, 60))
        ops = rng.choice([0, 3, 4, 6], size=n)
        ms = rng.uniform(0.01, 0.2, size=n)
        compute = ms[ops == 0].sum()
        elem = ms[ops != 0].sum()
        per_model.append((ops, ms))
        ys.append(0.8 * compute + 0.3 * elem + 0.004 * n + 0.05)
    agg = Aggregator().fit(per_model, np.array(ys))
    from hwloop.predict.aggregate import AGG_FEATURES

    idx = [AGG_FEATURES.index(n) for n in ("sum_conv2d_ms", "sum_batchnorm_ms", "sum_activation_ms", "sum_add_ms",
                                            "n_ops", "const")]
    np.testing.assert_allclose(agg.coef_[idx], [0.8, 0.3, 0.3, 0.3, 0.004, 0.05], rtol=1e-4)
    assert math.isclose(agg.predict_one(*per_model[0]), ys[0], rel_tol=1e-6)
    assert Aggregator.from_dict(agg.to_dict()).predict_one(*per_model[3]) == agg.predict_one(*per_model[3])
    with pytest.raises(PredictorError, match="method"):
        Aggregator("fancy")


def test_predict_model_traces_calibrates_and_warns(synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    from hwloop.models import ModelRef

    specs, y = synth
    p = make_predictor("xgboost", n_estimators=60, fingerprint=FP).fit(specs, y)
    refs = [ModelRef("small_cnn", {"widths": [w, 2 * w, 4 * w]}) for w in (4, 8, 12, 16)]
    wls = [p.trace(r.build(), r.example_input()) for r in refs]
    assert {s.op for s in wls[0].layers} >= {"conv2d", "batchnorm", "activation", "pooling", "linear"}
    raw = np.array([p.predict_workload(w) for w in wls])
    p.fit_aggregator(wls, 1.5 * raw + 0.2)
    ref = refs[2]
    got = p.predict_model(ref.build(), ref.example_input())
    assert math.isclose(got, 1.5 * raw[2] + 0.2, rel_tol=1e-3)
    assert math.isclose(p.predict_model(ref.build(), ref.example_input(), calibrated=False), raw[2], rel_tol=1e-9)
    other = DeviceFingerprint("elsewhere", "cuda", {"gpu": "H100"})
    with pytest.warns(PredictorWarning, match="elsewhere"):
        p.predict_model(ref.build(), ref.example_input(), device=other)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PredictorWarning)
        assert p.check_device(FP, "eager")


def test_metrics_and_leave_models_out(tmp_path: Path, synth: tuple[list[LayerSpec], np.ndarray]) -> None:
    m = regression_metrics([1.0, 2.0, 4.0, 8.0], [1.04, 2.3, 4.0, 7.0])
    assert m["acc5"] == 0.5 and m["acc10"] == 0.5 and m["spearman"] == 1.0
    assert math.isclose(m["mape"], 100 * (0.04 + 0.15 + 0 + 0.125) / 4)
    with pytest.raises(PredictorError, match="shape"):
        regression_metrics([1.0], [1.0, 2.0])
    specs, y = synth
    p = make_predictor("ridge_macs").fit(specs, y)
    wls = [specs[i:i + 20] for i in range(0, 200, 20)]
    yt = np.array([1.2 * p.predict(w).sum() + 0.01 for w in wls])
    res = evaluate_models(p, wls, yt, ["a"] * 5 + ["b"] * 5, folds=5)
    assert res["calibrated"]["mape"] < res["raw"]["mape"]
    assert set(res["per_group"]) == {"a", "b"}
    png = parity_plot(tmp_path / "parity.png", None, res, title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
