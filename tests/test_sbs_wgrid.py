"""SBS's search priced as the export (``w_grid = "plan"``, issue 19 session 6): the super-bit 2-bit level has 4 values
per channel where the exported plan's symmetric 2-bit grid has 3 (ternary); with ``plan`` every searched level is the
exported weight exactly."""

from __future__ import annotations

import pytest
import torch

from hwloop.compress.extract import get_module, output_layers
from hwloop.compress.gates import fake_quant
from hwloop.methods import make_method
from hwloop.methods.base import MethodContext
from hwloop.methods.sbs.actq import mse_quant
from hwloop.methods.sbs.cost import sbs_layers
from hwloop.methods.sbs.gated import SbsModel
from hwloop.methods.sbs.method import SbsConfig, _policy, top_config
from hwloop.methods.sbs.quant import plan_grid_weight, super_bit_weight
from hwloop.search.latency import SurrogateLatency

LEVELS = (2, 4, 8)


def _export(w: torch.Tensor, b: int, w_range: str) -> torch.Tensor:
    return mse_quant(w, b) if w_range == "mse" else fake_quant(w.detach(), b).detach()


@pytest.mark.parametrize("w_range", ["max", "mse"])
def test_each_gate_setting_gives_the_exported_weight_exactly(w_range: str) -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for gates, bits in (((1.0, 1.0), 8), ((1.0, 0.0), 4), ((0.0, 0.0), 2), ((0.0, 1.0), 2)):
        g = torch.tensor([gates[0], gates[0] * gates[1]])        # cumulative, as SbsModel passes them
        assert torch.equal(plan_grid_weight(w, LEVELS, g, w_range).detach(), _export(w, bits, w_range)), (gates, bits)
    two = plan_grid_weight(w, LEVELS, torch.zeros(2), w_range).detach().reshape(16, -1)
    assert max(len(torch.unique(row)) for row in two) <= 3      # ternary, as exported
    sb, _ = super_bit_weight(w, LEVELS, torch.zeros(2))
    assert max(len(torch.unique(row)) for row in sb.detach().reshape(16, -1)) == 4   # the super-bit 2-bit level: 4


def test_gradients_reach_the_weight_and_the_gates() -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.tensor([1.0, 0.0], requires_grad=True)
    out = plan_grid_weight(w, LEVELS, g, "mse")
    (out * torch.randn_like(out)).sum().backward()
    assert w.grad is not None and g.grad is not None
    assert torch.isfinite(g.grad).all() and bool((g.grad != 0).all())
    w2 = w.detach().clone().requires_grad_(True)
    plan_grid_weight(w2, LEVELS, g.detach(), "max").sum().backward()
    assert torch.equal(w2.grad, torch.ones_like(w2))          # straight-through


def test_the_gated_model_searches_on_the_plan_grid(small) -> None:
    """A searched layer frozen at 2 bits holds the least-error ternary weights that extraction exports; the default
    (super-bit) holds 4 values per channel there."""
    _, model, space = small
    layers = sbs_layers(space)
    policy, fixed = _policy(SbsConfig(), layers, output_layers(model, space.example))
    name = next(n.name for n in layers if policy[n.name] == "search")
    seen = {}
    for grid in ("plan", "superbit"):
        sbs = SbsModel(model, space, layers, policy, fixed, LEVELS, (4, 8), w_grid=grid, w_range="mse")
        cfg = top_config(sbs)
        cfg["w"][name] = 2
        sbs.freeze(cfg)
        raw = sbs._raw(name).detach()
        with torch.no_grad():
            seen[grid] = get_module(sbs.net, name).weight.detach().clone()
        if grid == "plan":
            assert torch.equal(seen[grid], mse_quant(raw, 2))
    rows = seen["superbit"].reshape(seen["superbit"].shape[0], -1)
    assert max(len(torch.unique(r)) for r in rows) == 4


def test_a_plan_grid_run_extracts_what_it_searched(small) -> None:
    task, model, space = small
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn,
                        latency=SurrogateLatency(space), target=0.8, device="asic-tpu32", seed=0)
    c = make_method("sbs", {"search_epochs": 1, "finetune_epochs": 0, "max_steps": 2, "grid_points": 3,
                            "w_grid": "plan", "w_range": "mse", "recalibrate_batches": 1}).run(ctx).candidates[0]
    assert c.plan.w_bits and c.accuracy is not None
    assert c.plan.meta["config"]["w_grid"] == "plan"


@pytest.fixture(scope="module")
def small(digits_pretrained):  # type: ignore[no-untyped-def]
    return digits_pretrained  # tests/conftest.py
