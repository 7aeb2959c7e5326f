"""Fit a device's predictor from its measurements: choose the kind, fit, calibrate, evaluate.

This is what ``hwloop predictor fit`` and the benchmarks run. :func:`learned_policy` is the one rule for when
a learned predictor replaces the ℓ1/ℓ2 surrogate; ``hwloop predictor fit --kind auto``, a search given a store
(:func:`hwloop.search.latency.select_latency_model`) and the search benchmark's recorded predictor
(:func:`hwloop.search.evidence.record_and_fit`) all follow it.

Example:
    >>> from hwloop.predict.fitting import choose_kind, learned_policy
    >>> choose_kind(n_layers=0), choose_kind(n_layers=5000)
    ('surrogate', 'xgboost')
    >>> learned_policy(49)
    (False, '49 measured layers < 50: ℓ1/ℓ2 surrogate')
"""

from __future__ import annotations

from typing import Any

from hwloop.errors import PredictorError

__all__ = ["MIN_LEARNED_LAYERS", "NOISE_FACTOR", "MIN_REFUSED_MAPE", "choose_kind", "fit_predictor",
           "learned_policy", "quality_check"]

#: a learned predictor replaces the ℓ1/ℓ2 surrogate from this many measured layers of the device on
#: (fewer: the surrogate, scaled by one fitted constant); see :func:`learned_policy`
MIN_LEARNED_LAYERS = 50


#: ``predictor fit`` refuses to save (without ``--force``) a predictor whose held-out MAPE exceeds
#: ``max(NOISE_FACTOR × noise floor, MIN_REFUSED_MAPE)``. The noise floor is the median CV of the
#: measurements (:func:`~hwloop.predict.evaluate.noise_floor_pct`): an error ten times what a
#: re-measurement shows is not noise but a predictor that did not learn the device (the shipped
#: CPU predictor is at 3x its floor). The absolute floor keeps the rule meaningful for deterministic
#: devices (CV 0, e.g. the simulated ASIC): above 25% a predictor's error exceeds the latency
#: steps a search has to tell apart (targets of 0.5-0.7x), so its ranking of candidates is noise.
NOISE_FACTOR = 10.0
MIN_REFUSED_MAPE = 25.0


def quality_check(metrics: dict[str, Any], floor_pct: float) -> str | None:
    """Why a fitted predictor must not be saved, or None: a held-out MAPE far beyond the noise floor.

    Checks the held-out layers (``layers_random_split``) and the unseen whole models
    (``models_calibrated``) of :func:`~hwloop.predict.evaluate.evaluate_predictor`'s metrics.

    Example:
        >>> quality_check({"layers_random_split": {"mape": 80.0, "n": 40}}, 1.0)
        'held-out layers MAPE 80.0% (n=40) is 80x the noise floor of the data (1.0% median CV); limit 25.0%'
        >>> quality_check({"layers_random_split": {"mape": 3.1, "n": 40}}, 1.0) is None
        True
    """
    limit = max(NOISE_FACTOR * floor_pct, MIN_REFUSED_MAPE)
    for key, what in (("layers_random_split", "held-out layers"), ("models_calibrated", "unseen whole models")):
        m = metrics.get(key) or {}
        mape = m.get("mape")
        if mape is None or not mape == mape:  # absent or NaN (no test rows)
            continue
        if mape > limit:
            ratio = f"{mape / floor_pct:.0f}x the noise floor of the data" if floor_pct > 0 else \
                "far beyond the noise floor of the data"
            return (f"{what} MAPE {mape:.1f}% (n={m.get('n')}) is {ratio} ({floor_pct:.1f}% median CV); "
                    f"limit {limit:.1f}%")
    return None


def learned_policy(n_layers: int) -> tuple[bool, str]:
    """Whether ``n_layers`` measured layers of a device are enough for a learned predictor, and why (one line).

    The one policy for when a learned predictor (XGBoost) replaces the ℓ1/ℓ2 surrogate: at least
    :data:`MIN_LEARNED_LAYERS` measured layers.

    Example:
        >>> learned_policy(120)
        (True, '120 measured layers >= 50: learned predictor')
    """
    if n_layers >= MIN_LEARNED_LAYERS:
        return True, f"{n_layers} measured layers >= {MIN_LEARNED_LAYERS}: learned predictor"
    return False, f"{n_layers} measured layers < {MIN_LEARNED_LAYERS}: ℓ1/ℓ2 surrogate"


def choose_kind(n_layers: int, requested: str = "auto") -> str:
    """``requested`` unless ``auto``: by :func:`learned_policy`, the learned predictor or the surrogate."""
    if requested != "auto":
        return requested
    return "xgboost" if learned_policy(n_layers)[0] else "surrogate"


def fit_predictor(data: Any, kind: str = "auto", *, evaluate: bool = True, aggregate: str | None = "pooled",
                  plot_path: Any = None, folds: int = 5, seed: int = 0, params: dict[str, Any] | None = None
                  ) -> Any:
    """Fit a predictor of ``kind`` on :class:`~hwloop.predict.io.TrainingData`.

    Args:
        data: measured layers (and whole models) of one device and mode.
        kind: a predictor kind or ``auto`` (see :func:`choose_kind`).
        evaluate: run the three evaluation protocols and store them in ``metrics_``.
        aggregate: aggregation method fitted on the measured whole models (None: plain sum); default ``pooled``
            (per-kind scales pulled toward one shared scale: generalises to unseen model families).
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
        p.kind_reason_ = learned_policy(data.n_layers)[1] + (
            "" if chosen != "surrogate" else " scaled by one fitted constant" if data.n_layers else " at nominal scale")
    else:
        p.kind_reason_ = f"requested {chosen}"
    return p
