"""Whole-model calibration: from per-op predictions to a whole-model latency.

Summing isolated layer timings is wrong whenever the runtime fuses, overlaps or adds
per-op overhead (GPUs especially). :class:`Aggregator` is fitted on whole models the
store measured. Its ``linear`` model is

    latency_ms = Σ_k a_k · Σ pred(ops of kind k) + b · n_ops + c

over the kinds conv2d, depthwise conv2d, linear, matmul, batchnorm, activation, pooling,
add and other, with all coefficients non-negative (a fusion discount is ``a_k < 1`` — e.g.
batchnorm folded into the conv on an accelerator gives ``a_batchnorm ≈ 0`` — per-op launch
overhead is ``b``, fixed framework cost is ``c``), fitted by non-negative least squares on
*relative* error so small and large models count alike. ``scale`` fits one constant.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.aggregate import Aggregator
    >>> ops = np.array([0, 4, 0]); ms = np.array([1.0, 0.1, 2.0])
    >>> agg = Aggregator("scale").fit([(ops, ms)] * 3, np.array([6.2, 6.2, 6.2]))
    >>> round(agg.predict_one(ops, ms), 2)
    6.2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.opkinds import OP_KINDS

__all__ = ["AGG_METHODS", "Aggregator", "agg_features"]

AGG_METHODS = ("linear", "scale", "pooled")
#: op code used for depthwise convolutions (one past :data:`~hwloop.workload.OP_KINDS`)
DEPTHWISE_CODE = len(OP_KINDS)
_SUM_KINDS = (*OP_KINDS, "conv2d_depthwise")
AGG_FEATURES = (*(f"sum_{k}_ms" for k in _SUM_KINDS), "n_ops", "const")
_N = len(_SUM_KINDS)


def agg_features(ops: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """The row of :data:`AGG_FEATURES` for one model: per-kind sums of per-op predictions, op count, 1.

    ``ops`` are :data:`~hwloop.workload.OP_KINDS` indices, with :data:`DEPTHWISE_CODE` for depthwise convs.
    """
    o = np.asarray(ops, dtype=np.int64)
    sums = np.bincount(o, weights=np.asarray(ms, dtype=np.float64), minlength=_N)[:_N] if len(o) else np.zeros(_N)
    return np.concatenate([sums, [float(len(o)), 1.0]])


class Aggregator:
    """Per-device whole-model calibration (see the module docstring).

    Args:
        method: ``"linear"`` or ``"scale"``.
    """

    def __init__(self, method: str = "linear", strength: float = 1.0) -> None:
        if method not in AGG_METHODS:
            raise PredictorError(f"aggregation method {method!r} is unknown; allowed: {', '.join(AGG_METHODS)}")
        self.method = method
        self.strength = float(strength)

    def fit(self, per_model: Sequence[tuple[np.ndarray, np.ndarray]], latencies_ms: np.ndarray) -> Aggregator:
        """Fit on ``(op_codes, per_op_ms)`` of each measured model and its measured latency.

        Returns:
            self
        """
        y = np.asarray(latencies_ms, dtype=np.float64)
        if len(per_model) != len(y) or len(y) == 0:
            raise PredictorError(f"aggregator needs one latency per model; got {len(per_model)} models, {len(y)} "
                                 "latencies (at least 1)")
        x = np.stack([agg_features(o, m) for o, m in per_model])
        if self.method == "scale":
            ratio = np.log(y) - np.log(np.maximum(x[:, :_N].sum(axis=1), 1e-12))
            coef = np.zeros(len(AGG_FEATURES))
            coef[:_N] = float(np.exp(np.median(ratio)))
        elif self.method == "pooled":
            coef = _fit_pooled(x, y, self.strength)
        else:
            from scipy.optimize import nnls

            # relative error: divide each row by its target; scale columns for conditioning
            a = x / y[:, None]
            col = np.maximum(np.abs(a).max(axis=0), 1e-12)
            sol, _ = nnls(a / col, np.ones(len(y)), maxiter=2000)
            coef = sol / col
        self.coef_ = coef
        self.n_models_ = len(y)
        self.raw_sum_ratio_ = float(np.median(x[:, :_N].sum(axis=1) / y))
        return self

    def predict_one(self, ops: np.ndarray, ms: np.ndarray) -> float:
        """Calibrated latency (ms) of one model."""
        if not hasattr(self, "coef_"):
            raise PredictorError("aggregator is not fitted")
        return float(agg_features(ops, ms) @ self.coef_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "features": list(AGG_FEATURES), "coef": [float(c) for c in self.coef_],
                "n_models": self.n_models_, "raw_sum_ratio": self.raw_sum_ratio_}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Aggregator:
        if list(d.get("features", [])) != list(AGG_FEATURES):
            raise PredictorError(f"aggregator features {d.get('features')} differ from {list(AGG_FEATURES)}")
        agg = cls(str(d["method"]))
        agg.coef_ = np.asarray(d["coef"], dtype=np.float64)
        agg.n_models_ = int(d["n_models"])
        agg.raw_sum_ratio_ = float(d["raw_sum_ratio"])
        return agg


def _fit_pooled(x: np.ndarray, y: np.ndarray, strength: float) -> np.ndarray:
    """``pooled`` calibration: per-kind scales ``a_k`` pulled toward one shared scale ``s`` learned across every
    family (penalty ``strength · n · Σ_k (a_k − s)²`` on relative error), plus per-op overhead and a constant,
    all non-negative. A kind the calibration models lack (or barely have) takes the shared scale instead of an
    arbitrary NNLS value, so a family with an op mix the calibration never saw is scaled like the others."""
    from scipy.optimize import lsq_linear

    n = len(y)
    a = x / y[:, None]  # relative error: each model's row divided by its latency
    # variables: a_0..a_{N-1}, n_ops, const, s
    design = np.hstack([a, np.zeros((n, 1))])
    pen = np.zeros((_N, _N + 3))
    w = np.sqrt(strength * n) * np.maximum(np.median(a[:, :_N].sum(axis=1)), 1e-12)
    for k in range(_N):
        pen[k, k], pen[k, _N + 2] = w, -w
    full = np.vstack([design, pen])
    col = np.maximum(np.abs(full).max(axis=0), 1e-12)
    sol = lsq_linear(full / col, np.concatenate([np.ones(n), np.zeros(_N)]), bounds=(0, np.inf)).x / col
    return sol[:_N + 2]
