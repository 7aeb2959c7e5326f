"""The contract every registered compression method passes (parametrized over hwloop.methods.METHODS).

On digits + the small CNN, with each method's ``smoke_config`` (seconds): the config validates and round-trips
through JSON; bad keys and types are one-line errors (exit 2 on the CLI); every candidate's plan rebuilds a real
model with identical outputs; predicted and measured latency are both reported; the budget verdict agrees with the
numbers, and a budget that cannot be reached is reported as missed; the starting model is left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from hwloop.cli import main
from hwloop.compress.extract import from_plan, load_compressed, save_compressed
from hwloop.devices import create_device
from hwloop.errors import SearchError
from hwloop.methods import METHODS, make_method, method_class
from hwloop.methods.base import BUDGET_STATUSES, RATIO_SLACK, MethodContext, MethodResult
from hwloop.methods.measure import measure_candidates
from hwloop.search.latency import SurrogateLatency
from hwloop.search.report import measure_compressed
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.train import make_task, train_epochs

torch.set_num_threads(1)
NAMES = sorted(METHODS)
DEVICE = "asic-tpu32"   # simulated: measured in milliseconds, deterministic, quick


@pytest.fixture(scope="module")
def setup():
    """A briefly pre-trained small CNN on digits and a cost source in ms calibrated on the device."""
    task = make_task("digits", "small_cnn", train_limit=256, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    model.eval()
    acc0 = task.eval_fn(model)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=8), model=model)
    dev = create_device(DEVICE)
    ms0 = measure_compressed(dev, model, None, example=task.ref.example_input())["latency_ms"]
    macs0 = float(SurrogateLatency(space).original()) * 1e6
    lat = SurrogateLatency(space, scale_ms_per_mac=ms0 / macs0)   # ms per MAC of this device, from one measurement
    return task, model, acc0, space, lat, dev


def _context(setup, target: float | None) -> MethodContext:
    task, model, acc0, space, lat, dev = setup
    return MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn, latency=lat,
                         target=target, device=DEVICE, seed=0, base_accuracy=acc0)


@pytest.fixture(scope="module", params=NAMES)
def ran(request, setup) -> tuple[str, MethodContext, MethodResult, dict[str, torch.Tensor]]:
    name = request.param
    ctx = _context(setup, 0.5)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    res = make_method(name, dict(method_class(name).smoke_config)).run(ctx)
    measure_candidates(res, ctx, device=setup[5])
    return name, ctx, res, before


@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_round_trips(name: str) -> None:
    cls = method_class(name)
    assert cls.name == name and cls.summary and "\n" not in cls.summary
    for cfg in (cls.config_class(), cls.config_class.from_dict(dict(cls.smoke_config))):
        assert cls.config_class.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_is_one_line_naming_the_key(name: str) -> None:
    cls = method_class(name)
    with pytest.raises(SearchError, match=r"unknown key\(s\) \['no_such_key'\]; allowed: ") as e:
        make_method(name, {"no_such_key": 1})
    assert "\n" not in str(e.value)
    for f in dataclasses.fields(cls.config_class):    # a value of the wrong type for every key
        with pytest.raises(SearchError, match=rf"{f.name}=\[\[1\]\] must be ") as e:
            make_method(name, {f.name: [[1]]})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("table, needle", [
    ({"no_such_key": 1}, "no_such_key"),
    ({"search_epochs": "two"}, None),
])
def test_bad_config_exits_2_on_the_cli(name: str, table: dict, needle: str | None, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    field = next(iter(table))
    if field not in {f.name for f in dataclasses.fields(method_class(name).config_class)} | {"no_such_key"}:
        pytest.skip(f"{name} has no {field}")
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    spec = tmp_path / "bad.toml"
    spec.write_text(f'name = "bad"\n[data]\ntask = "digits"\ntrain_limit = 64\n[device]\nmeasure = false\n'
                    f'[method]\nname = "{name}"\n{body}\n', encoding="utf-8")
    assert main(["search", "run", str(spec), "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and (needle or field) in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_method_exits_2_on_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "bad"\n[method]\nname = "obc-someday"\n', encoding="utf-8")
    assert main(["search", "run", str(spec), "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'obc-someday' is unknown; allowed: " in err


def test_every_plan_rebuilds_the_candidate_exactly(ran, tmp_path: Path) -> None:
    name, ctx, res, _ = ran
    assert res.method == name and res.candidates and json.dumps(res.to_dict())
    x = next(iter(ctx.train))[0]
    for i, c in enumerate(res.candidates):
        c.model.eval()
        rebuilt, plan = load_compressed(save_compressed(c.model, c.plan, tmp_path / str(i)))
        assert plan == c.plan
        with torch.no_grad():
            assert torch.equal(rebuilt(x), c.model(x)), f"{name} {c.setting}: the plan does not rebuild the model"
        assert sum(p.numel() for p in from_plan(c.plan).parameters()) == sum(p.numel() for p in c.model.parameters())
        assert sum(p.numel() for p in c.model.parameters()) < sum(p.numel() for p in ctx.model.parameters())


def test_predicted_and_measured_latency_are_reported(ran) -> None:
    name, ctx, res, _ = ran
    for c in res.candidates:
        assert c.unit == "ms" and c.predicted_ms is not None and 0 < c.predicted_ms < math.inf
        assert c.measured_ms is not None and 0 < c.measured_ms < math.inf
        assert c.original_measured_ms is not None and c.measured_ratio is not None and c.measured_ratio < 1.0
        d = c.to_dict()
        assert d["predicted_ms"] == c.predicted_ms and d["measured_ms"] == c.measured_ms
    assert ctx.ledger is not None and ctx.ledger.total(phase="measure").device_measurements >= 2


def test_budget_verdict_agrees_with_the_numbers(ran) -> None:
    name, ctx, res, before = ran
    for c in res.candidates:
        assert c.status in BUDGET_STATUSES and c.status_reason and "\n" not in c.status_reason
        assert c.target == 0.5
        within = c.predicted_ratio <= c.target * (1 + RATIO_SLACK)
        if not within:
            assert c.status == "missed"
        if c.status == "met":
            assert within and c.search_ratio <= c.target * (1 + RATIO_SLACK)
        if c.status == "met-by-repair":
            assert c.search_ratio > c.target and c.repairs
        assert c.cost is not None and c.cost.train_images >= 0
    for k, v in ctx.model.state_dict().items():   # the starting model is the caller's: untouched
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_an_unreachable_budget_is_reported_missed(name: str, setup) -> None:
    ctx = _context(setup, 1e-4)   # far below what the smallest widths (min_keep) can reach
    res = make_method(name, {**method_class(name).smoke_config, "finetune_epochs": 0}).run(ctx)
    for c in res.candidates:
        assert c.predicted_ratio > 1e-4
        assert c.status == "missed", (c.status, c.status_reason)
        assert "above the target" in c.status_reason
