"""HALOC's uniform-rank control (``ranks = "uniform"``), the ``context`` cost source, and HALOC through the evidence
harness (digits + small CNN on asic-tpu32: haloc, uniform-rank as a second method entry, the width-uniform and
FLOPs controls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.haloc.method import table_source
from hwloop.methods.haloc.uniform import choose_uniform, uniform_ladder, uniform_ranks

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def test_uniform_ranks_and_ladder() -> None:
    tops = {"a": 16, "b": 32, "c": 64}
    assert uniform_ranks(tops, 1 / 64) == {"a": 1, "b": 1, "c": 1}
    assert uniform_ranks(tops, 0.25) == {"a": 4, "b": 8, "c": 16}
    assert uniform_ranks(tops, 1.0) == tops
    ladder = uniform_ladder(tops, 64)
    keys = [tuple(r.values()) for _, r in ladder]
    assert len(keys) == len(set(keys)) and keys[-1] == (16, 32, 64)
    assert [f for f, _ in ladder] == sorted(f for f, _ in ladder)
    # every rank of the widest layer appears once: the ladder is as fine as the widest layer allows
    assert sorted(r["c"] for _, r in ladder) == list(range(1, 65))
    for bad, needle in [(0.0, "fraction 0.0 must be in"), (1.5, "fraction 1.5 must be in")]:
        with pytest.raises(SearchError, match=needle):
            uniform_ranks(tops, bad)
    with pytest.raises(SearchError, match="n=0 must be >= 1"):
        uniform_ladder(tops, 0)


def test_choose_uniform_takes_the_largest_cost_at_or_below_the_budget() -> None:
    tops = {"a": 16, "b": 64}
    ladder = uniform_ladder(tops, 16)
    # a staircase that is not monotone in the rank: rank 8 of "a" costs more than rank 9
    stair = {r: (10.0 if r == 8 else float(r)) for r in range(1, 17)}   # cost(k/16) = stair[k] + k/2

    def cost(r: dict[str, int]) -> float:
        return stair[r["a"]] + r["b"] / 8

    for budget in (5.0, 12.0, 14.0, 30.0):
        _, ranks, c = choose_uniform(ladder, cost, budget)
        assert c <= budget and c == cost(ranks)
        assert all(cost(r) <= c or cost(r) > budget for _, r in ladder)   # nothing cheaper-than-budget is closer
    assert choose_uniform(ladder, cost, 14.0)[1]["a"] == 8   # 14.0: the largest cost, though k = 9 (13.5) is a
    assert choose_uniform(ladder, cost, 13.9)[1]["a"] == 9   # larger fraction under the budget too
    assert choose_uniform(ladder, cost, 1.0) is None


def test_context_cost_source() -> None:
    from types import SimpleNamespace

    def ctx(kind: str) -> Any:
        return SimpleNamespace(latency=SimpleNamespace(kind=kind)) if kind else SimpleNamespace(latency=None)

    assert table_source(ctx("surrogate"), "context") == "surrogate"     # the harness's flops control
    assert table_source(ctx("predictor"), "context") == "measure"
    assert table_source(ctx(""), "context") == "measure"
    assert table_source(ctx("surrogate"), "measure") == "measure"      # an explicit source is kept


def test_config_errors_are_one_line() -> None:
    for bad, needle in [({"ranks": "random"}, "ranks='random' is unknown; allowed: search, uniform"),
                        ({"uniform_n": 0}, "uniform_n=0 must be >= 1")]:
        with pytest.raises(SearchError, match=needle) as e:
            make_method("haloc", bad)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def digits() -> Any:
    from hwloop.search.train import make_task, train_epochs

    task = make_task("digits", "small_cnn", train_limit=256, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    return task, model.eval()


def _ctx(digits: Any, target: float | None) -> Any:
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace

    task, model = digits
    space = SearchSpace.from_ref(task.ref, model=model)
    return MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                         latency=SurrogateLatency(space), target=target, device="asic-tpu32")


@pytest.mark.parametrize("target", [0.6, 0.8, 0.9])
def test_uniform_mode_is_the_uniform_point_closest_below_the_target(digits: Any, target: float) -> None:
    from hwloop.compress.extract import get_module
    from hwloop.methods.haloc.mixed import DENSE, max_equal_rank, rank_level
    from hwloop.methods.measure import measure_candidates
    from hwloop.search.costtable import build_cost_table

    task, model = digits
    ctx = _ctx(digits, target)
    res = make_method("haloc", {"ranks": "uniform", "finetune_epochs": 1, "max_steps": 2, "recalibrate_batches": 1,
                                "cost_source": "measure", "uniform_n": 32}).run(ctx)
    c = res.candidates[0]
    f = c.extra["uniform_frac"]
    ranks = c.extra["ranks"]
    tops = {n: max_equal_rank(get_module(model, n)) for n in ranks}
    assert ranks == uniform_ranks(tops, f)                                   # one fraction for every layer
    assert [a.form for a in c.plan.actions] == ["tucker2"] * len(tops)      # all factorised, real Tucker-2 layers
    # no other uniform point is closer to the target from below (the same device cost table, built here)
    from hwloop.methods.haloc.costs import layer_specs, table_levels

    ladder = uniform_ladder(tops, 32)
    lv = {n: sorted({rank_level(r[n]) for _, r in ladder}) for n in tops}
    levels, passive = table_levels(layer_specs(model, task.ref.example_input()), lv)
    table = build_cost_table(levels, device="asic-tpu32", source="measure", progress=False, passive=passive)
    dense = table.model_cost({n: DENSE for n in tops})
    costs = [table.model_cost({n: rank_level(r[n]) for n in tops}) for _, r in ladder]
    assert c.original == pytest.approx(dense, rel=1e-9)
    below = [x for x in costs if x <= target * dense]
    if below:   # the uniform point closest to the target from below
        assert c.predicted <= target * c.original * (1 + 1e-9) and c.predicted == pytest.approx(max(below), rel=1e-9)
        assert c.status == "met"
    else:       # out of reach (rank 1 everywhere costs 0.72x on this CNN): the smallest ranks, judged missed
        assert ranks == ladder[0][1] and c.status == "missed"
    # the only training is the fine-tune: 2 batches
    assert c.cost.train_images == 2 * task.train.batch_size
    measure_candidates(res, ctx)
    assert c.measured_ratio == pytest.approx(c.predicted / c.original, rel=0.02)   # simulated device: table = measured


def test_uniform_mode_needs_a_target(digits: Any) -> None:
    with pytest.raises(SearchError, match="ranks='uniform' needs a latency target"):
        make_method("haloc", {"ranks": "uniform", "max_steps": 2}).run(_ctx(digits, None))


def test_haloc_through_the_evidence_harness(tmp_path: Path) -> None:
    """haloc and the uniform-rank entry as [[methods]], the width-uniform and FLOPs controls against haloc."""
    from hwloop.search.harness import run_harness
    from hwloop.search.harness_spec import HarnessSpec

    smoke = {"search_epochs": 1, "finetune_epochs": 1, "max_steps": 4, "recalibrate_batches": 2, "step": 4,
             "max_candidates": 3, "lam": 5.0, "dual_lr": 0.5, "arch_lr": 0.05, "sampling": "gumbel",
             "arch_paths": 2, "cost_source": "context"}
    spec = HarnessSpec.from_dict({
        "name": "haloc-harness-test", "devices": ["asic-tpu32"], "targets": [0.9], "seeds": [0],
        "task": {"task": "digits", "model": "small_cnn", "pretrain_epochs": 2, "holdout": 200},
        "schedule": {"search_epochs": 1, "finetune_epochs": 1, "lr": 0.02},
        "cost": {"objective": "learned",
                 "predictors": {"asic-tpu32": str(REPO / "measurements" / "asic-tpu32" / "predictor.json")}},
        "space": {"channels": True},
        "methods": [{"name": "haloc", **smoke},
                    {"name": "haloc", "label": "uniform-rank", **smoke, "ranks": "uniform", "finetune_epochs": 2}],
        "controls": {"run": ["uniform", "flops"], "tolerance": 0.05}})
    summary = run_harness(spec, tmp_path, progress=False)
    assert summary["failed"] == [] and summary["ran"] == 4
    rows = {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json")}
    h, u, w, fl = rows["haloc"], rows["uniform-rank"], rows["uniform"], rows["flops"]
    for r in (h, u):
        assert r["measured_ratio"] is not None and r["measured_ratio"] <= 0.9 * 1.02
        assert r["plan"]["meta"]["unit"] == "ms"                         # the measured cost table
    assert u["plan"]["meta"]["method"] == "haloc-uniform"
    # the uniform-rank entry trains on as many images as haloc's search + fine-tune (2 x 4 batches)
    assert u["train_images"] == h["train_images"]
    assert fl["plan"]["meta"]["unit"] == "macs"                          # the flops control costs ranks by MACs
    assert w["goal_ratio"] == pytest.approx(h["measured_ratio"])         # width-uniform at haloc's measured latency
    md = (tmp_path / "results.md").read_text()
    assert "uniform-rank" in md and "haloc" in md
