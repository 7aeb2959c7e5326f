"""Validation of predictor files: every field of the metadata and every array, before use.

A predictor file may come from someone else, and its hashes only prove it is what its author
wrote, not that it is sane. :func:`validate_metadata` checks each field of the metadata JSON
(types, finite numbers, ranges, signs: a scale, an aggregation coefficient or a baseline
coefficient is never negative; a count is a non-negative integer; names are from the known
sets) and :func:`validate_arrays` the safetensors arrays of tree and lookup predictors (dtypes,
shapes, indices in range, finite values), so that a loaded predictor cannot index out of
bounds or compute a NaN or negative latency. Each failure is one
:class:`~hwloop.errors.PredictorError` line naming the field, the value and what is allowed.

:func:`strict_json` parses metadata refusing ``NaN``/``Infinity`` and numbers that overflow.

Example:
    >>> from hwloop.predict.validate import validate_params
    >>> validate_params("xgboost", {"learning_rate": -1.0}, "p.json")
    Traceback (most recent call last):
    ...
    hwloop.errors.PredictorError: predictor file 'p.json': params.learning_rate=-1.0 must be a finite number in (0, 10]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hwloop.errors import PredictorError

__all__ = ["strict_json", "validate_arrays", "validate_metadata", "validate_params"]

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_IDENT = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_MAX_INT = 2**53

# name -> (kind, low, high, low_open, allow_none); kind "int" or "float" or a tuple of allowed strings
_PARAMS: dict[str, tuple[Any, float, float, bool, bool]] = {
    "n_estimators": ("int", 1, 100_000, False, False),
    "max_depth": ("int", 1, 256, False, True),
    "learning_rate": ("float", 0, 10, True, False),
    "subsample": ("float", 0, 1, True, False),
    "colsample_bytree": ("float", 0, 1, True, False),
    "min_child_weight": ("float", 0, 1e9, False, False),
    "min_samples_leaf": ("int", 1, 1 << 30, False, False),
    "n_jobs": ("int", 1, 1024, False, False),
    "seed": ("int", 0, 2**32 - 1, False, False),
    "baseline": (("nnls", "none"), 0, 0, False, False),
    "batch_rows": ("int", 1, 1 << 31, False, False),
    "alpha": ("float", 0, 1e12, False, False),
    "scale_ms_per_mac": ("float", 0, 1e6, True, False),
    "ridge": ("float", 0, 1e12, False, False),
    "sms": ("int", 0, 1 << 20, False, False),
    "layer_weight": ("float", 0, 1e6, False, False),
    "gpu_bound_ms": ("float", 0, 1e6, False, False),
}
_METRIC_RANGES = {"acc5": (0.0, 1.0), "acc10": (0.0, 1.0), "spearman": (-1.0, 1.0), "mape": (0.0, math.inf),
                  "rmse_ms": (0.0, math.inf), "n": (0.0, math.inf), "folds": (0.0, math.inf),
                  "test_frac": (0.0, 1.0), "n_layers": (0.0, math.inf), "n_models": (0.0, math.inf)}
_TOP_KEYS = {"schema_version", "predictor", "params", "feature_schema", "features", "target", "target_statistic",
             "fingerprint", "mode", "training_data_hash", "n_train", "metrics", "aggregator", "state", "files",
             "hwloop_version", "created", "metadata_sha256", "probe"}


def _bad_constant(s: str) -> Any:
    raise PredictorError(f"number {s} is not allowed in a predictor file (numbers must be finite)")


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise PredictorError(f"number {s[:32]} overflows (numbers in a predictor file must be finite)")
    return v


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN, ±Infinity and overflowing numbers (PredictorError)."""
    return json.loads(text, parse_constant=_bad_constant, parse_float=_float)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fail(where: str, msg: str) -> PredictorError:
    return PredictorError(f"predictor file {where!r}: {msg}")


def validate_params(kind: str, params: Any, where: str) -> dict[str, Any]:
    """Check constructor parameters of a built-in predictor kind against :data:`_PARAMS` ranges."""
    if not isinstance(params, Mapping):
        raise _fail(where, f"params must be an object, got {type(params).__name__}")
    for k, v in params.items():
        rule = _PARAMS.get(k)
        if rule is None:
            raise _fail(where, f"params.{k} is not a parameter hwloop knows; allowed: {', '.join(sorted(_PARAMS))}")
        typ, lo, hi, lo_open, none_ok = rule
        if v is None and none_ok:
            continue
        if isinstance(typ, tuple):
            if v not in typ:
                raise _fail(where, f"params.{k}={v!r} is unknown; allowed: {', '.join(typ)}")
            continue
        ok = _is_num(v) and (isinstance(v, int) if typ == "int" else True) and (lo < v if lo_open else lo <= v) \
            and v <= hi
        if not ok:
            what = "an integer" if typ == "int" else "a finite number"
            raise _fail(where, f"params.{k}={v!r} must be {what} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
                               + (" or null" if none_ok else ""))
    return dict(params)


def _check_metrics(m: Any, where: str, path: str = "metrics", depth: int = 0) -> None:
    if depth > 8:
        raise _fail(where, f"{path} is nested too deeply")
    if isinstance(m, Mapping):
        for k, v in m.items():
            _check_metrics(v, where, f"{path}.{k}", depth + 1)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in _METRIC_RANGES:
                lo, hi = _METRIC_RANGES[k]
                if not lo <= v <= hi:
                    raise _fail(where, f"{path}.{k}={v!r} must be in [{lo:g}, {hi:g}]")
    elif isinstance(m, list):
        for i, v in enumerate(m):
            _check_metrics(v, where, f"{path}[{i}]", depth + 1)
    elif not (m is None or isinstance(m, (str, bool)) or _is_num(m)):
        raise _fail(where, f"{path}={m!r} must be a finite number, a string or null")


def _vector(v: Any, n: int, where: str, path: str, *, nonneg: bool, bound: float = 1e12) -> None:
    if not isinstance(v, list) or len(v) != n or not all(_is_num(x) and abs(x) <= bound for x in v):
        raise _fail(where, f"{path} must be a list of {n} finite numbers (|x| <= {bound:g})")
    if nonneg and any(x < 0 for x in v):
        raise _fail(where, f"{path} holds a negative coefficient; coefficients are >= 0")


def _check_fingerprint(fp: Any, where: str) -> None:
    from hwloop.devices.base import DeviceFingerprint

    if fp is None:
        return
    if not isinstance(fp, Mapping) or set(fp) - {"name", "backend", "identity", "info", "key"}:
        raise _fail(where, "fingerprint must be an object with name, backend, identity, info, key")
    if not all(isinstance(fp.get(k), str) and _IDENT.match(fp[k]) for k in ("name", "backend")):
        raise _fail(where, f"fingerprint name/backend {fp.get('name')!r}/{fp.get('backend')!r} must be short names")
    if not isinstance(fp.get("identity", {}), Mapping) or not isinstance(fp.get("info", {}), Mapping):
        raise _fail(where, "fingerprint identity and info must be objects")
    try:
        key = DeviceFingerprint.from_dict(fp).key
    except Exception as e:  # noqa: BLE001 - any defect of a foreign fingerprint is one line
        raise _fail(where, f"fingerprint is malformed ({type(e).__name__})") from None
    if "key" in fp and fp["key"] != key:
        raise _fail(where, f"fingerprint key {fp['key']!r} does not match its identity ({key})")


def _check_aggregator(agg: Any, where: str) -> None:
    from hwloop.predict.aggregate import AGG_FEATURES, AGG_METHODS

    if agg is None:
        return
    if not isinstance(agg, Mapping) or set(agg) != {"method", "features", "coef", "n_models", "raw_sum_ratio"}:
        raise _fail(where, "aggregator must have method, features, coef, n_models, raw_sum_ratio")
    if agg["method"] not in AGG_METHODS:
        raise _fail(where, f"aggregator.method={agg['method']!r} is unknown; allowed: {', '.join(AGG_METHODS)}")
    if agg["features"] != list(AGG_FEATURES):
        raise _fail(where, f"aggregator.features differ from this hwloop's {len(AGG_FEATURES)} features")
    _vector(agg["coef"], len(AGG_FEATURES), where, "aggregator.coef", nonneg=True, bound=1e9)
    if sum(agg["coef"]) <= 0:
        raise _fail(where, "aggregator.coef are all zero (every latency would be 0)")
    if not (isinstance(agg["n_models"], int) and not isinstance(agg["n_models"], bool)
            and 1 <= agg["n_models"] < _MAX_INT):
        raise _fail(where, f"aggregator.n_models={agg['n_models']!r} must be a positive integer")
    if not (_is_num(agg["raw_sum_ratio"]) and agg["raw_sum_ratio"] > 0):
        raise _fail(where, f"aggregator.raw_sum_ratio={agg['raw_sum_ratio']!r} must be a finite number > 0")


def _check_state(kind: str, state: Any, where: str) -> None:
    from hwloop.predict.features import RAW_COLUMNS, baseline_terms
    from hwloop.opkinds import OP_KINDS

    if not isinstance(state, Mapping):
        raise _fail(where, f"state must be an object, got {type(state).__name__}")
    allowed = {"xgboost": {"baseline_coef"}, "ridge_macs": {"coef_", "intercept_"},
               "random_forest": {"base_"}, "gradient_boosting": {"base_"}, "lookup": set(),
               "surrogate": {"scale_ms_per_mac_"}, "graph_cost": {"gpu_features", "groups", "hyper"}}.get(kind)
    if allowed is None:
        return  # a user predictor class (imported with --allow-import) checks its own state
    if set(state) - allowed:  # graph_cost's groups are checked (finite coefficients) by its own _set_state
        raise _fail(where, f"state keys {sorted(set(state) - allowed)} are unknown for {kind}; "
                           f"allowed: {sorted(allowed)}")
    if kind == "xgboost" and state.get("baseline_coef") is not None:
        bc = state["baseline_coef"]
        n = baseline_terms(np.ones((1, len(RAW_COLUMNS)))).shape[1]
        if not isinstance(bc, Mapping) or set(bc) != {"per_op", "global"} or not isinstance(bc["per_op"], Mapping):
            raise _fail(where, "state.baseline_coef must have per_op and global")
        _vector(bc["global"], n, where, "state.baseline_coef.global", nonneg=True)
        for op, c in bc["per_op"].items():
            if not (isinstance(op, str) and op.isdigit() and int(op) < len(OP_KINDS)):
                raise _fail(where, f"state.baseline_coef.per_op key {op!r} must be an op code 0..{len(OP_KINDS) - 1}")
            _vector(c, n, where, f"state.baseline_coef.per_op.{op}", nonneg=True)
    if kind == "ridge_macs":
        _vector(state.get("coef_"), 1 + 2 * len(OP_KINDS), where, "state.coef_", nonneg=False, bound=1e3)
        if not (_is_num(state.get("intercept_")) and abs(state["intercept_"]) <= 1e3):
            raise _fail(where, f"state.intercept_={state.get('intercept_')!r} must be a finite number in [-1e3, 1e3]")
    if kind in ("random_forest", "gradient_boosting") and not (_is_num(state.get("base_", 0.0))
                                                               and abs(state.get("base_", 0.0)) <= 100):
        raise _fail(where, f"state.base_={state.get('base_')!r} must be a finite log-latency in [-100, 100]")
    if kind == "surrogate" and "scale_ms_per_mac_" in state:
        v = state["scale_ms_per_mac_"]
        if not (_is_num(v) and 0 < v <= 1e6):
            raise _fail(where, f"state.scale_ms_per_mac_={v!r} must be a finite number in (0, 1e6]")


def validate_metadata(meta: Mapping[str, Any], where: str, *, builtin_kind: bool = True) -> None:
    """Check every field of a predictor's metadata (after its hash and schema checks)."""
    from hwloop.devices.base import EXEC_MODES
    from hwloop.predict.io import STATISTICS

    extra = set(meta) - _TOP_KEYS
    if extra:
        raise _fail(where, f"unknown field(s) {sorted(extra)}; allowed: {sorted(_TOP_KEYS)}")
    kind = meta.get("predictor")
    if not isinstance(kind, str):
        raise _fail(where, f"predictor={kind!r} must be a predictor kind")
    if builtin_kind:
        validate_params(kind, meta.get("params", {}), where)
    elif not isinstance(meta.get("params", {}), Mapping):
        raise _fail(where, "params must be an object")
    if meta.get("target", "log(latency_ms)") != "log(latency_ms)":
        raise _fail(where, f"target={meta.get('target')!r} must be 'log(latency_ms)'")
    if meta.get("target_statistic") not in (None, *STATISTICS):
        raise _fail(where, f"target_statistic={meta.get('target_statistic')!r} is unknown; allowed: "
                           f"{', '.join(STATISTICS)}")
    if meta.get("mode", "eager") not in EXEC_MODES:
        raise _fail(where, f"mode={meta.get('mode')!r} is unknown; allowed: {', '.join(EXEC_MODES)}")
    _check_fingerprint(meta.get("fingerprint"), where)
    h = meta.get("training_data_hash")
    if h is not None and not (isinstance(h, str) and _HEX.match(h)):
        raise _fail(where, f"training_data_hash={h!r} must be a hex digest")
    n = meta.get("n_train", 0)
    if not (isinstance(n, int) and not isinstance(n, bool) and 0 <= n < _MAX_INT):
        raise _fail(where, f"n_train={n!r} must be an integer >= 0")
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise _fail(where, "metrics must be an object")
    _check_metrics(metrics, where)
    _check_aggregator(meta.get("aggregator"), where)
    _check_probe(meta.get("probe"), where)
    _check_state(kind, meta.get("state", {}), where)
    files = meta.get("files", {})
    if not isinstance(files, Mapping) or set(files) - {"model", "arrays"}:
        raise _fail(where, "files must be an object with at most 'model' and 'arrays'")
    for role, info in files.items():
        if not (isinstance(info, Mapping) and set(info) == {"name", "sha256"} and isinstance(info["name"], str)
                and re.match(r"^[A-Za-z0-9_.-]{1,200}$", info["name"]) and not info["name"].startswith(".")
                and isinstance(info["sha256"], str) and re.match(r"^[0-9a-f]{64}$", info["sha256"])):
            raise _fail(where, f"files.{role} must be {{name: a plain file name, sha256: 64 hex digits}}")
    for k in ("hwloop_version", "created"):
        if k in meta and not isinstance(meta[k], str):
            raise _fail(where, f"{k}={meta[k]!r} must be a string")


def _check_probe(probe: Any, where: str) -> None:
    """A recorded probe: 1-64 valid layer descriptions and as many finite times > 0 (hwloop.predict.probe)."""
    if probe is None:
        return
    keys = {"layers", "ms", "fingerprint_key", "signature", "recorded"}
    if not isinstance(probe, Mapping) or not {"layers", "ms"} <= set(probe) or set(probe) - keys:
        raise _fail(where, f"probe must be an object with 'layers' and 'ms' (and optionally "
                           f"{', '.join(sorted(keys - {'layers', 'ms'}))})")
    layers, ms = probe["layers"], probe["ms"]
    if not (isinstance(layers, list) and 1 <= len(layers) <= 64 and isinstance(ms, list) and len(ms) == len(layers)):
        raise _fail(where, "probe.layers and probe.ms must be lists of the same length, 1 to 64 entries")
    from hwloop.predict.plain import table_from_dicts

    try:
        table_from_dicts(layers)
    except PredictorError as e:
        raise _fail(where, f"probe.layers: {e}") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6 for v in ms):
        raise _fail(where, "probe.ms must hold finite times in (0, 1e6) ms")
    sig = probe.get("signature", {})
    if not isinstance(sig, Mapping) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                               for v in sig.values()):
        raise _fail(where, "probe.signature must map reference op names to times > 0")
    for k in ("fingerprint_key", "recorded"):
        if probe.get(k) is not None and not isinstance(probe[k], str):
            raise _fail(where, f"probe.{k} must be a string")


def _arr(arrays: Mapping[str, np.ndarray], k: str, where: str, kinds: str, ndim: int) -> np.ndarray:
    a = arrays.get(k)
    if a is None:
        raise _fail(where, f"array {k!r} is missing")
    if a.dtype.kind not in kinds or a.ndim != ndim:
        raise _fail(where, f"array {k!r} has dtype {a.dtype} and {a.ndim} dims; expected {ndim}-d of kind {kinds}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise _fail(where, f"array {k!r} holds a non-finite value")
    return a


def validate_arrays(kind: str, arrays: Mapping[str, np.ndarray], where: str, n_features: int) -> None:
    """Check the safetensors arrays of tree ensembles and lookup tables (shapes, indices, finite values)."""
    from hwloop.opkinds import OP_KINDS

    if kind in ("random_forest", "gradient_boosting"):
        left, right = _arr(arrays, "left", where, "i", 1), _arr(arrays, "right", where, "i", 1)
        feat, thr = _arr(arrays, "feature", where, "i", 1), _arr(arrays, "threshold", where, "f", 1)
        val, roots = _arr(arrays, "value", where, "f", 1), _arr(arrays, "roots", where, "i", 1)
        depth = _arr(arrays, "max_depth", where, "i", 1)
        n = len(left)
        if not (len(right) == len(feat) == len(thr) == len(val) == n) or n == 0 or len(roots) == 0:
            raise _fail(where, "tree arrays left/right/feature/threshold/value must have one entry per node")
        if len(depth) != 1 or not 0 <= int(depth[0]) <= 1000:
            raise _fail(where, f"max_depth={depth.tolist()!r} must be one integer in [0, 1000]")
        if np.any((left < -1) | (left >= n)) or np.any((right < -1) | (right >= n)) \
                or np.any((left < 0) != (right < 0)):
            raise _fail(where, f"tree child indices must be -1 (leaf) or in [0, {n})")
        if np.any((roots < 0) | (roots >= n)) or np.any((feat < 0) | (feat >= n_features)):
            raise _fail(where, f"tree roots must be in [0, {n}) and features in [0, {n_features})")
        if np.any(np.abs(val) > 100):
            raise _fail(where, "tree leaf values must be log-latencies in [-100, 100]")
    elif kind == "lookup":
        line = _arr(arrays, "op_line", where, "f", 2)
        keys = _arr(arrays, "group_keys", where, "i", 2)
        group = _arr(arrays, "point_group", where, "i", 1)
        px, py = _arr(arrays, "point_x", where, "f", 1), _arr(arrays, "point_y", where, "f", 1)
        if line.shape != (len(OP_KINDS), 2) or np.any(np.abs(line) > 1e3):
            raise _fail(where, f"op_line must be {len(OP_KINDS)}x2 finite numbers in [-1e3, 1e3]")
        g = keys.shape[0]
        if keys.shape[1] != 9 or not (len(group) == len(px) == len(py)) or len(group) == 0:
            raise _fail(where, "lookup arrays have inconsistent shapes")
        if np.any((group < 0) | (group >= g)) or np.any(np.diff(group) < 0) \
                or np.any(np.bincount(group, minlength=g) == 0):
            raise _fail(where, f"point_group must be sorted group ids in [0, {g}), each with a point")
        if np.any(np.abs(py) > 100) or np.any(px < 0) or np.any(px > 1e3):
            raise _fail(where, "lookup points must be log-MACs in [0, 1e3] and log-latencies in [-100, 100]")
        if np.any((np.diff(px) < 0) & (np.diff(group) == 0)):
            raise _fail(where, "lookup points must be sorted by log-MACs within each group")
