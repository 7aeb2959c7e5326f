"""Fit a device's predictor from its measurements: choose the kind, fit, calibrate, evaluate.

This is what ``hwloop predictor fit`` and the benchmarks run.

Example:
    >>> from hwloop.predict.fitting import choose_kind
    >>> choose_kind(n_layers=0), choose_kind(n_layers=5000)
    ('surrogate', 'xgboost')
"""

from __future__ import annotations

from typing import Any

from hwloop.errors import PredictorError

__all__ = ["MIN_LEARNED_LAYERS", "choose_kind", "fit_predictor"]

#: fewer measured layers than this and ``auto`` picks the surrogate (scaled by one fitted constant)
MIN_LEARNED_LAYERS = 50


def choose_kind(n_layers: int, requested: str = "auto") -> str:
    """``requested`` unless ``auto``: the learned predictor with enough layers, the surrogate otherwise."""
    if requested != "auto":
        return requested
    return "xgboost" if n_layers >= MIN_LEARNED_LAYERS else "surrogate"


def fit_predictor(data: Any, kind: str = "auto", *, evaluate: bool = True, aggregate: str | None = "linear",
                  plot_path: Any = None, folds: int = 5, seed: int = 0, params: dict[str, Any] | None = None
                  ) -> Any:
    """Fit a predictor of ``kind`` on :class:`~hwloop.predict.io.TrainingData`.

    Args:
        data: measured layers (and whole models) of one device and mode.
        kind: a predictor kind or ``auto`` (see :func:`choose_kind`).
        evaluate: run the three evaluation protocols and store them in ``metrics_``.
        aggregate: aggregation method fitted on the measured whole models (None: plain sum).
        plot_path: parity plot PNG (with ``evaluate``).
        folds / seed: evaluation settings.
        params: constructor parameters of the predictor.

    Returns:
        The fitted predictor; ``kind_reason_`` says why this kind was chosen.
    """
    from hwloop.predict import make_predictor
    from hwloop.predict.evaluate import evaluate_predictor

    chosen = choose_kind(data.n_layers, kind)
    if chosen != "surrogate" and data.n_layers < 2:
        raise PredictorError(f"predictor kind {chosen!r} needs measured layers; the data has {data.n_layers}")
    kw = dict(params or {})

    def make() -> Any:
        return make_predictor(chosen, fingerprint=data.fingerprint, mode=data.mode, **kw)

    p = make()
    if data.n_layers:
        p.fit(list(data.layer_specs), data.layer_ms)
    if aggregate and data.n_models >= 2:
        p.fit_aggregator(data.workloads, data.model_ms, method=aggregate)
    p.target_statistic_ = data.statistic
    p.metrics_ = {}
    if evaluate and data.n_layers >= 10:
        p.metrics_ = evaluate_predictor(make, data, folds=folds, seed=seed, plot_path=plot_path, fitted=p)
    if kind == "auto":
        p.kind_reason_ = (f"{data.n_layers} measured layers >= {MIN_LEARNED_LAYERS}: learned predictor"
                          if chosen != "surrogate" else
                          f"{data.n_layers} measured layers < {MIN_LEARNED_LAYERS}: ℓ1/ℓ2 surrogate"
                          + (" scaled by one fitted constant" if data.n_layers else " at nominal scale"))
    else:
        p.kind_reason_ = f"requested {chosen}"
    return p
