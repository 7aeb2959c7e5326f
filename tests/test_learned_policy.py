"""One policy for when a learned predictor replaces the ℓ1/ℓ2 surrogate (hwloop.predict.fitting.learned_policy),
followed by ``predictor fit --kind auto``, a search given a store, and the search benchmark's recorded predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hwloop.devices import MeasureRequest, create_device
from hwloop.predict.fitting import MIN_LEARNED_LAYERS, choose_kind, fit_predictor, learned_policy
from hwloop.predict.io import load_training_data
from hwloop.predict.sampling import random_layer_specs
from hwloop.store import MeasurementStore

torch.set_num_threads(1)


def _asic_store(path: Path, n: int) -> str:
    """A store holding ``n`` distinct layers measured on the simulated asic-tpu32."""
    url = f"sqlite:///{path}"
    dev = create_device("asic-tpu32")
    specs = list({s.key: s for s in random_layer_specs(3 * n, np.random.default_rng(0))}.values())[:n]
    assert len(specs) == n
    reqs = [MeasureRequest.for_layer(s) for s in specs]
    with MeasurementStore(url) as st:
        for req, res in zip(reqs, dev.measure(reqs)):
            assert res.ok, res.error
            st.add(dev.fingerprint(), req, res)
    return url


def test_the_policy_at_its_boundary() -> None:
    assert learned_policy(MIN_LEARNED_LAYERS - 1)[0] is False
    assert learned_policy(MIN_LEARNED_LAYERS)[0] is True
    assert choose_kind(MIN_LEARNED_LAYERS - 1) == "surrogate" and choose_kind(MIN_LEARNED_LAYERS) == "xgboost"
    assert choose_kind(0, "ridge_macs") == "ridge_macs"


def test_store_search_and_predictor_fit_follow_the_same_policy(tmp_path: Path) -> None:
    from hwloop.models import ModelRef
    from hwloop.search.latency import PredictorLatency, SurrogateLatency, select_latency_model
    from hwloop.search.space import SearchSpace

    space = SearchSpace.from_ref(ModelRef("small_cnn", {}, input_shape=(1, 8, 8)))
    for n, learned in ((MIN_LEARNED_LAYERS - 1, False), (MIN_LEARNED_LAYERS, True)):
        url = _asic_store(tmp_path / f"s{n}.db", n)
        lines: list[str] = []
        m = select_latency_model(space, store=url, device="asic-tpu32", log=lines.append)
        assert isinstance(m, PredictorLatency if learned else SurrogateLatency), lines
        p = fit_predictor(load_training_data(url, device="asic-tpu32", progress=False), "auto", evaluate=False)
        assert p.kind == ("xgboost" if learned else "surrogate")
        assert p.kind_reason_.startswith(learned_policy(n)[1])
        if not learned:
            assert f"{n} measured layers < {MIN_LEARNED_LAYERS}" in lines[-1]


@pytest.mark.parametrize("n_models", [1, 8])
def test_the_search_benchmarks_recorded_predictor_follows_the_policy(tmp_path: Path, n_models: int) -> None:
    from hwloop.models import ModelRef
    from hwloop.search.evidence import record_and_fit
    from hwloop.search.space import SearchSpace

    space = SearchSpace.from_ref(ModelRef("small_cnn", {}, input_shape=(1, 8, 8)))
    pred, info = record_and_fit(space, "asic-tpu32", n_models, 0, tmp_path)
    learned, why = learned_policy(info["layers"])
    assert learned == (n_models == 8), info["layers"]  # small_cnn has fewer than 50 layers, 8 variants more
    assert info["kind"] == pred.kind == ("xgboost" if learned else "surrogate") and info["kind_reason"] == why
    assert (tmp_path / "predictor.json").is_file()
