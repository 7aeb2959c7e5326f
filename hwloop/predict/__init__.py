"""Latency predictors: how long will this layer / this model take on this device?

* :class:`SurrogatePredictor` — the ℓ1/ℓ2 surrogate (no data needed; one fitted constant
  per device when a few measurements exist) and its differentiable form
  :func:`surrogate_cost_torch` used by search.
* :class:`XGBoostPredictor` (default learned predictor) and the baselines
  :class:`RidgeMacsPredictor`, :class:`RandomForestPredictor`,
  :class:`GradientBoostingPredictor`, :class:`LookupTablePredictor` — all the same contract.
* Whole-model calibration (:mod:`hwloop.predict.aggregate`), evaluation
  (:mod:`hwloop.predict.evaluate`), adaptive sampling (:mod:`hwloop.predict.adaptive`) and
  files (:func:`load_predictor`).

Heavy libraries (xgboost, scikit-learn, torch) are imported only when used.

Example:
    >>> import hwloop
    >>> p = hwloop.load_predictor("measurements/local-cpu/predictor.json")  # doctest: +SKIP
    >>> p.predict_model(model, example)  # doctest: +SKIP
    1.23
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PREDICTORS",
    "PREDICTOR_KINDS",
    "WHOLE_MODEL_KINDS",
    "Aggregator",
    "BasePredictor",
    "GradientBoostingPredictor",
    "LatencyPredictor",
    "LookupTablePredictor",
    "PredictorWarning",
    "RandomForestPredictor",
    "RidgeMacsPredictor",
    "SurrogatePredictor",
    "TrainingData",
    "XGBoostPredictor",
    "evaluate_predictor",
    "l1_l2_width",
    "load_predictor",
    "load_training_data",
    "make_predictor",
    "regression_metrics",
    "save_predictor",
    "surrogate_cost_torch",
    "surrogate_terms",
]

_WHERE = {
    "BasePredictor": "base", "LatencyPredictor": "base", "PredictorWarning": "base",
    "SurrogatePredictor": "surrogate", "surrogate_cost_torch": "surrogate", "surrogate_terms": "surrogate",
    "l1_l2_width": "surrogate",
    "XGBoostPredictor": "learned", "RidgeMacsPredictor": "learned", "RandomForestPredictor": "learned",
    "GradientBoostingPredictor": "learned", "LookupTablePredictor": "learned",
    "Aggregator": "aggregate", "load_predictor": "io", "save_predictor": "io", "load_training_data": "io",
    "TrainingData": "io", "regression_metrics": "evaluate", "evaluate_predictor": "evaluate",
}

#: predictor kind -> ``"module:Class"``: the built-in predictors, the one registry of them (a file naming
#: any other class loads only with the user's opt-in, :mod:`hwloop.trust`)
PREDICTORS: dict[str, str] = {
    "xgboost": "hwloop.predict.learned:XGBoostPredictor",
    "surrogate": "hwloop.predict.surrogate:SurrogatePredictor",
    "ridge_macs": "hwloop.predict.learned:RidgeMacsPredictor",
    "random_forest": "hwloop.predict.learned:RandomForestPredictor",
    "gradient_boosting": "hwloop.predict.learned:GradientBoostingPredictor",
    "lookup": "hwloop.predict.learned:LookupTablePredictor",
    "graph_cost": "hwloop.predict.graph_cost:GraphCostPredictor",
}
#: kinds fitted from whole-model timings (``fit_models``), not from per-layer ones
WHOLE_MODEL_KINDS = ("graph_cost",)
#: the per-layer kinds: what ``hwloop predictor fit --kind`` accepts and the contract suite runs
PREDICTOR_KINDS = tuple(k for k in PREDICTORS if k not in WHOLE_MODEL_KINDS)


def make_predictor(kind: str, **kwargs: Any) -> Any:
    """A new, unfitted predictor of ``kind`` (a key of :data:`PREDICTORS`).

    Example:
        >>> from hwloop.predict import PREDICTOR_KINDS, make_predictor
        >>> type(make_predictor("ridge_macs")).__name__
        'RidgeMacsPredictor'
        >>> PREDICTOR_KINDS
        ('xgboost', 'surrogate', 'ridge_macs', 'random_forest', 'gradient_boosting', 'lookup')
    """
    from hwloop.errors import PredictorError

    if kind not in PREDICTORS:
        raise PredictorError(f"predictor kind {kind!r} is unknown; allowed: {', '.join(PREDICTORS)}")
    from hwloop.trust import import_builtin

    return import_builtin(PREDICTORS[kind])(**kwargs)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"hwloop.predict.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hwloop.predict' has no attribute {name!r}")
