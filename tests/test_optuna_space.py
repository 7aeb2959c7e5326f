"""The Optuna baseline samples the differentiable search's own space and builds the same models."""

from __future__ import annotations

import optuna
import pytest
import torch

from hwloop.compress import CompressionPlan
from hwloop.errors import SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.baselines import CompressionObjective, config_from_plan, suggest_config
from hwloop.workload import extract_layers

SPEC = {"name": "t", "seed": 0, "data": {"task": "digits", "train_limit": 192, "val_limit": 96, "batch_size": 64},
        "predictor": {"objective": "surrogate"}, "space": {"channels": True, "bits": True},
        "schedule": {"max_steps": 2}}


@pytest.fixture(scope="module")
def objective() -> CompressionObjective:
    torch.set_num_threads(1)
    return CompressionObjective({"spec": SPEC, "finetune_epochs": 1, "target": 0.6})


def _arch(net: torch.nn.Module, example: torch.Tensor) -> list[str]:
    return [s.key for s in extract_layers(net, example) if s.op in ("conv2d", "linear", "batchnorm")]


def test_trial_distributions_are_the_space_dimensions(objective: CompressionObjective) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    cfg = suggest_config(trial, objective.space)
    dims = objective.space.dimensions()
    assert list(cfg) == [d.name for d in dims]
    assert any(d.kind == "choice" for d in dims) and any(d.kind == "ratio" for d in dims)
    for d in dims:
        dist = trial.distributions[d.name]
        if d.kind == "ratio":
            assert (dist.low, dist.high) == (d.low, d.high)
        else:
            assert tuple(dist.choices) == d.choices


def test_differentiable_plan_and_optuna_config_build_identical_models(objective: CompressionObjective) -> None:
    from hwloop.search.differentiable import SearchConfig, differentiable_search

    space, lat = objective.space, objective.latency
    res = differentiable_search(space, lat, objective.task.train, None,
                                SearchConfig(search_epochs=1, finetune_epochs=0, target=0.4, max_steps=3,
                                             gate_lr=0.2))
    assert res.plan.widths, "the search should have pruned something at a 40% budget"
    cfg = config_from_plan(space, res.plan)
    net, plan, cfg2 = objective.suggest(optuna.trial.FixedTrial(cfg))
    assert cfg2 == cfg
    assert plan.widths == res.plan.widths and plan.w_bits == res.plan.w_bits and plan.lowrank == res.plan.lowrank
    ex = space.example
    assert _arch(net, ex) == _arch(res.model, ex)
    assert lat.plan_latency(plan) == pytest.approx(res.predicted)


def test_one_trial_records_plan_latency_constraint_and_compute(objective: CompressionObjective) -> None:
    study = optuna.create_study(directions=list(objective.directions))
    cfg = {d.name: (0.5 if d.kind == "ratio" else d.choices[0]) for d in objective.space.dimensions()}
    study.enqueue_trial(cfg)
    trial = study.ask()
    ledger = ComputeLedger()
    acc, ratio = objective(trial, ledger)
    study.tell(trial, [acc, ratio])
    t = study.trials[0]
    assert 0.0 <= acc <= 100.0 and 0.0 < ratio < 0.6
    assert t.constraints == {"latency": pytest.approx(ratio - 0.6)}
    assert CompressionPlan.from_dict(t.user_attrs["plan"]).widths
    tot = ledger.total(trial=0)
    assert tot.train_images == 2 * 64 and tot.epochs == 1.0  # max_steps=2 batches of 64, one epoch
    assert {r.phase for r in ledger.records} == {"build", "finetune", "eval"}


def test_over_budget_config_is_pruned_before_training(objective: CompressionObjective) -> None:
    study = optuna.create_study(directions=list(objective.directions))
    study.enqueue_trial(objective.space.default_config())  # the uncompressed model: ratio 1.0 > 0.6
    trial = study.ask()
    ledger = ComputeLedger()
    with pytest.raises(optuna.TrialPruned, match="over the budget"):
        objective(trial, ledger)
    assert ledger.total().train_images == 0
    assert study.trials[0].constraints["latency"] == pytest.approx(0.4)


def test_empty_space_is_a_one_line_search_error() -> None:
    spec = {**SPEC, "space": {"channels": False, "bits": False, "lowrank": False}}
    with pytest.raises(SearchError, match="search space is empty") as ei:
        CompressionObjective({"spec": spec, "finetune_epochs": 1})
    assert "\n" not in str(ei.value)


def test_accuracy_mode_prunes_with_optuna_pruner(objective: CompressionObjective) -> None:
    obj = CompressionObjective({"spec": SPEC, "finetune_epochs": 2, "target": 0.9, "mode": "accuracy"})
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=101.0))  # prunes at the first report
    study.enqueue_trial({d.name: (0.3 if d.kind == "ratio" else d.choices[-1]) for d in obj.space.dimensions()})
    trial = study.ask()
    ledger = ComputeLedger()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        obj(trial, ledger)
    assert study.trials[0].intermediate_values and ledger.total().epochs == 0.0
