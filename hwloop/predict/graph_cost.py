"""Costs learned from whole-model timings, calibrated per (execution mode, batch, dtype).

Where per-layer time cannot be observed as the model is deployed (a CUDA graph replays the whole
forward pass; TVM or TensorRT fuse ops), :class:`GraphCostPredictor` fits an **additive per-op cost
model end to end**: every op's cost is a linear function of its GPU cost terms
(:mod:`hwloop.predict.gpu_features`: tensor-core alignment, SM waves, channel staircases, launches,
bytes), and the coefficients are fitted so that the per-op costs **sum to the measured whole-model
latency** (ridge least squares on relative error). Coefficients are signed: a term may lower the cost
(e.g. graph replay removes a per-op launch cost that isolated timings include).

One calibration per **(mode, batch, dtype)** group is fitted and saved in the predictor file. A group
it has not seen falls back, with a :class:`~hwloop.predict.base.PredictorWarning`, to the calibration
of the same mode and dtype at the nearest batch size on a log scale (then the nearest dtype of the
same width); ``benchmarks/bench_h100.py`` measures how well that fallback does (docs/predictors.md).

``features="gpu_nonneg"`` fits the same terms with non-negative coefficients and no constant (no sum can go
negative, and the latency is carried by per-op terms; the shipped H100 predictor). ``features="physical"`` fits
three non-negative physical terms per op instead (kernels launched, SM waves ×
main-loop steps, bytes; :func:`~hwloop.predict.gpu_features.physical_op_features`): one non-negative least-squares
fit shared by every group of a mode (the per-kernel and per-byte costs shared, the per-wave-step cost per dtype),
then one scale per group (the median of measured / fitted over the group's models). Both non-negative fits
rank architectures the calibration never saw better than the signed per-group fit (docs/predictors.md,
leave-one-architecture-out Spearman: physical 0.80, gpu_nonneg 0.78, signed 0.52), but neither gets the level of
an unseen architecture right, and ``physical`` loses accuracy within a known one.

Isolated-layer data can join the fit (``layer_weight`` > 0): each layer whose latency is at least
``gpu_bound_ms`` (so the GPU, not the host, set its eager time) becomes a one-op row of the group of
its batch and dtype.

Example:
    >>> import numpy as np
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.predict.graph_cost import GraphCostPredictor
    >>> nets = [[LayerSpec("conv2d", (1, c, 8, 8), out_channels=c, kernel=3, padding=1)] * 3 for c in (8, 16, 32, 64)]
    >>> p = GraphCostPredictor().fit_models(nets, [0.02, 0.021, 0.023, 0.03])
    >>> round(p.predict_workload(nets[0]), 3) > 0
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict.base import BasePredictor, PredictorWarning, data_hash
from hwloop.predict.features import FEATURE_SCHEMA, RAW_COLUMNS, spec_table, specs_from_any
from hwloop.predict.gpu_features import (GPU_FEATURE_NAMES, PHYSICAL_FEATURE_NAMES, gpu_op_features,
                                          physical_op_features)

__all__ = ["FEATURE_SETS", "MIN_MS", "GraphCostPredictor", "group_key", "parse_group_key"]

_R = {c: i for i, c in enumerate(RAW_COLUMNS)}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: the smallest whole-model latency returned (ms); a lower calibrated sum warns
MIN_MS = 1e-3
#: per-op cost terms of each ``features`` choice
FEATURE_SETS: dict[str, tuple[str, ...]] = {"gpu": GPU_FEATURE_NAMES, "gpu_nonneg": GPU_FEATURE_NAMES,
                                             "physical": PHYSICAL_FEATURE_NAMES}
#: which groups share each term's cost in the non-negative fits: "mode" (all groups of a mode), "dtype", "batch",
#: or "group" (each group its own)
TIES: dict[str, dict[str, str]] = {"gpu_nonneg": {n: "group" for n in GPU_FEATURE_NAMES},
                                   "physical": {"kernels": "mode", "wave_ksteps": "dtype", "mbytes": "mode"}}


def group_key(mode: str, batch: int, dtype: str) -> str:
    """The calibration group of a model: ``"cuda_graph|b256|float16"``."""
    return f"{mode}|b{int(batch)}|{dtype}"


def parse_group_key(key: str) -> tuple[str, int, str]:
    """Inverse of :func:`group_key`.

    Raises:
        PredictorError: ``key`` is not ``mode|bN|dtype``.
    """
    parts = str(key).split("|")
    if len(parts) != 3 or not parts[1].startswith("b") or not parts[1][1:].isdigit() or parts[2] not in _DTYPE_BYTES:
        raise PredictorError(f"calibration group {key!r} is not 'mode|bBATCH|dtype' (dtype one of "
                             f"{', '.join(_DTYPE_BYTES)})")
    return parts[0], int(parts[1][1:]), parts[2]


def _workload_group(specs: Sequence[Any]) -> tuple[int, str]:
    if not specs:
        raise PredictorError("a workload without ops has no latency to predict")
    return int(specs[0].in_shape[0]), str(specs[0].dtype)


class GraphCostPredictor(BasePredictor):
    """Additive per-op GPU cost model fitted on whole-model latencies, one calibration per group.

    Args:
        ridge: ridge penalty on the column-scaled relative-error problem (chosen on a validation split,
            see docs/predictors.md).
        sms: streaming multiprocessors of the GPU for the wave features (0: from the fingerprint's
            ``sm_count``, else 132, an H100 SXM).
        layer_weight: weight of isolated-layer rows relative to whole-model rows (0: models only).
        gpu_bound_ms: isolated layers at least this slow join the fit when ``layer_weight`` > 0.
        features: ``"gpu"`` (the GPU cost terms, signed ridge per group), ``"gpu_nonneg"`` (the same terms,
            non-negative least squares per group, no constant) or ``"physical"`` (three non-negative terms, one fit
            shared by the groups of a mode plus a scale per group). ``ridge`` and ``layer_weight`` apply to
            ``"gpu"`` only.
    """

    kind = "graph_cost"

    def __init__(self, ridge: float = 1e-3, sms: int = 0, layer_weight: float = 0.0, gpu_bound_ms: float = 0.06,
                 fingerprint: Any = None, mode: str = "cuda_graph", features: str = "gpu") -> None:
        super().__init__(fingerprint=fingerprint, mode=mode)
        for n, v in (("ridge", ridge), ("layer_weight", layer_weight), ("gpu_bound_ms", gpu_bound_ms)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise PredictorError(f"{n}={v!r} must be a finite number >= 0")
        if not isinstance(sms, int) or isinstance(sms, bool) or sms < 0:
            raise PredictorError(f"sms={sms!r} must be an integer >= 0 (0: from the fingerprint)")
        if features not in FEATURE_SETS:
            raise PredictorError(f"features={features!r} is unknown; allowed: {', '.join(FEATURE_SETS)}")
        if features != "gpu" and layer_weight > 0:
            raise PredictorError(f"layer_weight={layer_weight!r} needs features='gpu' (the physical fit uses whole "
                                 "models only); use layer_weight=0")
        self.features = features
        self.ridge = float(ridge)
        self.sms = sms
        self.layer_weight = float(layer_weight)
        self.gpu_bound_ms = float(gpu_bound_ms)

    _HYPER = ("ridge", "sms", "layer_weight", "gpu_bound_ms", "features")

    def get_params(self) -> dict[str, Any]:
        """Empty: the hyper-parameters travel in the file's ``state`` (checked by :meth:`_set_state`), so the
        file-level validation of built-in kinds' ``params`` needs no entry for them."""
        return {}

    def __repr__(self) -> str:
        return f"GraphCostPredictor({', '.join(f'{k}={getattr(self, k)!r}' for k in self._HYPER)})"

    # ------------------------------------------------------------------ features
    @property
    def sms_(self) -> int:
        if self.sms:
            return self.sms
        from hwloop.predict.gpu_features import sms_of

        return sms_of(self.fingerprint)

    def op_features(self, table: np.ndarray) -> np.ndarray:
        """Per-op cost terms (:data:`FEATURE_SETS` ``[self.features]``) of a raw table."""
        if self.features == "physical":
            return physical_op_features(table, self.sms_)
        return gpu_op_features(table, self.sms_)

    def model_features(self, layers: Any) -> np.ndarray:
        """A workload's summed cost terms plus the constant 1 (one row of the fitting problem)."""
        t = spec_table(specs_from_any(layers))
        return np.r_[self.op_features(t).sum(axis=0), 1.0]

    # ------------------------------------------------------------------ fitting
    def fit_models(self, workloads: Sequence[Any], latencies_ms: Any, *, modes: Sequence[str] | None = None,
                   layers: Sequence[Any] = (), layer_ms: Any = None) -> GraphCostPredictor:
        """Fit one calibration per (mode, batch, dtype) group from whole-model latencies.

        Args:
            workloads: one ``Workload`` (or list of ``LayerSpec``) per measured model.
            latencies_ms: each model's measured latency.
            modes: each model's execution mode (default: this predictor's ``mode`` for all).
            layers / layer_ms: isolated layer specs and latencies (used when ``layer_weight`` > 0).

        Returns:
            self
        """
        y = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
        if len(workloads) != len(y) or len(y) == 0:
            raise PredictorError(f"fit_models needs one latency per model; got {len(workloads)} models and {len(y)} "
                                 "latencies (at least 1)")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            bad = float(y[~(np.isfinite(y) & (y > 0))][0])
            raise PredictorError(f"latency {bad!r} is invalid; must be finite and > 0 ms")
        ms = list(modes) if modes is not None else [self.mode] * len(y)
        if len(ms) != len(y):
            raise PredictorError(f"{len(ms)} modes for {len(y)} models; they must match")
        rows: dict[str, list[tuple[np.ndarray, float, float]]] = {}
        for wl, lat, mode in zip(workloads, y, ms):
            specs = specs_from_any(wl)
            b, dt = _workload_group(specs)
            rows.setdefault(group_key(mode, b, dt), []).append((self.model_features(specs), float(lat), 1.0))
        n_layers = 0
        if self.layer_weight > 0 and len(layers):
            lt = spec_table(specs_from_any(layers))
            ly = np.asarray(layer_ms, dtype=np.float64).reshape(-1)
            if len(ly) != lt.shape[0]:
                raise PredictorError(f"{lt.shape[0]} layers but {len(ly)} layer latencies; they must match")
            feats = self.op_features(lt)
            for key, group_rows in rows.items():
                _, _, dt = parse_group_key(key)
                sel = (ly >= self.gpu_bound_ms) & (lt[:, _R["dtype_bytes"]] == _DTYPE_BYTES[dt])
                for f, lat in zip(feats[sel], ly[sel]):
                    group_rows.append((np.r_[f, 0.0], float(lat), self.layer_weight))
                n_layers += int(sel.sum())
        if self.features != "gpu":
            self.groups_ = self._solve_nonneg(rows)
        else:
            self.groups_ = {key: self._solve(r) for key, r in sorted(rows.items())}
        xs = np.stack([x for r in rows.values() for x, _, _ in r])
        ys = np.array([v for r in rows.values() for _, v, _ in r])
        self.feature_schema_ = FEATURE_SCHEMA
        self.n_train_ = len(y) + n_layers
        self.training_data_hash_ = data_hash(xs, ys)
        self.metrics_ = getattr(self, "metrics_", {})
        return self

    def _solve(self, rows: list[tuple[np.ndarray, float, float]]) -> dict[str, Any]:
        x = np.stack([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        w = np.sqrt(np.array([r[2] for r in rows]))
        a = x / y[:, None] * w[:, None]
        col = np.maximum(np.abs(a).max(axis=0), 1e-12)
        a = a / col
        coef = np.linalg.solve(a.T @ a + self.ridge * np.eye(a.shape[1]), a.T @ w) / col
        pred = x @ coef
        n_models = int(np.sum(x[:, -1] > 0))
        err = np.abs(pred / y - 1)[x[:, -1] > 0]
        return {"coef": [float(c) for c in coef], "n_models": n_models, "n_layers": len(rows) - n_models,
                "train_acc10": float(np.mean(err <= 0.1)) if n_models else None}

    def _solve_nonneg(self, rows: dict[str, list[tuple[np.ndarray, float, float]]]) -> dict[str, Any]:
        """Non-negative least squares on relative error over all groups of a mode at once, without a constant, each
        term's cost shared by the groups :data:`TIES` names for this feature set (``physical``: per-kernel and
        per-byte costs by the whole mode, the per-wave-step cost per dtype; ``gpu_nonneg``: each group its own),
        then times one scale per group (the median of measured / fitted over its models)."""
        from scipy.optimize import nnls

        out: dict[str, Any] = {}
        for mode in sorted({parse_group_key(k)[0] for k in rows}):
            keys = sorted(k for k in rows if parse_group_key(k)[0] == mode)
            scope = {"mode": lambda k: 0, "dtype": lambda k: parse_group_key(k)[2],
                     "batch": lambda k: parse_group_key(k)[1], "group": lambda k: k}
            cols: list[tuple[int, Any]] = []  # (term, scope value) of each design column
            names, ties = FEATURE_SETS[self.features], TIES[self.features]
            for t, name in enumerate(names):
                how = scope[ties[name]]
                cols += [(t, v) for v in dict.fromkeys(how(k) for k in keys)]
            x = {k: np.stack([r[0] for r in rows[k]]) for k in keys}
            y = {k: np.array([r[1] for r in rows[k]]) for k in keys}
            design = {k: np.column_stack([x[k][:, t] * (scope[ties[names[t]]](k) == v) for t, v in cols])
                      for k in keys}
            a = np.vstack([design[k] / y[k][:, None] for k in keys])
            col = np.maximum(np.abs(a).max(axis=0), 1e-12)
            sol = nnls(a / col, np.ones(a.shape[0]))[0] / col
            for k in keys:
                fitted = design[k] @ sol
                scale = float(np.median(y[k] / fitted)) if np.all(fitted > 0) else 1.0
                coef = np.zeros(len(names) + 1)
                for (t, v), c in zip(cols, sol):
                    if scope[ties[names[t]]](k) == v:
                        coef[t] = c * scale
                err = np.abs(x[k] @ coef / y[k] - 1)
                out[k] = {"coef": [float(c) for c in coef], "n_models": len(y[k]), "n_layers": 0, "scale": scale,
                          "train_acc10": float(np.mean(err <= 0.1))}
        return out

    def fit(self, x: Any, y: Any = None) -> GraphCostPredictor:
        """Fit on isolated layers (``LayerSpec`` list, ``Workload`` or store DataFrame): each layer is a
        one-op model of its own (batch, dtype) group. Whole models: :meth:`fit_models`."""
        from hwloop.predict.base import _latencies

        specs = specs_from_any(x)
        return self.fit_models([[s] for s in specs], _latencies(x, y))

    # ------------------------------------------------------------------ prediction
    def calibration_for(self, batch: int, dtype: str, mode: str | None = None) -> tuple[str, bool]:
        """The calibration group used for (mode, batch, dtype) and whether it is a fallback.

        Raises:
            PredictorError: no calibration of that mode exists, or the predictor is not fitted.
        """
        self._check_fitted()
        mode = mode or self.mode
        want = group_key(mode, batch, dtype)
        if want in self.groups_:
            return want, False
        same = [parse_group_key(k) for k in self.groups_ if parse_group_key(k)[0] == mode]
        if not same:
            have = sorted({parse_group_key(k)[0] for k in self.groups_})
            raise PredictorError(f"no calibration for mode {mode!r}; this predictor has {', '.join(have)}")
        width = _DTYPE_BYTES.get(dtype, 4)
        best = min(same, key=lambda g: (g[2] != dtype, _DTYPE_BYTES[g[2]] != width,
                                        abs(math.log2(g[1]) - math.log2(max(batch, 1))), g[1]))
        return group_key(*best), True

    def _coef(self, batch: int, dtype: str, mode: str | None = None) -> np.ndarray:
        key, fallback = self.calibration_for(batch, dtype, mode)
        if fallback:
            warnings.warn(f"no calibration for {group_key(mode or self.mode, batch, dtype)}; using {key} "
                          "(nearest batch on a log scale, same mode; accuracy of this fallback: docs/predictors.md)",
                          PredictorWarning, stacklevel=3)
        return np.asarray(self.groups_[key]["coef"], dtype=np.float64)

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        """Each op's additive cost (ms) under the calibration of its own (batch, dtype); signed."""
        out = np.zeros(table.shape[0])
        feats = self.op_features(table)
        b = table[:, _R["batch"]].astype(np.int64)
        nb = table[:, _R["dtype_bytes"]].astype(np.int64)
        bf = table[:, _R["is_bf16"]] > 0
        for key in {(int(x), int(y), bool(z)) for x, y, z in zip(b, nb, bf)}:
            rows = (b == key[0]) & (nb == key[1]) & (bf == key[2])
            dt = "bfloat16" if key[2] else ("float16" if key[1] == 2 else "float32")
            out[rows] = feats[rows] @ self._coef(key[0], dt)[:-1]
        return out

    def predict_workload(self, layers: Any, *, calibrated: bool = True, batch: int | None = None,
                         dtype: str | None = None, mode: str | None = None) -> float:
        """Whole-model latency (ms): the sum of per-op costs plus the group's constant.

        Args:
            layers: a ``Workload`` or its ``LayerSpec`` list.
            calibrated: kept for the contract; this model is calibrated by construction.
            batch / dtype: override the group (default: the workload's first op's batch and dtype).
            mode: execution mode (default: the predictor's).
        """
        specs = specs_from_any(layers)
        b, dt = _workload_group(specs)
        coef = self._coef(batch or b, dtype or dt, mode)
        ms = float(self.model_features(specs) @ coef)
        if not ms > MIN_MS:  # signed terms extrapolated far outside the calibration: never a negative latency
            warnings.warn(f"the calibrated sum is {ms:.4g} ms for this model (far outside what "
                          f"{group_key(mode or self.mode, batch or b, dtype or dt)} was fitted on); "
                          f"returning {MIN_MS} ms", PredictorWarning, stacklevel=2)
            return MIN_MS
        return ms

    def predict_model(self, model: Any, example: Any, *, calibrated: bool = True, device: Any = None,
                      dtype: str | None = None, mode: str | None = None) -> float:
        """Whole-model latency (ms) of ``model`` on ``example``; ``dtype`` (e.g. ``"float16"``) overrides the
        dtype traced from the example (the model is then costed as if cast to it)."""
        if device is not None:
            self.check_device(device)
        wl = self.trace(model, example)
        if dtype is not None:
            if dtype not in _DTYPE_BYTES:
                raise PredictorError(f"dtype {dtype!r} is unknown; allowed: {', '.join(_DTYPE_BYTES)}")
            wl = [s.replace(dtype=dtype) for s in wl.layers]
        return self.predict_workload(wl, mode=mode)

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        state = {"gpu_features": list(FEATURE_SETS[self.features]), "groups": self.groups_,
                 "hyper": {"ridge": self.ridge, "sms": self.sms_, "layer_weight": self.layer_weight,
                           "gpu_bound_ms": self.gpu_bound_ms, "features": self.features}}
        return state, {}, None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        hyper = state.get("hyper")
        if isinstance(hyper, Mapping) and "features" not in hyper:  # files written before `features` existed
            hyper = {**hyper, "features": "gpu"}
        if not isinstance(hyper, Mapping) or set(hyper) != set(self._HYPER):
            raise PredictorError(f"predictor file's state.hyper must hold exactly {', '.join(self._HYPER)}")
        names = FEATURE_SETS.get(hyper["features"]) if isinstance(hyper["features"], str) else None
        if names is None:
            raise PredictorError(f"predictor file's state.hyper.features={hyper['features']!r} is unknown; allowed: "
                                 f"{', '.join(FEATURE_SETS)}")
        if list(state.get("gpu_features", [])) != list(names):
            raise PredictorError(f"predictor file's GPU features differ from this hwloop's ({len(names)} "
                                 f"{hyper['features']!r} terms named in hwloop/predict/gpu_features.py); refit it")
        groups = state.get("groups")
        if not isinstance(groups, Mapping) or not groups:
            raise PredictorError("predictor file has no calibration groups (state.groups)")
        clean: dict[str, Any] = {}
        for key, g in groups.items():
            parse_group_key(key)
            coef = g.get("coef") if isinstance(g, Mapping) else None
            if (not isinstance(coef, list) or len(coef) != len(names) + 1
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                               for c in coef)):
                raise PredictorError(f"calibration group {key!r} needs {len(names) + 1} finite "
                                     "coefficients")
            if hyper["features"] != "gpu" and min(coef) < 0:   # the non-negative fits: no sum may go negative
                raise PredictorError(f"calibration group {key!r} of a {hyper['features']!r} predictor has a negative "
                                     "coefficient; allowed: coefficients >= 0")
            clean[str(key)] = {**dict(g), "coef": [float(c) for c in coef]}
        try:
            fresh = GraphCostPredictor(**{k: hyper[k] for k in self._HYPER})
        except PredictorError as e:
            raise PredictorError(f"predictor file's state.hyper: {e}") from None
        if fresh.sms < 1:
            raise PredictorError(f"predictor file's state.hyper.sms={fresh.sms!r} must be an integer >= 1")
        for k in self._HYPER:
            setattr(self, k, getattr(fresh, k))
        self.groups_ = clean

