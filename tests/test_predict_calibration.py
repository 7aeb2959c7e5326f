"""Whole-model calibration across families (issue 15, item 7): the ``pooled`` aggregator pulls per-kind scales
toward one shared scale, so an op kind the calibration models never had is scaled like the rest."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.errors import PredictorError
from hwloop.predict.aggregate import DEPTHWISE_CODE, Aggregator


def _models(rng: np.random.Generator, kinds: list[int], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        ops = rng.choice(kinds, size=int(rng.integers(10, 40)))
        out.append((ops, rng.uniform(0.01, 0.5, size=len(ops))))
    return out


def _truth(models: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.array([1.3 * ms.sum() + 0.004 * len(ms) + 0.05 for _, ms in models])


def test_pooled_scales_an_unseen_kind_like_the_others() -> None:
    rng = np.random.default_rng(0)
    train = _models(rng, [0, 3, 4, 5], 30)  # conv, batchnorm, activation, pooling: no depthwise conv
    test = _models(rng, [0, DEPTHWISE_CODE, 4], 10)  # a family whose time is half depthwise convs
    y_train, y_test = _truth(train), _truth(test)
    lin = Aggregator("linear").fit(train, y_train)
    pooled = Aggregator("pooled").fit(train, y_train)
    err = lambda agg: np.abs(np.array([agg.predict_one(o, m) for o, m in test]) / y_test - 1)
    assert lin.coef_[DEPTHWISE_CODE] == 0.0 and np.median(err(lin)) > 0.2  # NNLS: no data, no scale
    assert abs(pooled.coef_[DEPTHWISE_CODE] - 1.3) < 0.1
    assert np.max(err(pooled)) < 0.05
    # on the families it was fitted on, pooled is as good as linear
    known = np.array([pooled.predict_one(o, m) for o, m in train]) / y_train - 1
    assert np.max(np.abs(known)) < 0.05
    assert pooled.to_dict()["method"] == "pooled" and Aggregator.from_dict(pooled.to_dict()).coef_.tolist() == \
        pooled.coef_.tolist()


def test_an_unknown_method_is_one_line() -> None:
    with pytest.raises(PredictorError, match="aggregation method 'fancy' is unknown; allowed: linear, scale, pooled"):
        Aggregator("fancy")
