"""Predictor files are untrusted input: damaged files give one-line errors, never crashes or NaN latencies.

The large run (1,000+ cases) is ``benchmarks/fuzz_predictor.py``; here a 150-case run of the same
harness on a shipped predictor, fuzzing of the array files of the tree and lookup predictors,
hypothesis-driven mutation of every metadata field, and targeted corruptions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwloop.cli import main
from hwloop.errors import HwloopError, PredictorError
from hwloop.predict import load_predictor
from hwloop.predict.booster_check import checked_booster, decode_ubj, encode_ubj
from hwloop.predict.io import metadata_hash

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "measurements" / "local-cpu" / "predictor.json"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_predictor", REPO / "benchmarks" / "fuzz_predictor.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads(src.read_text())
    for info in meta["files"].values():
        shutil.copyfile(src.parent / info["name"], dst / info["name"])
    shutil.copyfile(src, dst / src.name)
    return dst / src.name


def _rewrite(path: Path, meta: dict[str, Any]) -> None:
    meta["metadata_sha256"] = metadata_hash(meta)
    path.write_text(json.dumps(meta, indent=1, sort_keys=True, allow_nan=True))


def _one_line_error(e: BaseException) -> None:
    assert isinstance(e, HwloopError), f"{type(e).__name__}: {e}"
    assert str(e) and "\n" not in str(e)


# ----------------------------------------------------------------------------- byte flips and truncations
def test_150_flips_and_truncations_of_the_shipped_predictor_never_crash() -> None:
    rep = _bench().fuzz(SHIPPED, 150, seed=1, progress=False)
    o, r = rep["outcomes"], rep["reached"]
    assert o.get("crash", 0) == 0 and o.get("unclean", 0) == 0, rep["not_clean"][:5]
    assert o.get("error", 0) + o.get("ok", 0) == 150
    assert r["booster_parser"] >= 50 and r["xgboost_loader"] >= 5 and o.get("ok", 0) >= 5, rep


@pytest.fixture(scope="module")
def small_predictors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from hwloop.predict import make_predictor
    from hwloop.predict.sampling import random_layer_specs

    specs = random_layer_specs(300, np.random.default_rng(0))
    y = [s.macs * 1e-7 + 0.01 for s in specs]
    d = tmp_path_factory.mktemp("small")
    out = {}
    for kind, kw in (("random_forest", {"n_estimators": 5, "max_depth": 6}),
                     ("gradient_boosting", {"n_estimators": 10, "max_depth": 3}), ("lookup", {}),
                     ("ridge_macs", {}), ("surrogate", {})):
        out[kind] = make_predictor(kind, **kw).fit(specs, y).save(d / kind / "p.json")
    return out


def test_flips_of_array_predictors_never_crash(small_predictors: dict[str, Path]) -> None:
    bench = _bench()
    pool = bench.Pool()
    try:
        for kind in ("random_forest", "gradient_boosting", "lookup", "ridge_macs"):
            rep = bench.fuzz(small_predictors[kind], 40, seed=2, progress=False, pool=pool)
            o = rep["outcomes"]
            assert o.get("crash", 0) == 0 and o.get("unclean", 0) == 0, (kind, rep["not_clean"][:5])
            assert o.get("error", 0) > 0 and rep["reached"]["metadata_checks"] > 0, (kind, rep)
    finally:
        pool.close()


# ----------------------------------------------------------------------------- hypothesis: every metadata field
_SHIPPED_META = json.loads(SHIPPED.read_text())


def _leaf_paths(x: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(x, dict):
        return [path] + [p for k, v in x.items() for p in _leaf_paths(v, (*path, k))]
    if isinstance(x, list):
        return [path] + [p for i, v in enumerate(x[:3]) for p in _leaf_paths(v, (*path, i))]
    return [path]


_PATHS = [p for p in _leaf_paths(_SHIPPED_META) if p and p != ("metadata_sha256",) and p[0] != "metrics"] \
    + [("metrics", "models_calibrated", "acc10"), ("metrics", "protocol", "n_models")]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from([0, -1, 1e-300, 1e308, -0.5, 0.5, 2, "xgboost", "lookup", "eager", "nnls", "os:system"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def _set(meta: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    x = meta
    for k in path[:-1]:
        x = x[k]
    x[path[-1]] = value


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(SHIPPED, tmp_path_factory.mktemp("shipped"))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_PATHS), value=_JSON, delete=st.booleans())
def test_any_metadata_value_is_validated(path: tuple[Any, ...], value: Any, delete: bool,
                                         shipped_copy: Path) -> None:
    from hwloop.predict.sampling import random_layer_specs

    meta = json.loads(json.dumps(_SHIPPED_META))
    if delete and isinstance(path[-1], str):
        x = meta
        for k in path[:-1]:
            x = x[k]
        x.pop(path[-1], None)
    else:
        _set(meta, path, value)
    _rewrite(shipped_copy, meta)
    try:
        p = load_predictor(shipped_copy)
    except Exception as e:  # noqa: BLE001 - must be a one-line HwloopError
        _one_line_error(e)
        return
    # loaded: every value it uses is in range, so every latency is finite and positive
    try:
        ms = p.predict(random_layer_specs(16, np.random.default_rng(0)))
    except Exception as e:  # noqa: BLE001 - an out-of-range result is refused with one line, never returned
        _one_line_error(e)
        return
    assert np.all(np.isfinite(ms)) and np.all(ms > 0)
    agg = getattr(p, "aggregator_", None)
    assert agg is None or (np.all(np.isfinite(agg.coef_)) and np.all(agg.coef_ >= 0))
    assert 1 <= p.n_jobs <= 1024 and 0 < p.learning_rate <= 10


# ----------------------------------------------------------------------------- targeted corruptions
def test_booster_round_trip_is_byte_identical_for_shipped_models() -> None:
    for d in ("local-cpu", "asic-tpu32"):
        data = (REPO / "measurements" / d / "predictor.ubj").read_bytes()
        assert encode_ubj(decode_ubj(data)) == data
        assert checked_booster(data, n_features=108) == data


def _tree_bytes_with(mutator: Any) -> bytes:
    doc = decode_ubj((REPO / "measurements" / "local-cpu" / "predictor.ubj").read_bytes())
    mutator(doc["learner"]["gradient_booster"]["model"]["trees"][3])
    return encode_ubj(doc)


@pytest.mark.parametrize("field, value, fragment", [
    ("left_children", 10**6, "child index out of range"),
    ("left_children", 0, "child index out of range"),  # a cycle back to the root
    ("split_indices", 500, "splits on a feature outside"),
    ("split_conditions", float("nan"), "non-finite"),
    ("parents", 7, "parents disagree"),
])
def test_structural_booster_defects_are_named(field: str, value: Any, fragment: str) -> None:
    def mut(tree: dict[str, Any]) -> None:
        arr = tree[field].values.copy()
        arr[1] = value
        tree[field] = type(tree[field])(tree[field].marker, arr)

    with pytest.raises(PredictorError, match=fragment):
        checked_booster(_tree_bytes_with(mut), n_features=108)


def test_truncated_booster_is_one_line_on_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _copy(SHIPPED, tmp_path)
    ubj = tmp_path / "predictor.ubj"
    ubj.write_bytes(ubj.read_bytes()[:5000])
    meta = json.loads(p.read_text())
    meta["files"]["model"]["sha256"] = hashlib.sha256(ubj.read_bytes()).hexdigest()
    _rewrite(p, meta)
    assert main(["predict", "small_cnn", "--predictor", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "XGBoost model file is corrupt: truncated" in err and "predictor.ubj" in err and "\n" not in err


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.__setitem__("n_train", -5), "n_train=-5"),
    (lambda m: m["aggregator"]["coef"].__setitem__(0, -1.0), "negative coefficient"),
    (lambda m: m["params"].__setitem__("n_jobs", 10**9), "params.n_jobs"),
    (lambda m: m["params"].__setitem__("learning_rate", float("nan")), "not allowed"),
    (lambda m: m["state"]["baseline_coef"]["global"].__setitem__(2, float("inf")), "not allowed"),
    (lambda m: m["fingerprint"].__setitem__("key", "0" * 16), "does not match its identity"),
    (lambda m: m.__setitem__("mode", "turbo"), "mode='turbo'"),
    (lambda m: m["files"]["model"].__setitem__("name", "../../etc/passwd"), "plain file name"),
    (lambda m: m.__setitem__("extra", 1), "unknown field"),
])
def test_metadata_defects_are_named(edit: Any, fragment: str, tmp_path: Path) -> None:
    p = _copy(SHIPPED, tmp_path)
    meta = json.loads(p.read_text())
    edit(meta)
    _rewrite(p, meta)
    with pytest.raises(PredictorError, match=fragment) as ei:
        load_predictor(p)
    _one_line_error(ei.value)


def test_out_of_range_latency_is_refused_not_printed(small_predictors: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    p = _copy(small_predictors["ridge_macs"], tmp_path)
    meta = json.loads(p.read_text())
    meta["state"]["intercept_"] = 1000.0  # in range for the file format, but exp(1000) overflows
    _rewrite(p, meta)
    assert main(["predict", "small_cnn", "--predictor", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: RidgeMacsPredictor predicted inf ms") and "\n" not in err


def test_every_shipped_predictor_loads_and_predicts_positive_latencies() -> None:
    from hwloop.models import ModelRef

    ref = ModelRef("small_cnn")
    for p in sorted(REPO.glob("measurements/**/predictor.json")):
        pred = load_predictor(p)
        assert pred.predict_model(ref.build(), ref.example_input()) > 0
