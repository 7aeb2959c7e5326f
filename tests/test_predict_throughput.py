"""Batched prediction: the fast path (cache-sized blocks, worker threads, exact de-duplication, threaded
columnar tables) predicts exactly what the plain definition predicts; speed is measured by
``benchmarks/bench_predict.py`` (throughput section), not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwloop.predict import load_predictor, make_predictor
from hwloop.predict.columnar import BLOCK_ROWS, table_from_columns, unique_rows
from hwloop.predict.features import features_from_table, reference_features, spec_table
from hwloop.predict.learned import _DEDUP_MIN_ROWS, baseline_ms
from hwloop.predict.sampling import random_layer_specs
from hwloop.workload import LayerSpec

REPO = Path(__file__).resolve().parents[1]
V1 = REPO / "measurements" / "local-cpu" / "schema-v1"


def reference(p: object, table: np.ndarray) -> np.ndarray:
    """The definition: the reference features and baseline (its own terms, one BLAS product per op kind) of
    the whole table, one call to the booster."""
    x = reference_features(table, p.feature_schema_)  # type: ignore[attr-defined]
    coef = p.baseline_coef_  # type: ignore[attr-defined]
    kw = {} if coef is None else {"base_margin": np.log(baseline_ms(table, coef)).astype(np.float32)}
    return np.exp(p.booster_.inplace_predict(x, **kw).astype(np.float64))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fitted() -> tuple[object, list[LayerSpec]]:
    from hwloop.devices.asic import AcceleratorSpec, cost_layers

    specs = random_layer_specs(600, np.random.default_rng(3), bits=((None, None), (4, 8)))
    ms = np.array([c.latency_ms for c in cost_layers(specs, AcceleratorSpec())])
    return make_predictor("xgboost", n_estimators=40, n_jobs=2).fit(specs, ms), specs


def test_unique_rows_is_exact_and_ordered_by_first_appearance() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (5000, 6)).astype(np.float64)
    first, inv = unique_rows(t)
    np.testing.assert_array_equal(t[first][inv], t)
    assert len(first) == len(np.unique(t, axis=0)) < 5000
    assert first[0] == 0 and np.all(np.diff(first) > 0) and inv[first].tolist() == list(range(len(first)))
    # NaN rows project to the same value but are not equal to each other: each keeps its own group
    t[[10, 20], 0] = np.nan
    t[20, 1:] = t[10, 1:]
    first, inv = unique_rows(t)
    assert inv[10] != inv[20]
    np.testing.assert_array_equal(t[first][inv], t)
    assert unique_rows(np.zeros((0, 3)))[0].shape == (0,)


def test_batched_predictions_equal_the_definition(fitted: tuple[object, list[LayerSpec]]) -> None:
    p, _ = fitted
    specs = random_layer_specs(3000, np.random.default_rng(21), bits=((None, None), (4, 8), (2, 8)))
    table = spec_table(specs)
    want = reference(p, table)
    assert table.shape[0] > BLOCK_ROWS // 4
    np.testing.assert_array_equal(p.predict(table), want)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(p.predict(specs), want)  # type: ignore[attr-defined]
    # many blocks in two worker threads with their own booster copies
    p.batch_rows = 97  # type: ignore[attr-defined]
    try:
        np.testing.assert_array_equal(p.predict(table), want)  # type: ignore[attr-defined]
    finally:
        p.batch_rows = 65536  # type: ignore[attr-defined]


def test_repeated_rows_are_predicted_once_with_the_same_result(fitted: tuple[object, list[LayerSpec]]) -> None:
    p, specs = fitted
    table = np.tile(spec_table(specs), (12, 1))  # 7,200 rows, < 600 distinct: the de-duplicated path
    assert table.shape[0] >= _DEDUP_MIN_ROWS
    calls: list[int] = []
    real = p._predict_rows  # type: ignore[attr-defined]

    def counting(t: np.ndarray) -> np.ndarray:  # the real method; records how many rows it is given
        calls.append(t.shape[0])
        return real(t)

    p._predict_rows = counting  # type: ignore[attr-defined]
    try:
        got = p.predict(table)  # type: ignore[attr-defined]
    finally:
        del p._predict_rows  # type: ignore[attr-defined]
    assert calls == [len(np.unique(spec_table(specs), axis=0))]  # random specs repeat a few shapes too
    np.testing.assert_array_equal(got, np.tile(reference(p, spec_table(specs)), 12))


def test_columnar_batch_threaded_table_equals_spec_table(fitted: tuple[object, list[LayerSpec]]) -> None:
    p, _ = fitted
    rng = np.random.default_rng(5)
    n = 3 * BLOCK_ROWS + 17
    ops = rng.choice(np.array(["conv2d", "linear", "batchnorm", "activation", "pooling", "add"]), n)
    cin = rng.integers(1, 65, n)
    batch = {"op": ops, "batch": rng.integers(1, 3, n), "in_channels": cin,
             "out_channels": np.where(ops == "conv2d", cin * rng.integers(1, 3, n), rng.integers(1, 65, n)),
             "in_h": (hw := rng.choice([4, 8, 16], n)), "in_w": hw,
             "kernel_h": np.where(ops == "conv2d", rng.choice([1, 3], n), np.where(ops == "pooling", 2, 1)),
             "stride": np.where(ops == "pooling", 2, 1), "padding": np.where(ops == "conv2d", 1, 0),
             "groups": np.where((ops == "conv2d") & (rng.random(n) < 0.3), cin, 1),
             "variant": np.where(ops == "pooling", "max", np.where(ops == "activation", "relu", ""))}
    one = table_from_columns(batch)
    np.testing.assert_array_equal(table_from_columns(batch, threads=2), one)
    specs = [LayerSpec("conv2d", (int(b), int(c), int(h), int(h)), out_channels=int(o), kernel=int(k), padding=1,
                       groups=int(g))
             for b, c, h, o, k, g, op in zip(batch["batch"], cin, hw, batch["out_channels"], batch["kernel_h"],
                                             batch["groups"], ops) if op == "conv2d"][:200]
    conv_rows = one[ops == "conv2d"][:200]
    np.testing.assert_array_equal(conv_rows, spec_table(specs))
    np.testing.assert_array_equal(p.predict(batch), reference(p, one))  # type: ignore[attr-defined]


def test_error_rows_are_numbered_in_the_whole_batch() -> None:
    from hwloop.errors import PredictorError

    n = 2 * BLOCK_ROWS + 5
    batch = {"op": np.full(n, "add"), "batch": np.ones(n, dtype=np.int64), "in_channels": np.full(n, 8)}
    batch["batch"][BLOCK_ROWS + 3] = 0
    with pytest.raises(PredictorError, match=f"column 'batch' row {BLOCK_ROWS + 3} is 0"):
        table_from_columns(batch, threads=2)


def test_schema1_file_predicts_the_same_on_a_large_repeated_batch() -> None:
    exp = json.loads((V1 / "expected.json").read_text())
    p = load_predictor(V1 / "predictor.json")
    specs = [LayerSpec.from_dict(d) for d in exp["specs"]]
    table = np.tile(spec_table(specs), (max(2, _DEDUP_MIN_ROWS // len(specs) + 1), 1))
    np.testing.assert_allclose(p.predict(table), np.tile(exp["predict_ms"], table.shape[0] // len(specs)),
                               rtol=1e-6)
    np.testing.assert_array_equal(p.predict(table), reference(p, table))


# --------------------------------------------------------------------------- the fast paths (issue 15)
SHIPPED = sorted(p for p in (REPO / "measurements").glob("*/predictor.json")
                 if json.loads(p.read_text()).get("predictor") == "xgboost")


def _tables() -> dict[str, np.ndarray]:
    """Random raw tables: LayerSpecs with low-bit and low-rank layers, and a distinct columnar batch (the
    throughput benchmark's generator)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_predict import distinct_batch

    specs = random_layer_specs(6000, np.random.default_rng(8), bits=((None, None), (4, 8), (2, 8), (8, 4)))
    return {"specs": spec_table(specs), "columnar": distinct_batch(34_000, np.random.default_rng(9))[1]}


@pytest.fixture(scope="module")
def tables() -> dict[str, np.ndarray]:
    return _tables()


@pytest.mark.parametrize("schema", [1, 2, 3])
def test_fast_features_are_bit_identical_to_the_reference(tables: dict[str, np.ndarray], schema: int) -> None:
    from hwloop.predict.features import baseline_terms

    for name, t in tables.items():
        acc_ref: dict = {}
        acc: dict = {}
        want = reference_features(t, schema, accel_out=acc_ref)
        got = features_from_table(t, schema, accel_out=acc)
        assert got.shape == want.shape and got.dtype == np.float32, name
        bad = np.flatnonzero(~np.all(got == want, axis=0))
        assert bad.size == 0, f"{name}: features {bad.tolist()} differ"
        for k, v in acc_ref.items():
            np.testing.assert_array_equal(np.broadcast_to(acc[k], v.shape), v, err_msg=k)
        if schema >= 2:  # the (18, n) terms are baseline_terms' columns
            np.testing.assert_array_equal(acc["terms_T"].T, baseline_terms(t))


def test_fast_features_fall_back_on_invalid_op_codes(tables: dict[str, np.ndarray]) -> None:
    t = tables["specs"][:50].copy()
    t[3, 0] = 1.5  # not an op code: the reference's own behaviour
    np.testing.assert_array_equal(features_from_table(t), reference_features(t))


@pytest.mark.parametrize("schema", [1, 2, 3])
def test_jit_kernel_is_bit_identical_to_the_reference(tables: dict[str, np.ndarray], schema: int) -> None:
    pytest.importorskip("numba")
    from hwloop.predict.features_jit import jit_block, order

    coef = load_predictor(SHIPPED[0]).baseline_coef_ if schema >= 2 else None  # type: ignore[attr-defined]
    for name, t in tables.items():
        got = jit_block(t, schema, coef, {})
        assert got is not None
        x, margin = got
        want = reference_features(t, schema)
        assert x.flags.c_contiguous and x.dtype == np.float32
        x = x[:, np.argsort(order(schema))]  # the kernel's column order -> the feature order
        bad = np.flatnonzero(~np.all(x == want, axis=0))
        assert bad.size == 0, f"{name}: features {bad.tolist()} differ"
        if coef is not None:
            assert margin is not None
            ref = np.log(baseline_ms(t, coef)).astype(np.float32)
            np.testing.assert_allclose(margin, ref, rtol=1e-6)  # float32 margin: a last-bit flip at most
            assert np.count_nonzero(margin != ref) <= len(t) // 10_000
    bad_t = tables["specs"][:10].copy()
    bad_t[2, 5] = np.nan
    assert jit_block(bad_t, schema, coef) is None  # non-finite rows: the numpy path decides


def test_baseline_from_the_terms_matches_the_definition(tables: dict[str, np.ndarray]) -> None:
    for path in SHIPPED:
        coef = load_predictor(path).baseline_coef_  # type: ignore[attr-defined]
        if coef is None:
            continue
        for t in tables.values():
            acc: dict = {}
            features_from_table(t, 3, accel_out=acc)
            got, want = baseline_ms(t, coef, acc), baseline_ms(t, coef)
            np.testing.assert_allclose(got, want, rtol=1e-14)
            assert np.count_nonzero(np.log(got).astype(np.float32) != np.log(want).astype(np.float32)) == 0


@pytest.mark.parametrize("jit", ["on", "off"])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_predictors_predict_what_the_definition_predicts(
        tables: dict[str, np.ndarray], path: Path, jit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole batched path (de-duplication check, blocks, fast or fused features, baseline, trees) on every
    shipped XGBoost predictor: within 1e-12 of the definition (in practice equal)."""
    from hwloop.predict.features_jit import JIT_MIN_ROWS, available

    if jit == "off":
        monkeypatch.setenv("HWLOOP_NO_JIT", "1")
    elif not available():
        pytest.skip("numba is not installed (the fused kernel is optional: pip install hwloop[fast])")
    p = load_predictor(path)
    for name, t in tables.items():
        table = t if len(t) >= JIT_MIN_ROWS else np.tile(t, (JIT_MIN_ROWS // len(t) + 1, 1))[::-1].copy()
        for n_jobs in (1, 2):
            p.n_jobs = n_jobs  # type: ignore[attr-defined]
            got, want = p.predict(table), reference(p, table)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{path} {name} n_jobs={n_jobs}")


def test_a_sample_without_repeats_skips_the_full_check(fitted: tuple[object, list[LayerSpec]],
                                                       tables: dict[str, np.ndarray],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from hwloop.predict import columnar
    from hwloop.predict.learned import _DEDUP_SAMPLE

    p, _ = fitted
    t = tables["columnar"]
    assert len(t) >= 4 * _DEDUP_SAMPLE
    seen: list[int] = []
    real = columnar.unique_rows

    def counting(table: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(table))
        return real(table, seed)

    monkeypatch.setattr(columnar, "unique_rows", counting)
    np.testing.assert_array_equal(p.predict(t), reference(p, t))  # type: ignore[attr-defined]
    assert seen == [_DEDUP_SAMPLE]  # only the sample was checked
    seen.clear()
    twice = np.concatenate([t, t])[np.random.default_rng(0).permutation(2 * len(t))]  # 50% repeats, shuffled
    calls: list[int] = []
    real_rows = p._predict_rows  # type: ignore[attr-defined]
    p._predict_rows = lambda rows: (calls.append(len(rows)), real_rows(rows))[1]  # type: ignore[attr-defined]
    try:
        got = p.predict(twice)  # type: ignore[attr-defined]
    finally:
        del p._predict_rows  # type: ignore[attr-defined]
    assert seen == [_DEDUP_SAMPLE, len(twice)] and calls == [len(t)]
    np.testing.assert_array_equal(got, reference(p, twice))


def test_the_permuted_booster_predicts_what_the_booster_predicts(tables: dict[str, np.ndarray]) -> None:
    pytest.importorskip("xgboost")
    from hwloop.predict.features_jit import order, permuted_booster

    for path in SHIPPED:
        p = load_predictor(path)
        schema = p.feature_schema_  # type: ignore[attr-defined]
        x = np.ascontiguousarray(reference_features(tables["specs"], schema))
        b = permuted_booster(p.booster_, schema)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(b.inplace_predict(np.ascontiguousarray(x[:, order(schema)])),
                                      p.booster_.inplace_predict(x))  # type: ignore[attr-defined]
