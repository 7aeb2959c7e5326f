"""Adaptive sampling (nn-Meter style): measure where the current predictor is least certain.

Rounds: measure a random seed set, fit a small bootstrap ensemble of XGBoost models on
what has been measured, then measure the candidates whose predictions disagree most
(largest ensemble spread of log-latency), and repeat until the budget is spent. The sweep
CLI calls :func:`run_adaptive_sweep`; the benchmark calls :func:`adaptive_sample` with a
simulated device (recorded timings) to compare against random sampling.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.adaptive import adaptive_sample
    >>> from hwloop.predict.sampling import random_layer_specs
    >>> pool = random_layer_specs(60, np.random.default_rng(0))
    >>> res = adaptive_sample(pool, lambda specs: np.array([s.macs * 1e-6 + 0.01 for s in specs]),
    ...                       budget=30, rounds=3, members=2, n_estimators=20, progress=False)
    >>> len(res.indices)
    30
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwloop.errors import ConfigError, PredictorError

__all__ = [
    "STRATEGIES",
    "AdaptiveResult",
    "AdaptiveRound",
    "AdaptiveSummary",
    "adaptive_sample",
    "ensemble_spread",
    "run_adaptive_sweep",
]

STRATEGIES = ("spread", "random")


@dataclass(frozen=True)
class AdaptiveRound:
    """One round: how many were measured so far, the mean spread of the chosen candidates, and
    (when an evaluation set was given) the ±10% accuracy of a predictor fitted on them."""

    round: int
    n_measured: int
    mean_spread: float
    eval_acc10: float = float("nan")


@dataclass(frozen=True)
class AdaptiveResult:
    """Indices (into the pool) measured, in order, their latencies (ms) and the round history."""

    indices: tuple[int, ...]
    latencies_ms: np.ndarray
    rounds: tuple[AdaptiveRound, ...]
    strategy: str


@dataclass(frozen=True)
class AdaptiveSummary:
    """What :func:`run_adaptive_sweep` did."""

    candidates: int
    budget: int
    measured: int
    failed: int
    rounds: tuple[AdaptiveRound, ...]
    strategy: str

    def __str__(self) -> str:
        last = self.rounds[-1].mean_spread if self.rounds else float("nan")
        return (f"adaptive ({self.strategy}): measured {self.measured} of budget {self.budget} from "
                f"{self.candidates} candidates in {len(self.rounds)} rounds, {self.failed} failed; "
                f"last round's mean ensemble spread {last:.3f} (log-ms)")

    def __rich__(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "budget": self.budget, "measured": self.measured,
                "failed": self.failed, "strategy": self.strategy,
                "rounds": [r.__dict__ for r in self.rounds]}


def ensemble_spread(x_train: np.ndarray, y_log: np.ndarray, x_pool: np.ndarray, *, members: int = 5,
                    n_estimators: int = 150, seed: int = 0) -> np.ndarray:
    """Standard deviation of log-latency predictions of a bootstrap XGBoost ensemble on ``x_pool``."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    preds = []
    for m in range(members):
        idx = rng.integers(0, len(y_log), len(y_log))
        dm = xgb.DMatrix(x_train[idx], label=y_log[idx])
        b = xgb.train({"max_depth": 6, "eta": 0.1, "subsample": 0.8, "colsample_bytree": 0.8, "nthread": 2,
                       "seed": int(seed * 100 + m)}, dm, num_boost_round=n_estimators)
        preds.append(b.inplace_predict(x_pool))
    return np.asarray(np.std(np.stack(preds), axis=0), dtype=np.float64)


def adaptive_sample(pool: Sequence[Any], measure: Callable[[list[Any]], np.ndarray], budget: int, *,
                    rounds: int = 5, init_frac: float = 0.3, strategy: str = "spread", members: int = 5,
                    n_estimators: int = 150, seed: int = 0, eval_specs: Sequence[Any] | None = None,
                    eval_ms: Any = None, make_eval: Callable[[], Any] | None = None,
                    progress: bool = True) -> AdaptiveResult:
    """Choose and measure ``budget`` specs from ``pool`` in ``rounds`` rounds.

    Args:
        pool: candidate ``LayerSpec`` objects.
        measure: callback returning latencies (ms; NaN for a failure) for a list of specs.
        budget: number of measurements.
        rounds: rounds after the random seed set (``init_frac`` of the budget).
        init_frac: fraction of the budget measured at random first.
        strategy: ``"spread"`` (ensemble disagreement) or ``"random"`` (baseline).
        members / n_estimators: size of the bootstrap ensemble.
        seed: random seed.
        eval_specs / eval_ms / make_eval: optional held-out set; each round a ``make_eval()``
            predictor is fitted on what was measured and its ±10% accuracy recorded.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    from hwloop.predict.evaluate import regression_metrics
    from hwloop.predict.features import features_from_table, spec_table

    if strategy not in STRATEGIES:
        raise ConfigError(f"adaptive strategy {strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget {budget!r} must be a positive integer")
    if not 0 < init_frac <= 1 or rounds < 1:
        raise ConfigError(f"init_frac={init_frac} must be in (0, 1] and rounds={rounds} >= 1")
    budget = min(budget, len(pool))
    if budget == 0:
        raise PredictorError("the candidate pool is empty; nothing to measure")
    rng = np.random.default_rng(seed)
    table = spec_table(list(pool))
    x_all = features_from_table(table)
    chosen: list[int] = []
    ys: list[float] = []
    history: list[AdaptiveRound] = []
    n0 = max(2, round(budget * init_frac)) if strategy == "spread" else budget
    sizes = [min(n0, budget)]
    rest = budget - sizes[0]
    for r in range(rounds):
        sizes.append(rest // rounds + (1 if r < rest % rounds else 0))
    bar = tqdm(total=budget, desc=f"adaptive ({strategy})", unit="meas", disable=not progress)
    for r, k in enumerate(s for s in sizes if s > 0):
        remaining = np.setdiff1d(np.arange(len(pool)), np.asarray(chosen, dtype=np.int64))
        ok = np.isfinite(ys) if ys else np.zeros(0, dtype=bool)
        spread = np.zeros(len(remaining))
        if r == 0 or strategy == "random" or ok.sum() < 4:
            pick = rng.choice(remaining, size=min(k, len(remaining)), replace=False)
        else:
            idx = np.asarray(chosen)[ok]
            spread = ensemble_spread(x_all[idx], np.log(np.asarray(ys)[ok]), x_all[remaining], members=members,
                                     n_estimators=n_estimators, seed=seed + r)
            pick = remaining[np.argsort(-spread, kind="stable")[:k]]
        lat = np.asarray(measure([pool[i] for i in pick]), dtype=np.float64)
        if lat.shape != (len(pick),):
            raise PredictorError(f"measure returned {lat.shape} latencies for {len(pick)} specs")
        chosen += [int(i) for i in pick]
        ys += [float(v) if v > 0 else float("nan") for v in lat]
        bar.update(len(pick))
        acc = float("nan")
        if eval_specs is not None and make_eval is not None:
            good = np.isfinite(ys)
            p = make_eval().fit(table[np.asarray(chosen)[good]], np.asarray(ys)[good])
            acc = regression_metrics(np.asarray(eval_ms), p.predict(list(eval_specs)))["acc10"]
        sel = spread[np.argsort(-spread)[:k]] if spread.any() else np.zeros(1)
        history.append(AdaptiveRound(r, len(chosen), float(np.mean(sel)), acc))
    bar.close()
    return AdaptiveResult(tuple(chosen), np.asarray(ys), tuple(history), strategy)


def run_adaptive_sweep(spec: Any, device: Any, store: Any, budget: int, timing: Any = None, *,
                       rounds: int = 5, strategy: str = "spread", seed: int = 0,
                       progress: bool = True) -> AdaptiveSummary:
    """Measure ``budget`` of a sweep's layer requests, choosing them adaptively; results go to ``store``.

    Args:
        spec: a sweep spec with ``requests()`` (its ``layer`` requests are the candidate pool).
        device: a ``Device``.
        store: a ``MeasurementStore`` (``add(fingerprint, request, result)``), or None.
        budget: number of measurements.
        timing: ``TimingConfig`` (default: the device's).
        rounds / strategy / seed: see :func:`adaptive_sample`.
        progress: show a progress bar.

    Returns:
        An :class:`AdaptiveSummary`.
    """
    from hwloop.devices.base import MeasureRequest

    reqs = [r for r in spec.requests() if r.kind == "layer"]
    if not reqs:
        raise ConfigError("the sweep has no layer requests; adaptive sampling chooses among layers")
    fp = device.fingerprint()
    failed = 0

    def measure(specs: list[Any]) -> np.ndarray:
        nonlocal failed
        rq = [MeasureRequest.for_layer(s) for s in specs]
        results = device.measure(rq, timing) if timing is not None else device.measure(rq)
        out = []
        for q, res in zip(rq, results):
            if store is not None:
                store.add(fp, q, res)
            if res.ok:
                out.append(res.latency_ms)
            else:
                failed += 1
                out.append(float("nan"))
        return np.asarray(out)

    res = adaptive_sample([r.layer for r in reqs], measure, budget, rounds=rounds, strategy=strategy, seed=seed,
                          progress=progress)
    return AdaptiveSummary(len(reqs), budget, len(res.indices), failed, res.rounds, strategy)
