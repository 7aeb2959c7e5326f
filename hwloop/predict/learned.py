"""Learned layer predictors: XGBoost (default) and scikit-learn / lookup-table baselines.

Every predictor here regresses log-latency on the engineered features of
:mod:`hwloop.predict.features` and shares the :class:`~hwloop.predict.base.BasePredictor`
contract. Saved forms are portable: XGBoost's own UBJ format; scikit-learn models as their
parameters (ridge coefficients, tree arrays in safetensors) evaluated with numpy, never pickle.

Example:
    >>> import numpy as np
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.predict.learned import RidgeMacsPredictor
    >>> specs = [LayerSpec("linear", (1, n), out_channels=n) for n in (16, 32, 64, 128)]
    >>> p = RidgeMacsPredictor().fit(specs, [s.macs * 1e-6 + 0.01 for s in specs])
    >>> p.predict(specs).shape
    (4,)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.opkinds import OP_KINDS
from hwloop.predict.base import BasePredictor
from hwloop.predict.features import RAW_COLUMNS, baseline_terms

__all__ = [
    "GradientBoostingPredictor",
    "LookupTablePredictor",
    "RandomForestPredictor",
    "RidgeMacsPredictor",
    "XGBoostPredictor",
    "baseline_ms",
    "export_sklearn_trees",
    "fit_baseline",
    "predict_tree_arrays",
]

_R = {c: i for i, c in enumerate(RAW_COLUMNS)}


BASELINES = ("nnls", "none")
#: batches of at least this many rows are checked for repeated rows (cheap next to predicting them)
_DEDUP_MIN_ROWS = 4096
#: batches of at least 4x this many rows check a random sample of this many rows first; only a sample with a
#: repeated row leads to the full check (a batch with >= 10% repeats spread over 10^6 rows shows some in the
#: sample; one that shows none is predicted row by row: the same predictions, the full check's cost saved)
_DEDUP_SAMPLE = 8192


def fit_baseline(table: np.ndarray, y_ms: np.ndarray) -> dict[str, Any]:
    """Per-op-kind non-negative linear model of latency on :func:`baseline_terms` (relative error).

    Returns:
        ``{"per_op": {op_code: coef}, "global": coef}``; the global fit serves op kinds unseen in fitting.
    """
    from scipy.optimize import nnls

    terms = baseline_terms(table)

    def solve(rows: np.ndarray) -> list[float]:
        a = terms[rows] / y_ms[rows, None]
        col = np.maximum(np.abs(a).max(axis=0), 1e-12)
        sol, _ = nnls(a / col, np.ones(int(rows.sum())), maxiter=20 * a.shape[1] + 2000)
        return [float(v) for v in sol / col]

    op = table[:, _R["op"]].astype(np.int64)
    return {"per_op": {str(o): solve(op == o) for o in np.unique(op)}, "global": solve(np.ones(len(op), bool))}


def baseline_ms(table: np.ndarray, coef: Mapping[str, Any], accel: dict[str, np.ndarray] | None = None
                ) -> np.ndarray:
    """The baseline latency (ms, > 0) of each row of a raw table under :func:`fit_baseline` coefficients.

    With ``accel["terms_T"]`` (from :func:`~hwloop.predict.features.features_from_table`'s ``accel_out``) every
    op kind's linear model is evaluated in one matrix product and each row takes its own kind's value: the
    same sums in another order (a float64 result may differ in its last bit; 0 of 300,000 random rows changed
    the float32 margin the trees get, ``tests/test_predict_throughput.py``)."""
    op = table[:, _R["op"]].astype(np.int64)
    terms_t = None if accel is None else accel.get("terms_T")
    if terms_t is not None and terms_t.shape[1] == len(op) and (len(op) == 0 or 0 <= op.min() <= op.max() < 64):
        keys = [k for k in coef["per_op"] if 0 <= int(k) < 64]
        cm = np.asarray([coef["global"], *(coef["per_op"][k] for k in keys)], dtype=np.float64)
        lut = np.zeros(64, dtype=np.int64)
        for j, k in enumerate(keys):
            lut[int(k)] = j + 1
        every = cm @ terms_t  # (1 + op kinds, n)
        return np.maximum(np.take_along_axis(every, lut[op][None, :], axis=0)[0], 1e-7)
    terms = baseline_terms(table, accel)
    out = terms @ np.asarray(coef["global"], dtype=np.float64)
    for o, c in coef["per_op"].items():
        rows = op == int(o)
        if rows.any():
            out[rows] = terms[rows] @ np.asarray(c, dtype=np.float64)
    return np.maximum(out, 1e-7)


_local = threading.local()
_jit_lock = threading.Lock()


def _scratch() -> dict[str, np.ndarray]:
    """Per-thread buffers of the fused kernel (reused block after block: no page faults per block)."""
    d = getattr(_local, "scratch", None)
    if d is None:
        d = _local.scratch = {}
    return d


class XGBoostPredictor(BasePredictor):
    """Gradient-boosted trees (XGBoost) on engineered features; target log-latency.

    With ``baseline="nnls"`` (default) the trees boost from a per-op-kind non-negative linear
    model of latency on hardware-style terms (packed array work, tiled DRAM traffic, bytes,
    elements; :func:`fit_baseline`), passed to XGBoost as ``base_margin``: the linear part of
    latency is smooth, which trees approximate poorly from a few thousand layers.

    The default shape (80 trees of depth 8, learning rate 0.15, 60% of the features per tree) is the
    accuracy/throughput trade-off measured by ``benchmarks/bench_predict.py --boosters`` on the shipped
    data sets: ≥ 96% (CPU) / ≥ 99% (ASIC) of held-out layers within ±10% at ~0.7M distinct layers per
    CPU-second (docs/predictors.md).

    Args:
        n_estimators: boosting rounds.
        max_depth: tree depth.
        learning_rate: shrinkage.
        subsample / colsample_bytree: row / column sampling per tree.
        min_child_weight: minimum hessian per leaf.
        n_jobs: threads for training and prediction.
        seed: random seed.
        baseline: ``"nnls"`` or ``"none"`` (trees start from the mean; schema-1 files).
        batch_rows: rows per chunk when predicting large batches (bounds memory; keeps features in cache).

    Example:
        >>> import numpy as np
        >>> from hwloop.predict.sampling import random_layer_specs
        >>> specs = random_layer_specs(200, np.random.default_rng(0))
        >>> p = XGBoostPredictor(n_estimators=20, n_jobs=1).fit(specs, [s.macs * 1e-7 + 0.01 for s in specs])
        >>> p.predict(specs[:3]).shape
        (3,)
    """

    kind = "xgboost"
    model_ext = "ubj"

    def __init__(self, n_estimators: int = 80, max_depth: int = 8, learning_rate: float = 0.15,
                 subsample: float = 0.8, colsample_bytree: float = 0.6, min_child_weight: float = 1.0,
                 n_jobs: int = 2, seed: int = 0, baseline: str = "nnls", batch_rows: int = 65536,
                 fingerprint: Any = None, mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)
        if baseline not in BASELINES:
            raise PredictorError(f"baseline {baseline!r} is unknown; allowed: {', '.join(BASELINES)}")
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise PredictorError(f"batch_rows={batch_rows!r} must be a positive integer")
        self.baseline = baseline
        self.batch_rows = batch_rows
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.n_jobs = n_jobs
        self.seed = seed

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:
        import xgboost as xgb

        params = {"objective": "reg:squarederror", "max_depth": self.max_depth, "eta": self.learning_rate,
                  "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
                  "min_child_weight": self.min_child_weight, "nthread": self.n_jobs, "seed": self.seed,
                  "tree_method": "hist"}
        self.baseline_coef_ = fit_baseline(table, y_ms) if self.baseline == "nnls" else None
        margin = self._margin(table)
        dm = xgb.DMatrix(self._features(table), label=np.log(y_ms), base_margin=margin)
        self.booster_ = xgb.train(params, dm, num_boost_round=self.n_estimators)

    def _margin(self, table: np.ndarray) -> np.ndarray | None:
        coef = getattr(self, "baseline_coef_", None)
        return None if coef is None else np.log(baseline_ms(table, coef))

    def predict_features(self, x: np.ndarray, margin: np.ndarray | None = None) -> np.ndarray:
        """Latency (ms) from a feature matrix (``feature_names(feature_schema_)`` columns) and, for a
        predictor with a baseline, the log-baseline of each row (``margin``)."""
        self._check_fitted()
        if getattr(self, "baseline_coef_", None) is not None and margin is None:
            raise PredictorError("this predictor boosts from a baseline: pass margin=log(baseline_ms(table)) or "
                                 "call predict(table)")
        kw = {} if margin is None else {"base_margin": np.asarray(margin, dtype=np.float32)}
        from hwloop.predict.base import checked_latencies

        return checked_latencies(np.exp(self.booster_.inplace_predict(np.asarray(x, dtype=np.float32), **kw)
                                        .astype(np.float64)), type(self).__name__)

    def _table(self, x: Any) -> np.ndarray:
        """As for every predictor; a columnar batch's raw table is derived in ``n_jobs`` threads."""
        if isinstance(x, Mapping) or (isinstance(x, np.ndarray) and x.dtype.names is not None):
            from hwloop.predict.columnar import table_from_columns

            return table_from_columns(x, threads=max(1, int(self.n_jobs)))
        return super()._table(x)

    def _predict_block(self, rows: np.ndarray, booster: Any, jit: bool = False) -> np.ndarray:
        """Latency (ms) of a few thousand raw-table rows (features, baseline and trees of one block); ``jit``:
        through the fused kernel of :mod:`hwloop.predict.features_jit` (the same features and predictions)."""
        from hwloop.predict.features import features_from_table

        coef = getattr(self, "baseline_coef_", None)
        if jit:
            from hwloop.predict.features_jit import jit_block

            schema = getattr(self, "feature_schema_", 1)
            got = jit_block(rows, schema, coef, _scratch())
            if got is not None:
                xj, mj = got
                bj = self._jit_booster(booster, schema)
                raw = bj.inplace_predict(xj) if mj is None else bj.inplace_predict(xj, base_margin=mj)
                return np.exp(np.asarray(raw, dtype=np.float64))
        accel: dict[str, np.ndarray] = {}
        x = features_from_table(rows, getattr(self, "feature_schema_", 1), accel_out=accel)
        if coef is None:
            raw = booster.inplace_predict(x)
        else:
            margin = np.log(baseline_ms(rows, coef, accel or None)).astype(np.float32)
            raw = booster.inplace_predict(x, base_margin=margin)
        return np.exp(np.asarray(raw, dtype=np.float64))

    def _jit_booster(self, booster: Any, schema: int) -> Any:
        """``booster`` reading the fused kernel's column order (:func:`~hwloop.predict.features_jit.permuted_booster`),
        made once per booster object."""
        from hwloop.predict.features_jit import permuted_booster

        cache: dict[int, tuple[Any, Any]] = self.__dict__.setdefault("_jit_boosters", {})
        hit = cache.get(id(booster))
        if hit is None or hit[0] is not booster:
            with _jit_lock:
                hit = cache.get(id(booster))
                if hit is None or hit[0] is not booster:
                    hit = cache[id(booster)] = (booster, permuted_booster(booster, schema))
        return hit[1]

    def _worker_boosters(self) -> list[Any]:
        """One single-threaded copy of the booster per worker thread (no oversubscription, no shared state)."""
        import xgboost as xgb

        cache = self.__dict__.get("_workers")
        want = max(1, int(self.n_jobs))
        if cache is None or cache[0] is not self.booster_ or len(cache[1]) != want:
            raw = self.booster_.save_raw("ubj")
            copies = []
            for _ in range(want):
                b = xgb.Booster(params={"nthread": 1})
                b.load_model(raw)
                copies.append(b)
            cache = (self.booster_, copies)
            self.__dict__["_workers"] = cache
        return list(cache[1])

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        """Batched prediction: identical rows predicted once, then blocks of ``BLOCK_ROWS`` rows.

        Rows repeat in real batches (the same layer shapes across candidate models): a batch of at
        least ``_DEDUP_MIN_ROWS`` rows is de-duplicated exactly (:func:`~hwloop.predict.columnar.unique_rows`)
        and, when at least 10% of its rows are repeats, only its distinct rows are predicted (a large batch
        first checks a random sample of ``_DEDUP_SAMPLE`` rows and skips the full check when the sample has
        no repeat). Blocks are
        cache-sized (features are 2x cheaper per row than on 64k-row chunks); large batches run
        them in ``n_jobs`` threads (numpy and XGBoost release the GIL), each with its own
        single-threaded booster copy. Every row's prediction is the same as predicting it alone.
        """
        n = table.shape[0]
        if n >= _DEDUP_MIN_ROWS:
            from hwloop.predict.columnar import unique_rows

            if n >= 4 * _DEDUP_SAMPLE:  # a random sample without any repeat: the whole check is not worth it
                pick = np.sort(np.random.default_rng(0).choice(n, _DEDUP_SAMPLE, replace=False))
                if len(unique_rows(table[pick])[0]) == _DEDUP_SAMPLE:
                    return self._predict_rows(table)
            first, inverse = unique_rows(table)
            if len(first) <= 0.9 * n:
                return self._predict_rows(table[first])[inverse]
        return self._predict_rows(table)

    def _predict_rows(self, table: np.ndarray) -> np.ndarray:
        from hwloop.predict.columnar import BLOCK_ROWS
        from hwloop.predict.features_jit import JIT_MIN_ROWS, available

        n = table.shape[0]
        jit = n >= JIT_MIN_ROWS and available()
        # numpy features: cache-sized blocks; the fused kernel streams rows, so its blocks are batch_rows long
        # (each XGBoost call costs ~2 ms of set-up, ~0.2 us per row of an 8,192-row block)
        step = self.batch_rows if jit else min(BLOCK_ROWS, self.batch_rows)
        out = np.empty(n)
        if n <= step or self.n_jobs <= 1:
            # one thread asked for: a single-threaded booster copy (the loaded booster may carry another nthread)
            booster = self._worker_boosters()[0] if self.n_jobs <= 1 else self.booster_
            for s in range(0, n, step):
                out[s:s + step] = self._predict_block(table[s:s + step], booster, jit)
            return out
        from concurrent.futures import ThreadPoolExecutor

        workers = self._worker_boosters()
        starts = list(range(0, n, step))

        def run(w: int) -> None:
            for s in starts[w::len(workers)]:
                out[s:s + step] = self._predict_block(table[s:s + step], workers[w], jit)

        with ThreadPoolExecutor(len(workers)) as ex:
            list(ex.map(run, range(len(workers))))
        return out

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        coef = getattr(self, "baseline_coef_", None)
        return ({"baseline_coef": coef} if coef is not None else {}), {}, bytes(self.booster_.save_raw("ubj"))

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        import xgboost as xgb

        self.baseline_coef_ = state.get("baseline_coef")
        if self.baseline_coef_ is None:
            self.baseline = "none"  # schema-1 files (and baseline="none" fits) boost from the mean
        if native is None:
            raise PredictorError("an XGBoost predictor file needs its .ubj model beside it")
        from hwloop.predict.booster_check import checked_booster
        from hwloop.predict.features import feature_names

        # XGBoost's loader can crash the process on a corrupt file: it only ever sees bytes hwloop parsed,
        # checked and re-encoded itself
        canonical = checked_booster(native, n_features=len(feature_names(getattr(self, "feature_schema_", 1))))
        self.booster_ = xgb.Booster(params={"nthread": self.n_jobs})
        try:
            self.booster_.load_model(bytearray(canonical))
        except xgb.core.XGBoostError as e:
            raise PredictorError(f"XGBoost model is corrupt: {str(e).splitlines()[0]}") from e


class RidgeMacsPredictor(BasePredictor):
    """Baseline: ridge regression of log-latency on log-MACs, log-bytes and op kind.

    Args:
        alpha: L2 penalty.
    """

    kind = "ridge_macs"

    def __init__(self, alpha: float = 1e-3, fingerprint: Any = None, mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)
        self.alpha = alpha

    @staticmethod
    def _x(table: np.ndarray) -> np.ndarray:
        n = table.shape[0]
        onehot = np.zeros((n, len(OP_KINDS)))
        onehot[np.arange(n), table[:, _R["op"]].astype(np.int64)] = 1.0
        lm = np.log(table[:, _R["macs"]] + 1.0)
        return np.column_stack([lm, onehot, onehot * lm[:, None]])

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:
        from sklearn.linear_model import Ridge

        r = Ridge(alpha=self.alpha).fit(self._x(table), np.log(y_ms))
        self.coef_ = np.asarray(r.coef_, dtype=np.float64)
        self.intercept_ = float(r.intercept_)

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        return np.exp(self._x(table) @ self.coef_ + self.intercept_)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        return {"coef_": self.coef_.tolist(), "intercept_": self.intercept_}, {}, None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        self.coef_ = np.asarray(state["coef_"], dtype=np.float64)
        self.intercept_ = float(state["intercept_"])


def export_sklearn_trees(estimators: Any) -> dict[str, np.ndarray]:
    """Portable arrays of fitted scikit-learn regression trees (concatenated, global node ids)."""
    lefts, rights, feats, thrs, vals, roots = [], [], [], [], [], []
    off = 0
    depth = 0
    for est in estimators:
        t = est.tree_
        left = t.children_left.astype(np.int64)
        right = t.children_right.astype(np.int64)
        lefts.append(np.where(left >= 0, left + off, -1))
        rights.append(np.where(right >= 0, right + off, -1))
        feats.append(np.maximum(t.feature, 0).astype(np.int64))
        thrs.append(t.threshold.astype(np.float64))
        vals.append(t.value.reshape(t.node_count, -1)[:, 0].astype(np.float64))
        roots.append(off)
        depth = max(depth, int(t.max_depth))
        off += t.node_count
    return {"left": np.concatenate(lefts), "right": np.concatenate(rights), "feature": np.concatenate(feats),
            "threshold": np.concatenate(thrs), "value": np.concatenate(vals), "roots": np.asarray(roots),
            "max_depth": np.asarray([depth])}


def predict_tree_arrays(arrays: Mapping[str, np.ndarray], x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Per-tree leaf values, shape (n_trees, n_rows), of :func:`export_sklearn_trees` arrays (numpy only)."""
    x = np.asarray(x, dtype=np.float32)  # scikit-learn compares float32 features with float64 thresholds
    left, right, feat, thr, val = (arrays[k] for k in ("left", "right", "feature", "threshold", "value"))
    roots = arrays["roots"]
    depth = int(arrays["max_depth"][0])
    out = np.empty((len(roots), x.shape[0]))
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        rows = np.arange(xs.shape[0])[None, :]
        node = np.repeat(roots[:, None], xs.shape[0], axis=1)
        for _ in range(depth):
            lc = left[node]
            go_left = xs[rows, feat[node]] <= thr[node]
            node = np.where(lc < 0, node, np.where(go_left, lc, right[node]))
        out[:, s:s + chunk] = val[node]
    return out


class _SklearnTrees(BasePredictor):
    """Shared fit/predict/state of the scikit-learn tree ensembles (evaluated from exported arrays)."""

    def _make(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def _combine(self, per_tree: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:
        x = self._features(table)
        est = self._make().fit(x, np.log(y_ms))
        self._from_estimator(est)
        check = self._combine(predict_tree_arrays(self.trees_, x[:64]))
        if not np.allclose(check, est.predict(x[:64]), rtol=1e-6, atol=1e-9):
            raise PredictorError(f"exported {self.kind} trees disagree with scikit-learn; refusing to use them")

    def _from_estimator(self, est: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        return np.exp(self._combine(predict_tree_arrays(self.trees_, self._features(table))))

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        return {"base_": getattr(self, "base_", 0.0)}, dict(self.trees_), None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        need = {"left", "right", "feature", "threshold", "value", "roots", "max_depth"}
        if need - set(arrays):
            raise PredictorError(f"tree arrays {sorted(need - set(arrays))} are missing from the predictor file")
        self.trees_ = {k: np.asarray(arrays[k]) for k in need}
        self.base_ = float(state.get("base_", 0.0))


class RandomForestPredictor(_SklearnTrees):
    """Baseline: scikit-learn random forest on engineered features (log-latency target).

    Args:
        n_estimators: trees.
        max_depth: tree depth limit (None: unlimited).
        min_samples_leaf: minimum rows per leaf.
        seed: random seed.
    """

    kind = "random_forest"

    def __init__(self, n_estimators: int = 100, max_depth: int | None = 18, min_samples_leaf: int = 1,
                 seed: int = 0, fingerprint: Any = None, mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.seed = seed

    def _make(self) -> Any:
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                     min_samples_leaf=self.min_samples_leaf, random_state=self.seed, n_jobs=1)

    def _from_estimator(self, est: Any) -> None:
        self.trees_ = export_sklearn_trees(est.estimators_)
        self.base_ = 0.0

    def _combine(self, per_tree: np.ndarray) -> np.ndarray:
        return per_tree.mean(axis=0)


class GradientBoostingPredictor(_SklearnTrees):
    """Baseline: scikit-learn gradient boosting on engineered features (log-latency target).

    Args:
        n_estimators: boosting stages.
        max_depth: tree depth.
        learning_rate: shrinkage.
        seed: random seed.
    """

    kind = "gradient_boosting"

    def __init__(self, n_estimators: int = 300, max_depth: int = 5, learning_rate: float = 0.1, seed: int = 0,
                 fingerprint: Any = None, mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.seed = seed

    def _make(self) -> Any:
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                         learning_rate=self.learning_rate, random_state=self.seed)

    def _from_estimator(self, est: Any) -> None:
        self.trees_ = export_sklearn_trees(est.estimators_[:, 0])
        self.trees_["value"] = self.trees_["value"] * est.learning_rate
        self.base_ = float(np.asarray(est.init_.constant_).reshape(-1)[0])

    def _combine(self, per_tree: np.ndarray) -> np.ndarray:
        return self.base_ + per_tree.sum(axis=0)


_KEY_COLS = ("op", "variant", "kernel_h", "stride", "batch", "dtype_bytes", "out_h")


class LookupTablePredictor(BasePredictor):
    """Baseline: a lookup table with log-log interpolation over MACs.

    Layers are grouped by (op, variant, kernel, stride, depthwise, low-rank, batch, dtype,
    output size); within a group latency is interpolated in log-MACs (extrapolated with the
    op's global log-log slope). Unseen groups use the op's global log-log line.
    """

    kind = "lookup"

    def __init__(self, fingerprint: Any = None, mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)

    @staticmethod
    def _keys(table: np.ndarray) -> np.ndarray:
        cols = [table[:, _R[c]] for c in _KEY_COLS]
        dw = (table[:, _R["groups"]] > 1) & (table[:, _R["groups"]] == table[:, _R["in_channels"]])
        return np.column_stack([*cols, dw, table[:, _R["rank"]] > 0]).astype(np.int64)

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:
        keys = self._keys(table)
        lx, ly = np.log(table[:, _R["macs"]] + 1.0), np.log(y_ms)
        op = table[:, _R["op"]].astype(np.int64)
        line = np.zeros((len(OP_KINDS), 2))
        line[:, 1] = float(np.median(ly))
        for o in np.unique(op):
            m = op == o
            if m.sum() >= 2 and np.ptp(lx[m]) > 0:
                line[o] = np.polyfit(lx[m], ly[m], 1)
            else:
                line[o] = (0.0, float(np.mean(ly[m])))
        uk, inv = np.unique(keys, axis=0, return_inverse=True)
        order = np.lexsort((lx, inv.reshape(-1)))
        self.op_line_ = line
        self.group_keys_ = uk
        self.point_group_ = inv.reshape(-1)[order]
        self.point_x_ = lx[order]
        self.point_y_ = ly[order]

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        keys = self._keys(table)
        lx = np.log(table[:, _R["macs"]] + 1.0)
        op = table[:, _R["op"]].astype(np.int64)
        out = self.op_line_[op, 0] * lx + self.op_line_[op, 1]
        index = {tuple(k): i for i, k in enumerate(self.group_keys_.tolist())}
        starts = np.searchsorted(self.point_group_, np.arange(len(self.group_keys_)))
        ends = np.searchsorted(self.point_group_, np.arange(len(self.group_keys_)), side="right")
        uk, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        for j, k in enumerate(uk.tolist()):
            g = index.get(tuple(k))
            if g is None:
                continue
            rows = inv == j
            xs, ys = self.point_x_[starts[g]:ends[g]], self.point_y_[starts[g]:ends[g]]
            q = lx[rows]
            pred = np.interp(q, xs, ys)
            slope = self.op_line_[op[rows], 0]
            pred = np.where(q < xs[0], ys[0] + slope * (q - xs[0]), pred)
            pred = np.where(q > xs[-1], ys[-1] + slope * (q - xs[-1]), pred)
            out[rows] = pred
        return np.exp(out)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        return {}, {"op_line": self.op_line_, "group_keys": self.group_keys_, "point_group": self.point_group_,
                    "point_x": self.point_x_, "point_y": self.point_y_}, None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        try:
            self.op_line_ = np.asarray(arrays["op_line"])
            self.group_keys_ = np.asarray(arrays["group_keys"])
            self.point_group_ = np.asarray(arrays["point_group"])
            self.point_x_ = np.asarray(arrays["point_x"])
            self.point_y_ = np.asarray(arrays["point_y"])
        except KeyError as e:
            raise PredictorError(f"lookup-table array {e.args[0]!r} is missing from the predictor file") from e

