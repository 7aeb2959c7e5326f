"""PredictorLatency interpolates every slot at once (issue 16: the latency term ≤ 5% of a training step); the
numbers must be those of the slot-by-slot path (``layer_ms``) to the bit: values, gradients, the aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwloop.models import ModelRef
from hwloop.predict import SurrogatePredictor
from hwloop.search.costtable import shipped_predictor
from hwloop.search.latency import PredictorLatency, select_latency_model
from hwloop.search.space import SearchSpace, SpaceOptions

SPACES = {"channels": SpaceOptions(channels=True),
          "bits+tile": SpaceOptions(channels=True, bits=True, bit_levels=(2, 4, 8), a_bits=8, tile=32),
          "lowrank": SpaceOptions(channels=True, lowrank=True)}


def _slot_by_slot(lat: PredictorLatency, sizes, dense) -> torch.Tensor:
    slots = [*lat.active_slots(dense), *lat.passive]
    ms = torch.stack([lat.layer_ms(s, sizes).reshape(()) for s in slots])
    if lat.aggregate == "calibrated":
        return lat._calibrated(np.asarray([lat._codes[s.name] for s in slots]), ms).float()
    return ms.sum().float()


@pytest.mark.parametrize("space_name", list(SPACES))
@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
def test_batched_equals_slot_by_slot(model: str, space_name: str) -> None:
    ref = ModelRef(model)
    space = SearchSpace.from_ref(ref, SPACES[space_name])
    lats = [select_latency_model(space, predictor_path=str(shipped_predictor(d)), device=d, objective="learned")
            for d in ("asic-tpu32", "local-cpu")]
    lats += [PredictorLatency(space, SurrogatePredictor(), grad_points=None),
             PredictorLatency(space, SurrogatePredictor(), grad_points=4, grad_nodes="even")]
    assert {lat.aggregate for lat in lats} >= ({"sum", "calibrated"} if space_name != "bits+tile" else {"sum"})
    rng = np.random.default_rng(0)
    full = space.full_sizes()
    for lat in lats:
        for dense in (frozenset(), frozenset(space.lowrank)):
            for trial in range(3):
                sizes = {k: torch.tensor(float(v) * (rng.uniform(0.05, 1.1) if trial else 1.0), requires_grad=True)
                         for k, v in full.items()}
                old = _slot_by_slot(lat, sizes, dense)
                g_old = torch.autograd.grad(old, list(sizes.values()), allow_unused=True)
                new = lat(sizes, dense)
                g_new = torch.autograd.grad(new, list(sizes.values()), allow_unused=True)
                assert torch.equal(old, new)
                assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g_old, g_new))
                with torch.no_grad():
                    assert torch.equal(lat(sizes, dense), old.detach())
                    floats = {k: float(v) for k, v in sizes.items()}
                    assert torch.equal(lat(floats, dense), _slot_by_slot(lat, floats, dense))
