"""Honest evaluation of latency predictors.

Three protocols, all reporting MAPE, RMSE, ±5% / ±10% accuracy and Spearman ρ:

* (a) a random split of isolated layers (fit on the rest);
* (b) unseen whole models: the aggregation model is fitted with K-fold leave-models-out, so
  every model is predicted by a calibration that never saw it (the layer model is trained on
  isolated layers, which come from other random models);
* (c) per (model family, batch, dtype) group of (b), where Spearman ρ says whether the
  predictor ranks models of one family correctly.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.evaluate import regression_metrics
    >>> m = regression_metrics(np.array([1.0, 2.0, 4.0]), np.array([1.05, 1.9, 4.0]))
    >>> m["acc10"], round(m["mape"], 2)
    (1.0, 3.33)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.errors import PredictorError

__all__ = [
    "noise_floor_pct",
    "evaluate_layer_split",
    "evaluate_models",
    "evaluate_predictor",
    "format_metrics",
    "group_metrics",
    "parity_plot",
    "regression_metrics",
]


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """``n``, ``mape`` (%), ``rmse_ms``, ``acc5``/``acc10`` (fraction within ±5/10%) and ``spearman``."""
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.shape != yp.shape:
        raise PredictorError(f"y_true has shape {yt.shape} but y_pred has {yp.shape}; they must match")
    if yt.size == 0:
        return {"n": 0, "mape": float("nan"), "rmse_ms": float("nan"), "acc5": float("nan"),
                "acc10": float("nan"), "spearman": float("nan")}
    rel = np.abs(yp - yt) / yt
    rho = float("nan")
    if yt.size >= 3 and np.ptp(yt) > 0 and np.ptp(yp) > 0:
        from scipy.stats import spearmanr

        rho = float(spearmanr(yt, yp).statistic)
    return {"n": int(yt.size), "mape": float(100 * rel.mean()), "rmse_ms": float(np.sqrt(np.mean((yp - yt) ** 2))),
            "acc5": float(np.mean(rel <= 0.05)), "acc10": float(np.mean(rel <= 0.10)), "spearman": rho}


def noise_floor_pct(cv: Any) -> float:
    """The data's noise floor in MAPE terms: 100 × the median coefficient of variation of its timings.

    ``cv`` is each measurement's ``pstdev / mean`` of its timed samples (the store's ``cv`` column):
    the relative error one re-measurement of a layer typically shows. No predictor can be expected
    to beat it; missing values (NaN) are ignored and no values give 0 (a deterministic device).

    Example:
        >>> noise_floor_pct([0.01, 0.02, float("nan"), 0.03])
        2.0
    """
    a = np.asarray(cv, dtype=np.float64)
    a = a[np.isfinite(a) & (a >= 0)]
    return float(100 * np.median(a)) if a.size else 0.0


def group_metrics(groups: Sequence[str], y_true: Any, y_pred: Any) -> dict[str, dict[str, float]]:
    """:func:`regression_metrics` per group label."""
    g = np.asarray(groups)
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    return {str(k): regression_metrics(yt[g == k], yp[g == k]) for k in sorted(set(g.tolist()))}


def evaluate_layer_split(make: Callable[[], Any], specs: Sequence[Any], y_ms: Any, *, test_frac: float = 0.2,
                         seed: int = 0) -> dict[str, Any]:
    """Protocol (a): fit ``make()`` on a random ``1 - test_frac`` of the layers, test on the rest.

    Returns:
        ``{"metrics", "y_true", "y_pred", "test_index"}``.
    """
    if not 0 < test_frac < 1:
        raise PredictorError(f"test_frac={test_frac} must be in (0, 1)")
    from hwloop.predict.features import spec_table

    y = np.asarray(y_ms, dtype=np.float64)
    table = spec_table(list(specs))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = max(1, round(test_frac * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    p = make().fit(table[train], y[train])
    yp = p.predict(table[test])
    return {"metrics": regression_metrics(y[test], yp), "y_true": y[test], "y_pred": yp, "test_index": test}


def evaluate_models(layer_predictor: Any, workloads: Sequence[Any], y_ms: Any, groups: Sequence[str], *,
                    folds: int = 5, seed: int = 0, method: str = "pooled") -> dict[str, Any]:
    """Protocols (b) and (c): K-fold leave-models-out calibration of a fitted layer predictor.

    Args:
        layer_predictor: a fitted predictor (its own aggregator, if any, is not used).
        workloads: one workload per measured model.
        y_ms: measured whole-model latencies.
        groups: a group label per model, e.g. ``"resnet20/b1/float32"``.
        folds: number of folds (each model is tested exactly once).
        seed: fold assignment seed.
        method: aggregation method.

    Returns:
        ``{"raw", "calibrated", "per_group": {g: {"raw", "calibrated"}}, "y_true", "y_raw", "y_cal"}``.
    """
    from hwloop.predict.aggregate import Aggregator

    y = np.asarray(y_ms, dtype=np.float64)
    n = len(y)
    if n < 2:
        raise PredictorError(f"leave-models-out needs at least 2 measured models, got {n}")
    per = [layer_predictor.layer_predictions(w) for w in workloads]
    raw = np.array([ms.sum() for _, ms in per])
    k = min(folds, n)
    fold = np.random.default_rng(seed).permutation(n) % k
    cal = np.empty(n)
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        agg = Aggregator(method).fit([per[i] for i in tr], y[tr])
        cal[te] = [agg.predict_one(*per[i]) for i in te]
    pg = {}
    for g in sorted(set(groups)):
        idx = np.flatnonzero(np.asarray(groups) == g)
        pg[g] = {"raw": regression_metrics(y[idx], raw[idx]), "calibrated": regression_metrics(y[idx], cal[idx])}
    return {"raw": regression_metrics(y, raw), "calibrated": regression_metrics(y, cal), "per_group": pg,
            "y_true": y, "y_raw": raw, "y_cal": cal}


def model_group(ref: Any) -> str:
    """The (family, batch, dtype) label of a ``ModelRef``."""
    return f"{ref.name}/b{ref.batch}/{ref.dtype}"


def evaluate_predictor(make: Callable[[], Any], data: Any, *, test_frac: float = 0.2, folds: int = 5,
                       seed: int = 0, plot_path: Any = None, fitted: Any = None) -> dict[str, Any]:
    """All three protocols on a :class:`~hwloop.predict.io.TrainingData`; optionally a parity plot.

    Args:
        make: builds an unfitted predictor (for the layer split).
        data: the training data.
        test_frac: layer test fraction.
        folds: folds for leave-models-out.
        seed: split seed.
        plot_path: write a parity plot PNG here.
        fitted: a predictor already fitted on all layers (fitted here if None).

    Returns:
        JSON-able metrics: ``layers_random_split``, ``models_raw_sum``, ``models_calibrated``, ``per_group``.
    """
    out: dict[str, Any] = {}
    split = None
    if data.n_layers >= 10:
        split = evaluate_layer_split(make, data.layer_specs, data.layer_ms, test_frac=test_frac, seed=seed)
        out["layers_random_split"] = split["metrics"]
    mod = None
    if data.n_models >= 2:
        full = fitted if fitted is not None else make().fit(list(data.layer_specs), data.layer_ms)
        groups = [model_group(r) for r in data.model_refs]
        mod = evaluate_models(full, data.workloads, data.model_ms, groups, folds=folds, seed=seed)
        out["models_raw_sum"] = mod["raw"]
        out["models_calibrated"] = mod["calibrated"]
        out["per_group"] = mod["per_group"]
    out["protocol"] = {"test_frac": test_frac, "folds": folds, "seed": seed, "n_layers": data.n_layers,
                       "n_models": data.n_models}
    if plot_path is not None:
        parity_plot(plot_path, split, mod, title=f"{type(make()).__name__} on {getattr(data.fingerprint, 'name', '?')}")
    return out


def parity_plot(path: Any, split: Any, models: Any, *, title: str = "") -> Path:
    """Predicted vs measured (log-log, ±10% band) for held-out layers and unseen whole models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    panels = [("held-out layers", split and [("predicted", split["y_true"], split["y_pred"])]),
              ("unseen whole models", models and [("raw sum", models["y_true"], models["y_raw"]),
                                                  ("calibrated", models["y_true"], models["y_cal"])])]
    for ax, (name, series) in zip(axes, panels):
        if not series:
            ax.set_title(f"{name}: no data")
            continue
        lo = min(float(np.min(s[1])) for s in series) * 0.8
        hi = max(float(np.max(s[1])) for s in series) * 1.25
        xs = np.array([lo, hi])
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="±10%")
        ax.plot(xs, xs, "k-", lw=0.8)
        for label, yt, yp in series:
            acc = float(np.mean(np.abs(yp - yt) / yt <= 0.1))
            ax.scatter(yt, yp, s=8, alpha=0.6, label=f"{label} (±10%: {100 * acc:.1f}%)")
        ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)", title=name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def format_metrics(m: dict[str, float]) -> str:
    """One line: ``MAPE 3.1%  RMSE 0.004 ms  ±5% 80.0%  ±10% 96.0%  ρ 0.998  (n=600)``."""
    return (f"MAPE {m['mape']:.1f}%  RMSE {m['rmse_ms']:.4f} ms  ±5% {100 * m['acc5']:.1f}%  "
            f"±10% {100 * m['acc10']:.1f}%  ρ {m['spearman']:.3f}  (n={m['n']})")
