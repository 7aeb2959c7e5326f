"""The predictor contract shared by the surrogate, learned predictors and baselines.

A predictor is scikit-learn style: ``__init__`` stores parameters, :meth:`~BasePredictor.fit`
returns ``self`` and sets attributes ending in ``_``, :meth:`~BasePredictor.predict` returns
milliseconds. Every predictor also answers whole-model questions
(:meth:`~BasePredictor.predict_workload`, :meth:`~BasePredictor.predict_model`): it predicts
every op and passes the per-op predictions through its aggregation model (fitted on whole
models the store measured, see :mod:`hwloop.predict.aggregate`), or sums them when none
is fitted. Predictors belong to one device fingerprint and execution mode; using one for
another device emits :class:`PredictorWarning`.

Example:
    >>> from hwloop.predict import SurrogatePredictor
    >>> from hwloop.workload import LayerSpec
    >>> p = SurrogatePredictor()
    >>> float(p.predict([LayerSpec("linear", (1, 64), out_channels=32)])[0]) > 0
    True
"""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hwloop.errors import NotFittedError, PredictorError
from hwloop.predict.features import FEATURE_SCHEMA, features_from_table

__all__ = ["BasePredictor", "LatencyPredictor", "PredictorWarning", "checked_latencies", "data_hash"]


class PredictorWarning(UserWarning):
    """A predictor is used for a device or execution mode it was not fitted on."""


class LatencyPredictor:
    """Protocol (documentation only) of what search and other tools call.

    * ``predict(specs: Sequence[LayerSpec]) -> np.ndarray`` (ms per layer, fast in batch)
    * ``predict_workload(layers) -> float`` (ms, calibrated)
    * ``predict_model(model, example) -> float`` (ms, calibrated)
    * ``fingerprint`` (``DeviceFingerprint`` or None) and ``mode`` (execution mode)
    """


def data_hash(table: np.ndarray, y: np.ndarray) -> str:
    """A short SHA-256 of training inputs and targets (identifies the training data)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(table, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _latencies(x: Any, y: Any) -> np.ndarray:
    if y is None:
        if hasattr(x, "columns") and "latency_ms" in x.columns:
            y = x["latency_ms"].to_numpy()
        else:
            raise PredictorError("fit needs latencies: pass y, or a DataFrame with a 'latency_ms' column")
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))][0]
        raise PredictorError(f"latency {bad!r} is invalid; latencies must be finite and > 0 ms")
    return arr


def checked_latencies(ms: Any, who: str, *, allow_zero: bool = False) -> np.ndarray:
    """``ms`` as float64, or a PredictorError if any latency is NaN, infinite or negative (or 0).

    A predictor only computes such values from a file out of its valid range, so hwloop never
    prints or optimises them.
    """
    out = np.asarray(ms, dtype=np.float64)
    ok = np.isfinite(out) & ((out >= 0) if allow_zero else (out > 0))
    if not ok.all():
        bad = out[~ok]
        raise PredictorError(f"{who} predicted {float(bad[0])!r} ms for {bad.size} of {out.size} layer(s); latencies "
                             "must be finite and > 0 (the predictor file is out of range: refit it)")
    return out


class BasePredictor:
    """Common machinery; subclasses implement ``_fit_table``, ``_predict_table`` and state (de)serialisation.

    Args:
        fingerprint: the ``DeviceFingerprint`` the training data was measured on (or None).
        mode: execution mode (``eager``, ``cuda_graph``, ``tvm``, ``asic``).
    """

    kind: ClassVar[str] = "base"
    #: file extension of the native model file, or "" for JSON-only state
    model_ext: ClassVar[str] = ""

    def __init__(self, fingerprint: Any = None, mode: str = "eager") -> None:
        self.fingerprint = fingerprint
        self.mode = mode

    # ------------------------------------------------------------------ params
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (scikit-learn style), without ``fingerprint``/``mode``."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "fingerprint",
                                                                                             "mode")]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def fitted(self) -> bool:
        return hasattr(self, "n_train_")

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(specs, latencies_ms) or load a file")

    # ------------------------------------------------------------------ fit / predict
    def fit(self, x: Any, y: Any = None) -> BasePredictor:
        """Fit on layer specs (or a store DataFrame with ``spec_json`` + ``latency_ms``) and latencies (ms).

        Returns:
            self
        """
        table = self._table(x)
        ys = _latencies(x, y)
        if len(ys) != table.shape[0]:
            raise PredictorError(f"got {table.shape[0]} layers but {len(ys)} latencies; they must match")
        if table.shape[0] == 0:
            raise PredictorError("fit needs at least one measured layer")
        self.feature_schema_ = FEATURE_SCHEMA
        self._fit_table(table, ys)
        self.n_train_ = int(table.shape[0])
        self.training_data_hash_ = data_hash(table, ys)
        if not hasattr(self, "metrics_"):
            self.metrics_: dict[str, Any] = {}
        return self

    def _table(self, x: Any) -> np.ndarray:
        from hwloop.predict.plain import table_of

        return table_of(x)

    def _features(self, table: np.ndarray) -> np.ndarray:
        """Model features of a raw table, in the feature schema this predictor was fitted with."""
        return features_from_table(table, getattr(self, "feature_schema_", FEATURE_SCHEMA))

    def predict(self, x: Any) -> np.ndarray:
        """Latency (ms) of each layer: layer dicts (``LayerSpec`` form, JSON-ready; no torch needed), a
        sequence of ``LayerSpec``, a ``Workload`` (object or dict), a store DataFrame, a raw table from
        :func:`~hwloop.predict.features.spec_table`, or a columnar batch (a mapping of arrays, a DataFrame or a
        structured array, see :func:`~hwloop.predict.columnar.table_from_columns`); see
        :func:`~hwloop.predict.plain.table_of`."""
        self._check_fitted()
        table = self._table(x)
        if table.shape[0] == 0:
            return np.zeros(0)
        ms = self._predict_table(table)
        scale = getattr(self, "speed_scale_", 1.0)  # set by the probe (hwloop.predict.probe) on another machine
        return checked_latencies(ms * scale if scale != 1.0 else ms, type(self).__name__)

    def score(self, x: Any, y: Any = None) -> float:
        """Fraction of layers predicted within ±10% (higher is better, like scikit-learn's ``score``)."""
        from hwloop.predict.evaluate import regression_metrics

        return float(regression_metrics(_latencies(x, y), self.predict(x))["acc10"])

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _predict_table(self, table: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ whole models
    def fit_aggregator(self, workloads: Sequence[Any], latencies_ms: Any, method: str = "pooled"
                       ) -> BasePredictor:
        """Fit the whole-model calibration on measured models (see :class:`~hwloop.predict.aggregate.Aggregator`).

        Args:
            workloads: one ``Workload`` (or list of ``LayerSpec``) per measured model.
            latencies_ms: the measured end-to-end latency of each.
            method: ``"pooled"`` (default: per-kind scales pulled toward one shared scale, + per-op overhead +
                constant, non-negative), ``"linear"`` (free per-kind scales) or ``"scale"`` (one constant).
        """
        from hwloop.predict.aggregate import Aggregator

        self._check_fitted()
        ys = _latencies(None, latencies_ms)
        self.aggregator_ = Aggregator(method=method).fit([self.layer_predictions(w) for w in workloads], ys)
        return self

    def layer_predictions(self, layers: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(op_codes, per_op_ms)`` for a workload or list of specs (ops of kind ``other`` included).

        Codes index :data:`~hwloop.workload.OP_KINDS`; depthwise convs get
        :data:`~hwloop.predict.aggregate.DEPTHWISE_CODE`.
        """
        from hwloop.predict.aggregate import DEPTHWISE_CODE
        from hwloop.predict.features import RAW_COLUMNS

        from hwloop.predict.plain import table_of

        table = table_of(layers)
        if table.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        ops = table[:, 0].astype(np.int64)
        g, cin = table[:, RAW_COLUMNS.index("groups")], table[:, RAW_COLUMNS.index("in_channels")]
        ops[(ops == 0) & (g > 1) & (g == cin)] = DEPTHWISE_CODE
        return ops, self.predict(table)

    def predict_workload(self, layers: Any, *, calibrated: bool = True) -> float:
        """Whole-model latency (ms) of a workload: per-op predictions through the aggregation model.

        Args:
            layers: a ``Workload`` or its list of ``LayerSpec``.
            calibrated: False returns the plain sum of per-op predictions.
        """
        ops, ms = self.layer_predictions(layers)
        agg = getattr(self, "aggregator_", None)
        if not calibrated or agg is None:
            return float(ms.sum())
        scale = getattr(self, "speed_scale_", 1.0)  # the whole calibrated model scales, not only its ops
        out = agg.predict_one(ops, ms / scale) * scale
        return float(checked_latencies(np.array([out]), f"{type(self).__name__} aggregator",
                                       allow_zero=len(ops) == 0)[0])

    def predict_model(self, model: Any, example: Any, *, calibrated: bool = True, device: Any = None) -> float:
        """Whole-model latency (ms) of ``model`` run on ``example`` (traced with ``extract_workload``).

        Args:
            model: a ``torch.nn.Module``.
            example: its example input (batch size and dtype matter).
            calibrated: False returns the plain sum of per-op predictions.
            device: optional ``Device`` or ``DeviceFingerprint`` it is meant for (mismatch warns).
        """
        if device is not None:
            self.check_device(device)
        return self.predict_workload(self.trace(model, example), calibrated=calibrated)

    def trace(self, model: Any, example: Any) -> Any:
        """The workload of ``model`` on ``example``; cached per model structure and input shape."""
        import warnings as _w

        from hwloop.workload import WorkloadWarning, extract_workload

        key = _structure_key(model, example)
        cache: dict[str, Any] = self.__dict__.setdefault("_trace_cache", {})
        if key not in cache:
            with _w.catch_warnings():
                _w.simplefilter("ignore", WorkloadWarning)
                cache[key] = extract_workload(model, example)
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
        return cache[key]

    # ------------------------------------------------------------------ device checks
    def check_device(self, device: Any, mode: str | None = None) -> bool:
        """Warn (:class:`PredictorWarning`) if ``device`` (a Device, fingerprint or device name) or ``mode`` differ.

        Returns:
            True when the device and mode match.
        """
        fp = device.fingerprint() if hasattr(device, "fingerprint") and callable(device.fingerprint) else device
        ok = True
        if isinstance(fp, str):  # a device name (no probe): compare names
            if self.fingerprint is not None and fp != self.fingerprint.name:
                warnings.warn(f"predictor was fitted on device {self.fingerprint.name!r} ({self.fingerprint.key}); "
                              f"using it for {fp!r}", PredictorWarning, stacklevel=2)
                ok = False
        elif self.fingerprint is not None and fp is not None and getattr(fp, "key", None) != self.fingerprint.key:
            warnings.warn(f"predictor was fitted on device {self.fingerprint.name!r} ({self.fingerprint.key}); "
                          f"using it for {getattr(fp, 'name', fp)!r} ({getattr(fp, 'key', '?')})",
                          PredictorWarning, stacklevel=2)
            ok = False
        elif self.fingerprint is not None and hasattr(fp, "info"):  # same key: the clock and speed signature tell
            from hwloop.devices.signature import machine_differences

            diff = machine_differences(self.fingerprint, fp)
            if diff:
                warnings.warn(f"predictor was fitted on device {self.fingerprint.name!r} ({self.fingerprint.key}) and "
                              f"this machine has the same key but differs: {'; '.join(diff)} (probe it: hwloop "
                              "predict --probe scale)", PredictorWarning, stacklevel=2)
                ok = False
        if mode is not None and mode != self.mode:
            warnings.warn(f"predictor was fitted for mode {self.mode!r}; using it for {mode!r}", PredictorWarning,
                          stacklevel=2)
            ok = False
        return ok

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        """(JSON state, arrays for safetensors, native model bytes)."""
        return {}, {}, None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        return None

    def save(self, path: Any) -> Any:
        """Write ``path`` (JSON metadata) plus the model file beside it; returns the metadata path."""
        from hwloop.predict.io import save_predictor

        return save_predictor(self, path)

    @classmethod
    def load(cls, path: Any) -> BasePredictor:
        """Load a predictor written by :meth:`save` (checks schema version and hashes)."""
        from hwloop.predict.io import load_predictor

        p = load_predictor(path)
        if not isinstance(p, cls):
            raise PredictorError(f"{path} holds a {type(p).__name__}, not a {cls.__name__}")
        return p


def _structure_key(model: Any, example: Any) -> str:
    parts = [type(model).__qualname__, str(tuple(example.shape)), str(example.dtype)]
    for name, mod in model.named_modules():
        parts.append(f"{name}:{type(mod).__name__}")
        for pn, p in mod.named_parameters(recurse=False):
            parts.append(f"{pn}{tuple(p.shape)}")
        for attr in ("stride", "padding", "dilation", "groups", "kernel_size"):
            if hasattr(mod, attr):
                parts.append(f"{attr}={getattr(mod, attr)}")
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
