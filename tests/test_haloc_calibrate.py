"""HALOC's whole-model calibration (``calibrate = K``): the probes, the map, the search aiming at the mapped target,
the candidate's predicted ratio through the map, and on asic-tpu32 (whose whole model is its layers' sum) probes that
measure what the table says."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.haloc import method as haloc_method
from hwloop.methods.haloc.calibrate import calibrate_table, probe_choices
from hwloop.methods.haloc.mixed import DENSE, rank_level

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(digits_pretrained: Any) -> Any:
    return digits_pretrained  # tests/conftest.py: (task, model, space); _ctx copies the model


def _ctx(digits: Any, target: float | None) -> Any:
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace

    task, model, _ = digits
    space = SearchSpace.from_ref(task.ref, model=model)
    return MethodContext(model=copy.deepcopy(model), ref=task.ref, space=space, train=task.train, eval_fn=None,
                         latency=SurrogateLatency(space), target=target, device="asic-tpu32", seed=0)


SMOKE = {"search_epochs": 1, "finetune_epochs": 0, "max_steps": 2, "max_candidates": 4, "recalibrate_batches": 1,
         "cost_source": "surrogate", "lam": 5.0, "dual_lr": 0.5, "arch_lr": 0.05}


def test_probes_climb_each_ladder_from_its_smallest_rank() -> None:
    levels = {"a": [DENSE, rank_level(8), rank_level(2), rank_level(4)], "b": [rank_level(16), rank_level(4)]}
    ps = probe_choices(levels, 3)
    assert [(p["a"][1], p["b"][1]) for p in ps] == [(2, 4), (4, 4), (4, 16)]   # j/3 of each ladder, rounded
    assert ps[0] == {"a": rank_level(2), "b": rank_level(4)}          # the smallest rank everywhere first
    assert all(DENSE not in p.values() for p in ps) and len(ps) == len({tuple(sorted(p.items())) for p in ps})
    with pytest.raises(SearchError, match="calibrate=0 must be an int >= 1"):
        probe_choices(levels, 0)
    with pytest.raises(SearchError, match="no layer has a rank candidate"):
        probe_choices({"a": [DENSE]}, 2)


def test_the_map_through_fixed_share_probes_inverts_to_the_table_budget() -> None:
    levels = {"a": [DENSE] + [rank_level(r) for r in (1, 2, 4, 8)]}
    share = {1: 0.2, 2: 0.35, 4: 0.6, 8: 0.9}

    def table_ratio(ch: Any) -> float:
        return share[ch["a"][1]]

    rmap, info = calibrate_table(levels, table_ratio, 4, lambda ch: (0.3 + 0.7 * table_ratio(ch), {}))
    assert [p["ranks"]["a"] for p in info["probes"]] == [1, 2, 4, 8][:len(info["probes"])]
    assert info["alpha"] == pytest.approx(0.3)
    assert rmap.budget(0.65) == pytest.approx(0.5) and rmap.ratio(0.5) == pytest.approx(0.65)


def _fixed_share(monkeypatch: pytest.MonkeyPatch, share: float, seen: list[int]) -> None:
    """The method's calibration with the device replaced by r = share + (1 - share)·(table ratio)."""
    real = haloc_method.calibrate_table

    def fake(levels: Any, table_ratio: Any, k: int, measure: Any, say: Any = None) -> Any:
        seen.append(k)
        return real(levels, table_ratio, k, lambda ch: (share + (1 - share) * table_ratio(ch), {}), say)

    monkeypatch.setattr(haloc_method, "calibrate_table", fake)


@pytest.mark.parametrize("ranks", ["search", "uniform"])
def test_the_method_aims_at_the_mapped_target_and_predicts_through_the_map(digits, monkeypatch: pytest.MonkeyPatch,
                                                                            ranks: str) -> None:
    seen: list[int] = []
    _fixed_share(monkeypatch, 0.3, seen)
    ctx = _ctx(digits, 0.8)
    cand = make_method("haloc", {**SMOKE, "ranks": ranks, "calibrate": 3}).run(ctx).candidates[0]
    cal = cand.extra["calibration"]
    assert seen == [3] and cal["table_target"] == pytest.approx((0.8 - 0.3) / 0.7)
    t = cand.extra["table_predicted_ratio"]
    assert cand.predicted_ratio == pytest.approx(0.3 + 0.7 * t)        # the whole-model prediction, not the table's
    assert t <= cal["table_target"] * (1 + 1e-6)                       # the table aimed at the mapped target
    assert cand.status in ("met", "met-by-repair") and cand.predicted_ratio <= 0.8 * (1 + 1e-6)
    assert cand.plan.meta["calibrated_predicted"] / cand.plan.meta["original"] == pytest.approx(cand.predicted_ratio)
    assert cand.plan.meta["predicted"] / cand.plan.meta["original"] == pytest.approx(t)   # the table's, kept
    rec = [r for r in ctx.ledger.records if r.phase == "calibrate"]
    assert len(rec) == 1 and rec[0].device_measurements == len(cal["probes"]) >= 2   # the fake: 1 per probe
    plain = make_method("haloc", {**SMOKE, "ranks": ranks}).run(_ctx(digits, 0.8)).candidates[0]
    assert "calibration" not in plain.extra and "table_predicted_ratio" not in plain.extra


def test_on_the_asic_the_probes_measure_what_the_table_says(digits) -> None:
    """asic-tpu32's whole model is the sum of its ops: probes built from the model and measured whole land on the
    measured cost table's ratios (within 2%), so the map is near the identity there."""
    ctx = _ctx(digits, 0.8)
    cand = make_method("haloc", {**SMOKE, "cost_source": "measure", "calibrate": 2}).run(ctx).candidates[0]
    probes = cand.extra["calibration"]["probes"]
    assert len(probes) == 2
    for p in probes:
        assert p["measured_ratio"] == pytest.approx(p["table_ratio"], rel=0.02), p   # (> 1 too: a 32-wide array)


def test_calibrate_config_errors_are_one_line() -> None:
    with pytest.raises(SearchError, match="calibrate=-1 must be >= 0"):
        make_method("haloc", {"calibrate": -1})
    with pytest.raises(SearchError, match="maps the rank-only table; with widths"):
        make_method("haloc", {"calibrate": 2, "widths": [0.5, 1.0]})


def test_calibration_leaves_the_runs_random_stream_alone(digits, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a probe reseeds torch on the CPU path (``ModelRef.build``); the search after the calibration must
    draw what it draws without it (else every seed's Gumbel draws would be seed 0's)."""
    states: list[torch.Tensor] = []
    real_alternate = haloc_method.alternate

    def spy(*a: Any, **k: Any) -> Any:
        states.append(torch.get_rng_state())
        return real_alternate(*a, **k)

    real = haloc_method.calibrate_table

    def reseeding(levels: Any, table_ratio: Any, k: int, measure: Any, say: Any = None) -> Any:
        def m(ch: Any) -> Any:
            torch.manual_seed(0)           # what a probe build does on the CPU
            return 0.3 + 0.7 * table_ratio(ch), {}
        return real(levels, table_ratio, k, m, say)

    monkeypatch.setattr(haloc_method, "alternate", spy)
    monkeypatch.setattr(haloc_method, "calibrate_table", reseeding)
    for cal in (0, 3):
        ctx = _ctx(digits, 0.8)
        ctx.seed = 5
        make_method("haloc", {**SMOKE, "calibrate": cal}).run(ctx)
    assert len(states) == 2 and torch.equal(states[0], states[1])
