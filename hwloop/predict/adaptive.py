"""Adaptive sampling (nn-Meter style): measure where the current predictor misses or is unsure.

Rounds: measure a random seed set (``init_frac`` of the budget), fit a bootstrap committee of
XGBoost models (4 members of 50 trees by default) on what has been measured (members differ in
resample, seed and row/column subsampling), choose the next batch, measure it, and repeat until
the budget is spent.
Strategies:

* ``"error"`` (default): the batch is split over strata (op kind; depthwise and low-rank convs
  apart) in proportion to candidates left × the committee's out-of-bag miss rate (±10%) in that
  stratum, with 20% of it in proportion to candidates alone (:func:`allocate`); within a stratum
  candidates rank by committee spread plus the out-of-bag error of their nearest measured
  neighbours (:func:`neighbour_error`; nn-Meter's fine-grained sampling around badly predicted
  configurations), one per k-means cluster of the best ranked (:func:`diverse_top`). The budget
  goes to, e.g., dense convs on a CPU, not to activations that are already predicted well.
* ``"diverse"``: the most uncertain (largest spread), one per k-means cluster;
  ``"spread"``: the most uncertain; ``"random"``.

What the store already holds is used, never re-measured. The sweep CLI (``hwloop sweep SPEC
--adaptive --budget N [--strategy error]``) calls :func:`run_adaptive_sweep`; the benchmark calls
:func:`adaptive_sample` with a simulated device (recorded timings) to compare against random
sampling. Selection sees only the pool and what was measured, never evaluation data.

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

from collections.abc import Callable, Mapping, Sequence
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
    "allocate",
    "committee",
    "diverse_top",
    "ensemble_spread",
    "neighbour_error",
    "run_adaptive_sweep",
    "strata",
]

STRATEGIES = ("error", "diverse", "spread", "random")


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
    skipped: int = 0

    def __str__(self) -> str:
        last = self.rounds[-1].mean_spread if self.rounds else float("nan")
        return (f"adaptive ({self.strategy}): measured {self.measured} of budget {self.budget} from "
                f"{self.candidates} candidates ({self.skipped} already stored, not re-measured) in "
                f"{len(self.rounds)} rounds, {self.failed} failed; "
                f"last round's mean ensemble spread {last:.3f} (log-ms)")

    def __rich__(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "budget": self.budget, "measured": self.measured,
                "failed": self.failed, "strategy": self.strategy, "skipped": self.skipped,
                "rounds": [r.__dict__ for r in self.rounds]}


def ensemble_spread(table_train: np.ndarray, y_ms: np.ndarray, table_pool: np.ndarray, *, members: int = 5,
                    n_estimators: int = 100, seed: int = 0) -> np.ndarray:
    """Disagreement of an ensemble about each pool row: the standard deviation of log-latency predictions.

    Members are :class:`~hwloop.predict.learned.XGBoostPredictor` models (with their baseline, like the
    predictor that will be fitted) that differ in bootstrap resample, random seed and row/column
    subsampling.

    Args:
        table_train / y_ms: raw spec table of the measured layers and their latencies (ms).
        table_pool: raw spec table of the candidates.
        members / n_estimators: ensemble size and trees per member.
        seed: random seed.
    """
    from hwloop.predict.learned import XGBoostPredictor

    rng = np.random.default_rng(seed)
    preds = []
    for m in range(members):
        idx = rng.integers(0, len(y_ms), len(y_ms))
        p = XGBoostPredictor(n_estimators=n_estimators, subsample=0.7, colsample_bytree=0.7,
                             seed=int(seed * 100 + m), n_jobs=2).fit(table_train[idx], y_ms[idx])
        preds.append(np.log(p.predict(table_pool)))
    return np.asarray(np.std(np.stack(preds), axis=0), dtype=np.float64)


def committee(table_train: np.ndarray, y_ms: np.ndarray, table_pool: np.ndarray, *, members: int = 5,
              n_estimators: int = 100, seed: int = 0, n_jobs: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A bootstrap committee's log-latency predictions for the pool and its out-of-bag errors on the training rows.

    Members are :class:`~hwloop.predict.learned.XGBoostPredictor` models (with their baseline)
    that differ in bootstrap resample, seed and row/column subsampling. A training row's
    out-of-bag error is ``|mean log-prediction of the members that did not see it − log y|``
    (NaN when every member saw it): a cross-validated error for free.

    Returns:
        ``(pool_log_preds, oob_abs_log_err)`` of shapes ``(members, len(table_pool))`` and ``(len(y_ms),)``.
    """
    from hwloop.predict.learned import XGBoostPredictor

    rng = np.random.default_rng(seed)
    n = len(y_ms)
    preds, oob_sum, oob_cnt = [], np.zeros(n), np.zeros(n)
    for m in range(members):
        idx = rng.integers(0, n, n)
        p = XGBoostPredictor(n_estimators=n_estimators, subsample=0.7, colsample_bytree=0.7,
                             seed=int(seed * 100 + m), n_jobs=n_jobs).fit(table_train[idx], y_ms[idx])
        both = p.predict(np.concatenate([table_pool, table_train]))
        preds.append(np.log(both[:len(table_pool)]))
        out = np.ones(n, dtype=bool)
        out[idx] = False
        oob_sum[out] += np.log(both[len(table_pool):][out])
        oob_cnt[out] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        oob = np.abs(oob_sum / oob_cnt - np.log(y_ms))
    return np.stack(preds), np.where(oob_cnt > 0, oob, np.nan)


def strata(table: np.ndarray) -> np.ndarray:
    """Stratum of each raw-table row: its op kind, with depthwise and low-rank convs/linears apart.

    Example:
        >>> from hwloop.predict.features import spec_table
        >>> from hwloop.workload import LayerSpec
        >>> t = spec_table([LayerSpec("conv2d", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1),
        ...                 LayerSpec("conv2d", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1, groups=8)])
        >>> strata(t).tolist()
        [0, 1]
    """
    from hwloop.predict.features import RAW_COLUMNS

    col = {c: table[:, i] for i, c in enumerate(RAW_COLUMNS)}
    dw = (col["groups"] > 1) & (col["groups"] == col["in_channels"])
    return (3 * col["op"] + np.where(dw, 1, np.where(col["rank"] > 0, 2, 0))).astype(np.int64)


def allocate(k: int, n_avail: Mapping[int, int], miss: Mapping[int, float], floor: float = 0.2) -> dict[int, int]:
    """Split ``k`` picks over strata ∝ available candidates × estimated miss rate (Neyman-style).

    ``floor`` of the batch is split ∝ available candidates alone, so no stratum is starved
    because its first estimate looked good. Largest-remainder rounding; never more than available.

    Example:
        >>> allocate(10, {0: 100, 1: 100}, {0: 0.4, 1: 0.0}, floor=0.2)
        {0: 9, 1: 1}
    """
    keys = [h for h in n_avail if n_avail[h] > 0]
    if not keys or k <= 0:
        return {}
    avail = np.array([n_avail[h] for h in keys], dtype=np.float64)
    w = avail * np.array([max(miss.get(h, 0.0), 0.0) for h in keys])
    share = floor * avail / avail.sum() + (1 - floor) * (w / w.sum() if w.sum() > 0 else avail / avail.sum())
    want = share * min(k, int(avail.sum()))
    got = np.minimum(np.floor(want), avail).astype(np.int64)
    rest = min(k, int(avail.sum())) - int(got.sum())
    order = np.argsort(-(want - got), kind="stable")
    while rest > 0:
        for j in order:
            if rest and got[j] < avail[j]:
                got[j] += 1
                rest -= 1
    return {h: int(g) for h, g in zip(keys, got) if g > 0}


def neighbour_error(x_measured: np.ndarray, err: np.ndarray, x_pool: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean out-of-bag error of each pool candidate's ``k`` nearest measured rows (standardised features).

    nn-Meter's fine-grained sampling measures more configurations around the badly predicted
    ones; in a candidate pool that means ranking candidates by how badly their measured
    neighbours are predicted.
    """
    from sklearn.neighbors import NearestNeighbors

    ok = np.isfinite(err)
    if ok.sum() == 0:
        return np.zeros(len(x_pool))
    xm = x_measured[ok].astype(np.float64)
    mu, sd = xm.mean(axis=0), np.maximum(xm.std(axis=0), 1e-9)
    nn = NearestNeighbors(n_neighbors=min(k, int(ok.sum()))).fit((xm - mu) / sd)
    _, ind = nn.kneighbors((x_pool.astype(np.float64) - mu) / sd)
    return np.asarray(err[ok][ind].mean(axis=1), dtype=np.float64)


def diverse_top(spread: np.ndarray, x: np.ndarray, k: int, *, pool_factor: int = 4, seed: int = 0) -> np.ndarray:
    """``k`` positions with high ``spread`` that are spread out in feature space (batch diversity).

    Takes the ``pool_factor·k`` most uncertain candidates, clusters them into ``k`` groups (k-means on
    standardised features) and returns the most uncertain candidate of each group, so one round does
    not spend its batch on near-duplicates of one uncertain shape.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [0.1], [10.0], [10.1]]); s = np.array([1.0, 0.9, 0.5, 0.4])
        >>> sorted(diverse_top(s, x, 2).tolist())
        [0, 2]
    """
    order = np.argsort(-spread, kind="stable")
    if k >= len(spread):
        return order
    top = order[:min(len(spread), pool_factor * k)]
    from sklearn.cluster import KMeans

    z = x[top].astype(np.float64)
    z = (z - z.mean(axis=0)) / np.maximum(z.std(axis=0), 1e-9)
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50).fit_predict(z)
    best: dict[int, int] = {}
    for j, pos in enumerate(top):  # ``top`` is sorted by spread: the first seen in a cluster is its most uncertain
        best.setdefault(int(labels[j]), int(pos))
    picked = list(best.values())
    if len(picked) < k:  # empty clusters: fill with the next most uncertain
        rest = [int(i) for i in top if int(i) not in best.values()]
        picked += rest[:k - len(picked)]
    return np.asarray(picked[:k], dtype=np.int64)


#: a row is a miss when its prediction is off by more than ±10% (in log space)
_MISS_LOG = float(np.log(1.1))


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties broken by position)."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    return r / max(len(v) - 1, 1)


def _error_driven(table: np.ndarray, x_all: np.ndarray, tr_idx: np.ndarray, tr_y: np.ndarray, remaining: np.ndarray,
                  k: int, *, members: int, n_estimators: int, seed: int, out_spread: np.ndarray,
                  use_neighbours: bool = True, floor: float = 0.2) -> np.ndarray:
    """Positions in ``remaining`` for one ``"error"`` round (see :func:`adaptive_sample`)."""
    preds, oob = committee(table[tr_idx], tr_y, table[remaining], members=members, n_estimators=n_estimators,
                           seed=seed)
    spread = preds.std(axis=0)
    out_spread[:] = spread
    st_tr, st_pool = strata(table[tr_idx]), strata(table[remaining])
    seen = np.isfinite(oob)
    missed = (oob > _MISS_LOG) & seen
    overall = float(missed.sum() / max(seen.sum(), 1))
    miss = {int(h): float((missed[st_tr == h].sum() + 5 * overall) / (seen[st_tr == h].sum() + 5))
            for h in np.unique(st_pool)}
    alloc = allocate(k, {int(h): int(c) for h, c in zip(*np.unique(st_pool, return_counts=True))}, miss, floor)
    score = _ranks(spread)
    if use_neighbours:
        score = score + _ranks(neighbour_error(x_all[tr_idx], oob, x_all[remaining]))
    picks: list[int] = []
    for h, kh in sorted(alloc.items()):
        pos = np.flatnonzero(st_pool == h)
        picks += pos[diverse_top(score[pos], x_all[remaining[pos]], kh, seed=seed)].tolist()
    return np.asarray(picks, dtype=np.int64)


def adaptive_sample(pool: Sequence[Any], measure: Callable[[list[Any]], np.ndarray], budget: int, *,
                    rounds: int = 8, init_frac: float = 0.5, strategy: str = "error", members: int = 4,
                    n_estimators: int = 50, seed: int = 0, eval_specs: Sequence[Any] | None = None,
                    eval_ms: Any = None, make_eval: Callable[[], Any] | None = None,
                    known: Mapping[int, float] | None = None, progress: bool = True) -> AdaptiveResult:
    """Choose and measure ``budget`` specs from ``pool`` in ``rounds`` rounds.

    Args:
        pool: candidate ``LayerSpec`` objects.
        measure: callback returning latencies (ms; NaN for a failure) for a list of specs.
        budget: number of new measurements.
        rounds: rounds after the random seed set (``init_frac`` of the budget).
        init_frac: fraction of the budget measured at random first (0.5 since the third session: on the
            47k-layer CPU set it beat 0.3 on a tuning split, 96.37% vs 96.21% at half the pool).
        strategy: ``"error"`` (default; see the module docstring), ``"diverse"`` (ensemble disagreement,
            one pick per k-means cluster of the most uncertain candidates), ``"spread"`` (the most
            uncertain candidates) or ``"random"``.
        members / n_estimators: size of the bootstrap ensemble (default 4 members of 50 trees: under
            half the cost per round of the earlier 5 × 100; figures in docs/predictors.md).
        seed: random seed.
        eval_specs / eval_ms / make_eval: optional held-out set; each round a ``make_eval()``
            predictor is fitted on what was measured and its ±10% accuracy recorded.
        known: pool index → latency (ms) already measured (e.g. stored earlier): used to fit the
            ensemble, never measured again, not counted in the budget.
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
    known = dict(known or {})
    if any(not 0 <= int(i) < len(pool) for i in known):
        raise PredictorError(f"known indices must index the pool of {len(pool)} candidates")
    budget = min(budget, len(pool) - len(known))
    if budget <= 0:
        raise PredictorError("the candidate pool is empty (or all of it is already measured); nothing to measure")
    rng = np.random.default_rng(seed)
    table = spec_table(list(pool))
    x_all = features_from_table(table)
    prior_idx = np.asarray(sorted(known), dtype=np.int64)
    prior_y = np.asarray([known[int(i)] for i in prior_idx], dtype=np.float64)
    chosen: list[int] = []
    ys: list[float] = []
    history: list[AdaptiveRound] = []
    n0 = budget if strategy == "random" else max(2, round(budget * init_frac))
    if strategy != "random" and len(prior_idx) >= n0:
        n0 = 0  # what the store already holds is the seed set
    sizes = [min(n0, budget)]
    rest = budget - sizes[0]
    for r in range(rounds):
        sizes.append(rest // rounds + (1 if r < rest % rounds else 0))
    bar = tqdm(total=budget, desc=f"adaptive ({strategy})", unit="meas", disable=not progress)
    for r, k in enumerate(s for s in sizes if s > 0):
        taken = np.concatenate([prior_idx, np.asarray(chosen, dtype=np.int64)])
        remaining = np.setdiff1d(np.arange(len(pool)), taken)
        tr_idx = np.concatenate([prior_idx, np.asarray(chosen, dtype=np.int64)])
        tr_y = np.concatenate([prior_y, np.asarray(ys, dtype=np.float64)])
        ok = np.isfinite(tr_y) & (tr_y > 0)
        spread = np.zeros(len(remaining))
        if strategy == "random" or ok.sum() < 4 or (r == 0 and n0 > 0):
            pick = rng.choice(remaining, size=min(k, len(remaining)), replace=False)
        elif strategy == "error":
            pick = remaining[_error_driven(table, x_all, tr_idx[ok], tr_y[ok], remaining, k, members=members,
                                           n_estimators=n_estimators, seed=seed + r, out_spread=spread)]
        else:
            spread = ensemble_spread(table[tr_idx[ok]], tr_y[ok], table[remaining], members=members,
                                     n_estimators=n_estimators, seed=seed + r)
            if strategy == "diverse":
                pick = remaining[diverse_top(spread, x_all[remaining], k, seed=seed + r)]
            else:
                pick = remaining[np.argsort(-spread, kind="stable")[:k]]
        lat = np.asarray(measure([pool[i] for i in pick]), dtype=np.float64)
        if lat.shape != (len(pick),):
            raise PredictorError(f"measure returned {lat.shape} latencies for {len(pick)} specs")
        chosen += [int(i) for i in pick]
        ys += [float(v) if v > 0 else float("nan") for v in lat]
        bar.update(len(pick))
        acc = float("nan")
        if eval_specs is not None and make_eval is not None:
            all_idx = np.concatenate([prior_idx, np.asarray(chosen, dtype=np.int64)])
            all_y = np.concatenate([prior_y, np.asarray(ys)])
            good = np.isfinite(all_y) & (all_y > 0)
            p = make_eval().fit(table[all_idx[good]], all_y[good])
            acc = regression_metrics(np.asarray(eval_ms), p.predict(list(eval_specs)))["acc10"]
        sel = spread[np.isin(remaining, pick)] if spread.any() else np.zeros(1)
        history.append(AdaptiveRound(r, len(chosen), float(np.mean(sel)), acc))
    bar.close()
    return AdaptiveResult(tuple(chosen), np.asarray(ys), tuple(history), strategy)


def run_adaptive_sweep(spec: Any, device: Any, store: Any, budget: int, timing: Any = None, *,
                       rounds: int = 8, strategy: str = "error", seed: int = 0,
                       progress: bool = True) -> AdaptiveSummary:
    """Measure ``budget`` of a sweep's layer requests, choosing them adaptively; results go to ``store``.

    Requests the store already holds (an ok row for this device fingerprint and timing) are not
    measured again: their latencies seed the ensemble and they do not count against ``budget``.

    Args:
        spec: a sweep spec with ``requests()`` (its ``layer`` requests are the candidate pool).
        device: a ``Device``.
        store: a ``MeasurementStore`` (``missing``, ``get``, ``add``), or None.
        budget: number of new measurements.
        timing: ``TimingConfig`` (default: the device's ``timing``, else ``TimingConfig()``).
        rounds / strategy / seed: see :func:`adaptive_sample`.
        progress: show a progress bar.

    Returns:
        An :class:`AdaptiveSummary`.
    """
    from hwloop.devices.base import MeasureRequest, TimingConfig

    reqs = [r for r in spec.requests() if r.kind == "layer"]
    seen: set[str] = set()
    reqs = [r for r in reqs if not (r.key in seen or seen.add(r.key))]  # type: ignore[func-returns-value]
    if not reqs:
        raise ConfigError("the sweep has no layer requests; adaptive sampling chooses among layers")
    fp = device.fingerprint()
    t = timing if timing is not None else (getattr(device, "timing", None) or TimingConfig())
    known: dict[int, float] = {}
    if store is not None:
        todo = {r.key for r in store.missing(fp, reqs, t)}
        for i, r in enumerate(reqs):
            if r.key not in todo:
                res = store.get(fp.key, r.key, t.key)
                if res is not None and res.ok:
                    known[i] = float(res.latency_ms)
    failed = 0

    def measure(specs: list[Any]) -> np.ndarray:
        nonlocal failed
        rq = [MeasureRequest.for_layer(s) for s in specs]
        results = device.measure(rq, t)
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

    if len(known) >= len(reqs):
        return AdaptiveSummary(len(reqs), budget, 0, 0, (), strategy, skipped=len(known))
    res = adaptive_sample([r.layer for r in reqs], measure, budget, rounds=rounds, strategy=strategy, seed=seed,
                          known=known, progress=progress)
    return AdaptiveSummary(len(reqs), budget, len(res.indices), failed, res.rounds, strategy, skipped=len(known))
