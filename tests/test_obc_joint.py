"""OBC's DP on the whole model's cost (``dp = "joint"``, hwloop/methods/obc/joint.py) and the database cache
(issue 17): the vectorised knapsack equals the plain one, the joint solver equals brute force under the exact
summed cost, the additive model over-counts shared convs, the hubs of a ResNet-like graph are its stage groups,
and on asic-tpu32 the joint DP's cost equals the device's whole-model latency."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.obc import joint as joint_mod
from hwloop.methods.obc.dp import knapsack
from hwloop.methods.obc.joint import JointCost, Term, knapsack_fast, plan_hubs, solve_joint, solve_joint_top

torch.set_num_threads(1)


def test_knapsack_fast_equals_knapsack() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        units = int(rng.integers(1, 5))
        errors = [sorted(rng.random(int(rng.integers(1, 5))).tolist()) for _ in range(units)]
        costs = [rng.random(len(e)).tolist() for e in errors]
        budget = float(rng.random() * units)
        a = knapsack(errors, costs, budget, 500)
        b = knapsack_fast([np.asarray(e) for e in errors], [np.asarray(c) for c in costs], budget, 500)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a[1] == pytest.approx(b[1]) and a[0] == b[0]


def _resnet_like(rng: np.random.Generator) -> tuple[JointCost, list[list[float]], list[int]]:
    """Two 'stage' groups (0, 1), three inner groups (2, 3, 4), two bit units (5, 6): convs cost in x out x bits."""
    n_levels = [3, 3, 3, 3, 2, 2, 2]
    frac = [np.linspace(1, 0.3, n) for n in n_levels]
    bits = np.array([1.0, 0.6])
    terms = [Term("stem", (0,), 2 * frac[0]),
             Term("b1.conv1", (0, 2, 5), np.einsum("i,j,k->ijk", frac[0], frac[2], bits)),
             Term("b1.conv2", (2, 0), np.outer(frac[2], frac[0])),
             Term("b2.conv1", (0, 3), np.outer(frac[0], frac[3])),
             Term("b2.conv2", (3, 1, 6), np.einsum("i,j,k->ijk", frac[3], frac[1], bits)),
             Term("b3.conv1", (1, 4), np.outer(frac[1], frac[4])),
             Term("b3.conv2", (4, 1), np.outer(frac[4], frac[1])),
             Term("fc", (1,), 0.5 * frac[1]),
             Term("fixed", (), np.array(0.3))]
    errors = [[0.0, *sorted(rng.random(n - 1) * (u + 1))] for u, n in enumerate(n_levels)]
    return JointCost(terms, n_levels), errors, [0, 1, 2, 3, 4]


def test_joint_solver_equals_brute_force() -> None:
    """Under the exact summed cost the joint DP's answer fits the budget and is at least as good as the best
    choice within the budget less the buckets' rounding (the brute-force optimum over every combination)."""
    rng = np.random.default_rng(1)
    for _ in range(12):
        cost, errors, groups = _resnet_like(rng)
        full = cost.full()
        budget = full * float(rng.uniform(0.45, 0.9))
        got = solve_joint(errors, cost, budget, 2000, candidates=groups, comp_limit=8)
        combos = list(itertools.product(*[range(n) for n in cost.n_levels]))
        errs = [sum(errors[u][li] for u, li in enumerate(c)) for c in combos]
        tight = [e for c, e in zip(combos, errs) if cost.total(c) <= budget * (1 - 1e-2)]
        loose = [e for c, e in zip(combos, errs) if cost.total(c) <= budget]
        if not loose:
            assert got is None
            continue
        assert got is not None
        choice, e = got
        assert cost.total(choice) <= budget * (1 + 1e-9)
        assert e == pytest.approx(sum(errors[u][li] for u, li in enumerate(choice)))
        assert min(loose) - 1e-12 <= e <= (min(tight) if tight else math.inf) + 1e-12


def test_the_additive_model_over_counts_a_conv_both_groups_shrink() -> None:
    cost, _, _ = _resnet_like(np.random.default_rng(2))
    choice = [2, 2, 2, 2, 1, 1, 1]
    assert cost.additive_total(choice) < cost.total(choice)           # it thinks the model is faster than it is
    rows = {r["term"]: r for r in cost.breakdown(choice)}
    two = rows["b1.conv2"]                                               # both of its groups shrink
    assert two["additive_saving"] > two["saving"] > 0
    assert rows["stem"]["additive_saving"] == pytest.approx(rows["stem"]["saving"])   # one group: exact
    assert sum(r["full"] - r["additive_saving"] for r in rows.values()) == pytest.approx(cost.additive_total(choice))
    assert sum(r["whole"] for r in rows.values()) == pytest.approx(cost.total(choice))


def test_hubs_of_a_resnet_like_graph_are_its_stage_groups() -> None:
    cost, _, groups = _resnet_like(np.random.default_rng(3))
    hubs, comps = plan_hubs(cost, groups, comp_limit=8)
    assert sorted(hubs) == [0, 1]
    assert sorted(map(sorted, comps)) == [[2, 5], [3, 6], [4]]
    with pytest.raises(SearchError, match="hub units exceed 5"):
        solve_joint([[0.0] * n for n in cost.n_levels], cost, 1.0, candidates=groups, comp_limit=8, hub_limit=5)


def test_top_answers_are_sorted_and_differ_in_a_hub() -> None:
    cost, errors, groups = _resnet_like(np.random.default_rng(4))
    budget = 0.6 * cost.full()
    top = solve_joint_top(errors, cost, budget, 2000, candidates=groups, comp_limit=8, top=4)
    assert len(top) == 4 and top[0] == solve_joint(errors, cost, budget, 2000, candidates=groups, comp_limit=8)
    errs = [e for _, e in top]
    assert errs == sorted(errs)
    assert len({(c[0], c[1]) for c, _ in top}) == 4                  # hubs 0 and 1: one combination each
    assert all(cost.total(c) <= budget * (1 + 1e-9) for c, _ in top)


@pytest.mark.parametrize("table, needle", [
    ({"dp": "exact"}, "dp='exact' is unknown; allowed: additive, joint"),
    ({"dp": "joint"}, "dp='joint' needs cost_source='table'"),
    ({"database_cache": ""}, "database_cache='' must be a folder path or absent"),
    ({"rerank": 4, "cost_source": "table"}, "rerank=4 needs dp='joint'"),
    ({"rerank": -1}, "rerank=-1 must be an int >= 0"),
])
def test_bad_config_is_one_line(table: dict, needle: str) -> None:
    with pytest.raises(SearchError) as e:
        make_method("obc", table)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def digits(digits_pretrained):
    return digits_pretrained  # tests/conftest.py


def test_joint_dp_cost_is_the_whole_model_on_asic(digits, tmp_path) -> None:
    """On asic-tpu32 (whole model = the sum of its ops) the joint DP's cost of its first answer equals the measured
    whole model and meets the target without corrections; the additive model's estimate of the same answer is
    below it. The database is written to the cache once and read back on the second run."""
    from hwloop.methods.base import MethodContext
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.latency import SurrogateLatency

    task, model, space = digits
    keys = {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25], "kinds": ["channels", "bits"],
            "bits": [4], "cost_source": "table", "check": "device", "buckets": 2000, "dp": "joint",
            "database_cache": str(tmp_path / "db"), "bn_data": "calib"}
    train = list(itertools.islice(iter(task.train), 4))     # fixed batches: the same calibration images each run
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.5, device="asic-tpu32", ledger=ComputeLedger())
    res = make_method("obc", keys).run(ctx)
    c = res.candidates[0]
    first = c.extra["dp_steps"][0]
    assert first["dp_ratio"] == pytest.approx(first["whole_ratio"], rel=1e-6)
    assert first["whole_ratio"] <= 0.5 and c.extra["dp_chosen"] == 0 and not c.repairs
    assert first["additive_ratio"] < first["whole_ratio"]
    files = list((tmp_path / "db").glob("obc-db-*.safetensors"))
    assert len(files) == 1
    said: list[str] = []
    again = make_method("obc", keys).run(dataclasses_replace(ctx, log=said.append, ledger=ComputeLedger()))
    assert any("database read from" in s for s in said)
    assert again.candidates[0].extra["dp_steps"][0]["whole_ratio"] == pytest.approx(first["whole_ratio"])
    meth = make_method("obc", keys)
    _, calib = meth.database(ctx, copy.deepcopy(model))
    from hwloop.methods.obc.database import database_key

    k0 = database_key(model, calib, meth._db_keys())
    assert database_key(model, [(x + 1, y) for x, y in calib], meth._db_keys()) != k0
    assert database_key(model, calib, {**meth._db_keys(), "bits": [8]}) != k0


def test_rerank_takes_the_lowest_calibration_loss(digits, monkeypatch) -> None:
    """``rerank = 3``: the 3 best joint answers (one per hub combination; hubs forced on the small CNN by a small
    component limit) are stitched and the one with the lowest calibration loss is the DP's answer."""
    from hwloop.methods.base import MethodContext
    from hwloop.methods.obc.method import calib_loss
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.latency import SurrogateLatency

    monkeypatch.setattr(joint_mod, "COMP_LIMIT", 4)
    task, model, space = digits
    keys = {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25], "kinds": ["channels"],
            "cost_source": "table", "check": "device", "buckets": 1000, "dp": "joint", "rerank": 3,
            "bn_data": "calib"}
    train = list(itertools.islice(iter(task.train), 4))
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.6, device="asic-tpu32", ledger=ComputeLedger())
    meth = make_method("obc", keys)
    res = meth.run(ctx)
    c = res.candidates[0]
    step = c.extra["dp_steps"][0]
    rr = step["rerank"]
    assert len(rr) == 3 and all(r["dp_ratio"] <= 0.6 + 1e-9 for r in rr)
    assert [r["dp_error"] for r in rr] == sorted(r["dp_error"] for r in rr)
    losses = [r["calib_loss"] for r in rr]
    assert step["choice"] == rr[int(np.argmin(losses))]["choice"]
    db, calib = meth.database(ctx, copy.deepcopy(model))            # the same images (fixed batches)
    assert calib_loss(meth.stitch(ctx, model, db, step["choice"], calib), calib, 64) == pytest.approx(min(losses))


def dataclasses_replace(ctx, **kw):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(ctx, **kw)


def test_harness_runs_obc_against_controls_without_retraining(tmp_path) -> None:
    """The evidence harness with OBC as a [[methods]] entry (dp = "joint", database cached) and the uniform and
    magnitude controls: OBC records no training images, so the controls get none either and their batch-norm
    statistics are re-estimated ([controls] bn_batches); every row is measured on asic-tpu32."""
    import json
    from pathlib import Path

    from hwloop.search.harness import run_harness
    from hwloop.search.harness_spec import HarnessSpec

    pred = str(Path(__file__).resolve().parents[1] / "measurements" / "asic-tpu32" / "predictor.json")
    obc = {"name": "obc", "calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25],
           "kinds": ["channels", "bits"], "bits": [4], "cost_source": "table", "check": "device", "buckets": 1000,
           "finetune_epochs": 0, "database_cache": str(tmp_path / "obc-db")}
    spec = HarnessSpec.from_dict({
        "name": "obc-harness-test", "devices": ["asic-tpu32"], "targets": [0.5], "seeds": [0],
        "task": {"task": "digits", "model": "small_cnn", "pretrain_epochs": 2, "holdout": 200},
        "schedule": {"search_epochs": 0, "finetune_epochs": 0, "lr": 0.02},
        "cost": {"objective": "learned", "predictors": {"asic-tpu32": pred}},
        "space": {"channels": True, "bits": True, "a_bits": 8},
        "methods": [{**obc, "label": "obc-joint", "dp": "joint"}, {**obc, "label": "obc-additive"}],
        "controls": {"run": ["uniform", "magnitude"], "against": ["obc-joint"], "bn_batches": 2}})
    out = tmp_path / "h"
    summary = run_harness(spec, out, progress=False)
    assert summary["failed"] == [] and summary["done"] == summary["cells"] == 4
    rows = {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(rows) == {"obc-joint", "obc-additive", "uniform", "magnitude"}
    for r in rows.values():
        assert r["train_images"] == 0 and 0 < r["measured_ratio"] < 1, r["entry"]
    j = rows["obc-joint"]
    assert j["measured_ratio"] <= 0.5 * 1.02 and j["status"] == "met"          # the joint DP's first answer
    assert j["search_ratio"] == pytest.approx(j["measured_ratio"], rel=1e-6)
    for name in ("uniform", "magnitude"):
        assert "batch-norm statistics re-estimated from" in rows[name]["status_reason"]
        assert rows[name]["goal_ratio"] == pytest.approx(j["measured_ratio"])
    assert len(list((tmp_path / "obc-db").glob("obc-db-*.safetensors"))) == 1   # both entries, one database
    assert "obc-joint" in (out / "results.md").read_text()


def test_cli_bad_dp_is_one_line(tmp_path, capsys) -> None:
    from hwloop.cli import main

    ck = tmp_path / "w.safetensors"
    ck.write_bytes(b"not read: the options are checked first")
    assert main(["search", "obc", str(ck), "--dp", "exact", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "dp='exact' is unknown; allowed: additive, joint" in err and "\n" not in err
    assert main(["search", "obc", str(ck), "--rerank", "4", "--out", str(tmp_path / "o")]) == 2
    assert "rerank=4 needs dp='joint'" in capsys.readouterr().err
    assert main(["search", "obc", str(ck), "--calibrate", "3", "--out", str(tmp_path / "o")]) == 2
    assert "calibrate=3 needs dp='joint'" in capsys.readouterr().err
    assert main(["search", "obc", str(ck), "--dp", "joint", "--joint-source", "guess", "--out", str(tmp_path / "o")]) == 2
    assert "joint_source='guess' is unknown; allowed: measure, predictor" in capsys.readouterr().err


def test_calibrate_fits_the_fixed_share_before_the_dp(digits) -> None:
    """``calibrate = 3`` on a device whose whole model is 40% fixed + 60% asic-tpu32's op sum (the CPU's per-op
    overhead, on given numbers: asic-tpu32 measured, then mapped): the probes, measured before the DP, give the
    fixed share 0.4, and the DP's first answer's cost is the device's whole-model ratio, within the target with no
    correction; without it the first answer's op sum is within the target but the device's ratio is not."""
    from hwloop.methods.base import MethodContext
    from hwloop.methods.obc.method import ObcMethod
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.latency import SurrogateLatency

    class FixedShare(ObcMethod):
        def whole_ratio(self, context, model, plan, whole0):  # type: ignore[no-untyped-def]
            r, _, how = super().whole_ratio(context, model, plan, whole0)
            return 0.4 + 0.6 * r, (0.4 + 0.6 * r) * whole0, how

    task, model, space = digits
    keys = {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25], "kinds": ["channels"],
            "cost_source": "table", "check": "device", "buckets": 2000, "dp": "joint", "bn_data": "calib",
            "corrections": 0}
    train = list(itertools.islice(iter(task.train), 4))
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.75, device="asic-tpu32", ledger=ComputeLedger())
    plain = FixedShare(make_method("obc", keys).config).run(ctx).candidates[0].extra["dp_steps"][0]
    assert plain["dp_ratio"] <= 0.75 < plain["whole_ratio"]
    c = FixedShare(make_method("obc", {**keys, "calibrate": 3}).config).run(
        dataclasses_replace(ctx, ledger=ComputeLedger())).candidates[0]
    first = c.extra["dp_steps"][0]
    assert c.extra["overhead"]["alpha"] == pytest.approx(0.4, abs=1e-6) and len(c.extra["overhead"]["probes"]) == 3
    assert first["dp_ratio"] == pytest.approx(first["whole_ratio"], rel=1e-6)
    assert first["whole_ratio"] <= 0.75 + 1e-9 and c.extra["dp_chosen"] == 0 and not c.repairs
    assert "fixed share 0.4000 from 3 whole-model probes" in c.extra["costs"]
    m = FixedShare(make_method("obc", {**keys, "calibrate": 3, "margin": 0.1}).config).run(
        dataclasses_replace(ctx, ledger=ComputeLedger())).candidates[0]
    aimed = m.extra["dp_steps"][0]
    assert aimed["dp_ratio"] <= 0.75 * 0.9 + 1e-9 and aimed["whole_ratio"] <= first["whole_ratio"]
    assert m.status == "met" and m.target == 0.75                 # judged against the target itself
