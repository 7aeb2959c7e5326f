"""Search space, latency models in the loss, the search loop, specs and the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hwloop.cli import main
from hwloop.compress.gated import GatedModel
from hwloop.devices import MeasureRequest, create_device
from hwloop.errors import SearchError
from hwloop.models import ModelRef
from hwloop.search.differentiable import SearchConfig, differentiable_search
from hwloop.search.latency import (
    PredictorLatency,
    SurrogateLatency,
    interp_grid,
    sample_layer_specs,
    select_latency_model,
)
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.spec import SearchSpec, load_spec
from hwloop.search.train import make_task

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_space() -> SearchSpace:
    return SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(bits=True, a_bits=8))


def _asic_predictor(space: SearchSpace, kind: str = "xgboost"):
    """A predictor fitted on real measurements of the simulated ASIC (layers from the space)."""
    from hwloop.predict.learned import XGBoostPredictor
    from hwloop.predict.surrogate import SurrogatePredictor

    specs = sample_layer_specs(space, 150, np.random.default_rng(0))
    dev = create_device("asic-tpu32")
    ms = [r.latency_ms for r in dev.measure([MeasureRequest.for_layer(s) for s in specs])]
    p = XGBoostPredictor(n_estimators=60, max_depth=4, n_jobs=1) if kind == "xgboost" else SurrogatePredictor()
    return p.fit(specs, np.array(ms))


def test_space_dimensions_plan_and_sampling(digits_space: SearchSpace) -> None:
    dims = {d.name: d for d in digits_space.dimensions()}
    assert set(dims) == {"width:features.0", "width:features.3", "width:features.7", "bits:features.3",
                         "bits:features.7"}
    assert dims["bits:features.3"].choices == (2, 4, 8)
    plan = digits_space.plan_from_config({"width:features.3": 0.5, "bits:features.7": 2})
    assert plan.widths == {"features.3": 16} and plan.w_bits == {"features.3": 8, "features.7": 2}
    cfg = digits_space.sample(np.random.default_rng(1))
    net, plan = digits_space.compress(cfg)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(SearchError, match="outside"):
        digits_space.plan_from_config({"width:features.3": 1.5})
    with pytest.raises(SearchError, match="unknown dimension"):
        digits_space.plan_from_config({"width:nope": 0.5})
    with pytest.raises(SearchError, match="not allowed"):
        digits_space.plan_from_config({"bits:features.3": 3})


def test_interp_grid_exact_at_nodes_and_linear_between() -> None:
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4) ** 2
    g0, g1 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            assert float(interp_grid(t, [g0, g1], [g0[i], g1[j]])) == float(t[i, j])
    mid = float(interp_grid(t, [g0, g1], [torch.tensor(1.5, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)]))
    assert mid == pytest.approx(0.25 * (t[0, 1] + t[0, 2] + t[1, 1] + t[1, 2]).item())


def test_predictor_latency_equals_predictor_at_integer_sizes(digits_space: SearchSpace) -> None:
    from hwloop.search.report import layer_specs_with_bits

    pred = _asic_predictor(digits_space)
    lat = PredictorLatency(digits_space, pred, aggregate="sum")
    assert {s.spec.op for s in lat.passive} == {"activation", "pooling"}
    rng = np.random.default_rng(3)
    for _ in range(5):   # the value is the predictor summed over every op of the real extracted model
        net, plan = digits_space.compress(digits_space.sample(rng))
        specs = [s for s in layer_specs_with_bits(net, digits_space.example, plan) if s.op != "other"]
        assert len(specs) == len(digits_space.slots) + len(lat.passive)
        assert lat.plan_latency(plan) == pytest.approx(float(np.sum(pred.predict(specs))), rel=1e-5)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO / "measurements").glob("*/predictor.json")))
def test_every_shipped_predictor_loads_into_the_search(folder: str) -> None:
    """Each measurements/*/predictor.json drives the search's latency model, whatever its aggregation."""
    from hwloop.predict import load_predictor
    from hwloop.search.report import predict_compressed

    path = REPO / "measurements" / folder / "predictor.json"
    pred = load_predictor(path)
    bits = pred.mode == "asic"
    space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(bits=bits, a_bits=8 if bits else None))
    lines: list[str] = []
    lat = select_latency_model(space, predictor_path=str(path), log=lines.append)
    assert isinstance(lat, PredictorLatency) and str(path) in lines[-1]
    additive = pred.kind == "graph_cost" if hasattr(pred, "kind") else type(pred).__name__ == "GraphCostPredictor"
    # the H100 whole-net cost model is additive by construction (per-op costs fitted to sum to whole nets)
    assert lat.aggregate == ("sum" if bits or additive else "calibrated")
    for cfg in (space.default_config(), space.sample(np.random.default_rng(0))):
        net, plan = space.compress(cfg)   # the search's value equals the predictor's on the real model
        want = predict_compressed(pred, net, space.example, plan, aggregate=lat.aggregate)
        assert lat.plan_latency(plan) == pytest.approx(want, rel=1e-4)
    sizes = {k: torch.tensor(v * 0.7, requires_grad=True) for k, v in space.full_sizes().items()}
    lat(sizes).backward()
    grads = [float(v.grad) for k, v in sizes.items() if k.startswith("ch:")]
    assert all(math.isfinite(g) and g >= 0 for g in grads) and sum(grads) > 0


def test_calibrated_aggregation_is_the_predictors_own(digits_space: SearchSpace) -> None:
    """aggregate='calibrated' uses the aggregation object as is (any coefficients) and differentiates it."""
    from hwloop.predict.surrogate import SurrogatePredictor
    from hwloop.search.report import predict_compressed

    space = SearchSpace.from_ref(ModelRef("small_cnn"))
    pred = _asic_predictor(space, kind="surrogate")
    models = [space.compress(space.sample(np.random.default_rng(i))) for i in range(4)]
    specs = [[s for s in layer_specs(net, space) if s.op != "other"] for net, _ in models]
    truth = np.array([2.0 * float(np.sum(pred.predict(s))) + 0.01 for s in specs])   # not a plain sum
    pred.fit_aggregator(specs, truth)
    lat = PredictorLatency(space, pred, aggregate="calibrated")
    for (net, plan), sp in zip(models, specs):
        assert lat.plan_latency(plan) == pytest.approx(pred.predict_workload(sp), rel=1e-5)
        assert lat.plan_latency(plan) == pytest.approx(predict_compressed(pred, net, space.example, plan), rel=1e-5)
    exact = PredictorLatency(space, pred, aggregate="calibrated", grad_points=None)   # the fine grid's gradient
    base = {k: v * 0.5 + 0.25 for k, v in space.full_sizes().items()}   # inside grid cells: locally linear
    sizes = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in base.items()}
    exact(sizes).backward()
    for k, v in sizes.items():   # autograd through the aggregation = central difference of its value
        up, down = dict(base), dict(base)
        up[k] += 0.1
        down[k] -= 0.1
        fd = (float(exact(up)) - float(exact(down))) / 0.2
        assert float(v.grad) == pytest.approx(fd, rel=2e-2, abs=1e-9), k
        assert fd > 0
    with pytest.raises(SearchError, match="aggregate"):
        PredictorLatency(space, SurrogatePredictor(), aggregate="calibrated")
    with pytest.raises(SearchError, match="aggregate"):
        PredictorLatency(space, pred, aggregate="mean")


def layer_specs(net: torch.nn.Module, space: SearchSpace) -> list:
    from hwloop.search.report import layer_specs_with_bits

    return layer_specs_with_bits(net, space.example, None)


def test_search_records_its_compute_in_a_ledger() -> None:
    from hwloop.search.accounting import ComputeLedger

    task = make_task("digits", "small_cnn", batch_size=64, train_limit=300)
    space = SearchSpace.from_ref(task.ref)
    led = ComputeLedger()
    differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn,
                          SearchConfig(search_epochs=2, finetune_epochs=1, target=0.5, max_steps=3), ledger=led, trial=7)
    phases = led.by_phase()
    assert list(phases) == ["search", "eval", "extract", "finetune"]
    assert phases["search"].train_images == 2 * 3 * 64 and phases["search"].epochs == pytest.approx(2.0)
    assert phases["finetune"].train_images == 3 * 64 and phases["finetune"].epochs == 1.0
    assert len([r for r in led.records if r.phase == "eval"]) == 2 + 2   # per search epoch, extracted, fine-tuned
    assert all(r.trial == 7 and r.wall_s > 0 for r in led.records)
    assert led.total().device_measurements == 0 and led.total().device_s == 0.0


def test_differentiable_latency_gradient_has_the_right_sign(digits_space: SearchSpace) -> None:
    pred = _asic_predictor(digits_space, kind="surrogate")
    for lat in (PredictorLatency(digits_space, pred), SurrogateLatency(digits_space, bits_aware=True)):
        gm = GatedModel(digits_space)
        with torch.no_grad():
            for g in gm.channel_gates.values():
                g.a.copy_(torch.rand(g.max_size, generator=torch.Generator().manual_seed(0)) + 0.1)
            for b in gm.bit_gates.values():
                b.g.fill_(0.8)
        sizes = gm.sizes()
        for v in sizes.values():
            v.retain_grad()
        lat(sizes).backward()
        for k, v in sizes.items():
            assert v.grad is not None and float(v.grad) > 0, (lat.kind, k)   # larger size -> slower


def test_flops_surrogate_ignores_bits(digits_space: SearchSpace) -> None:
    flops = SurrogateLatency(digits_space, bits_aware=False)
    bits = SurrogateLatency(digits_space, bits_aware=True)
    full = digits_space.full_sizes()
    low = {k: (2.0 if k.startswith("bits:") else v) for k, v in full.items()}
    assert float(flops(low)) == float(flops(full))
    assert float(bits(low)) < float(bits(full))


def test_select_latency_model_says_which(digits_space: SearchSpace, tmp_path: Path) -> None:
    lines: list[str] = []
    m = select_latency_model(digits_space, log=lines.append)
    assert isinstance(m, SurrogateLatency) and "surrogate" in lines[-1] and "no predictor" in lines[-1]
    m = select_latency_model(digits_space, store=f"sqlite:///{tmp_path / 'empty.db'}", device="asic-tpu32",
                             log=lines.append)
    assert isinstance(m, SurrogateLatency) and "asic-tpu32" in lines[-1]
    pred = _asic_predictor(digits_space, kind="surrogate")
    m = select_latency_model(digits_space, predictor=pred, log=lines.append)
    assert isinstance(m, PredictorLatency) and "learned predictor" in lines[-1]
    with pytest.raises(SearchError, match="needs a predictor"):
        select_latency_model(digits_space, objective="learned")


@pytest.mark.parametrize("mode", ["target", "fixed_lambda"])
def test_search_meets_latency_target_within_budget(mode: str) -> None:
    task = make_task("digits", "small_cnn", batch_size=64)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=8))
    lat = PredictorLatency(space, _asic_predictor(space))
    # on this simulated ASIC the floor of small_cnn (every group at 1 channel, 2 bits; activations and pooling
    # included) is ~59% of the original
    if mode == "target":   # large initial lambda, adapted by dual ascent; the budget is guaranteed at extraction
        target, cfg = 0.8, SearchConfig(search_epochs=3, finetune_epochs=1, lam=20.0, target=0.8)
    else:                  # a fixed large lambda alone pushes latency well down within the same budget
        target, cfg = 0.85, SearchConfig(search_epochs=3, finetune_epochs=1, lam=20.0)
    res = differentiable_search(space, lat, task.train, task.eval_fn, cfg)
    assert res.predicted <= target * res.original
    assert res.predicted == pytest.approx(lat.plan_latency(res.plan))
    assert sum(p.numel() for p in res.model.parameters()) < sum(p.numel() for p in space.model.parameters())
    assert res.accuracy is not None and res.accuracy > 50.0   # far above chance (10%) after 4 epochs from scratch
    assert len(res.history) == 3 and res.seconds["search"] > 0
    assert res.plan.w_bits and max(res.plan.w_bits.values()) < 8   # low bits are cheaper on this ASIC


def test_search_config_and_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="target"):
        SearchConfig(target=1.5)
    with pytest.raises(SearchError, match="keep_rule"):
        SearchConfig(keep_rule="x")
    with pytest.raises(SearchError, match="unknown key"):
        SearchSpec.from_dict({"name": "x", "schedule": {"epochs": 3}})
    with pytest.raises(SearchError, match="objective"):
        SearchSpec.from_dict({"name": "x", "predictor": {"objective": "magic"}})
    with pytest.raises(SearchError, match="aggregate"):
        SearchSpec.from_dict({"name": "x", "predictor": {"aggregate": "mean"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", encoding="utf-8")
    with pytest.raises(SearchError, match="not valid TOML"):
        load_spec(bad)
    ours = ["digits_small_cnn", "digits_small_cnn_asic"] + [f"cifar10_{m}_asic" for m in
                                                            ("resnet20", "resnet56", "vgg16", "mobilenetv2")]
    for name in ours:   # search/ also holds other kinds of specs (Optuna comparisons)
        assert load_spec(REPO / "search" / f"{name}.toml").name


def test_cli_search_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('name = "cli"\n[data]\ntask = "digits"\ntrain_limit = 256\n'
                    '[schedule]\nsearch_epochs = 1\nfinetune_epochs = 1\n[device]\nname = "asic-tpu32"\n'
                    '[space]\nbits = true\na_bits = 8\n[budget]\ntarget = 0.5\ntarget_warmup = 0.5\n'
                    'latency_penalty = "hinge"\nprune_after_warmup = true\n', encoding="utf-8")
    out = tmp_path / "run"
    assert main(["search", "run", str(spec), "--out", str(out), "--no-progress"]) == 0
    for f in ("plan.json", "weights.safetensors", "metrics.json", "search.log", "latency_vs_accuracy.png",
              "layer_sizes.png"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["measured_ms"] > 0 and m["original_measured_ms"] > 0 and m["measure_method"] == "layers"
    assert m["params"] < m["original_params"]
    assert "latency model: l1/l2 surrogate" in (out / "search.log").read_text()
    assert "hinge penalty" in (out / "search.log").read_text() and "widths fixed" in (out / "search.log").read_text()
    assert main(["search", "show", str(out)]) == 0


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "run", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    spec = tmp_path / "s.toml"
    spec.write_text('name = "x"\n[budget]\ntarget = 2.0\n', encoding="utf-8")
    assert main(["search", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "target" in err and "Traceback" not in err
    spec.write_text('name = "x"\n[budget]\ntarget_warmup = 1.5\n', encoding="utf-8")
    assert main(["search", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "[budget] target_warmup=1.5 must be a fraction of the search steps in [0, 1]" in err and "Traceback" not in err
    assert main(["search", "space", "nope_model"]) == 2


class _UserNet(torch.nn.Module):
    """A user model with a residual add and no ModelRef: the Python API must handle it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 12, 3, padding=1)
        self.a = torch.nn.Conv2d(12, 12, 3, padding=1)
        self.b = torch.nn.Conv2d(12, 12, 3, padding=1)
        self.head = torch.nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.b(torch.relu(self.a(h))))
        return self.head(h.mean((2, 3)))


def test_python_api_on_a_user_model() -> None:
    task = make_task("digits", "small_cnn", batch_size=64, train_limit=512)
    torch.manual_seed(0)
    net = _UserNet()
    space = SearchSpace(net, torch.randn(1, 1, 8, 8), SpaceOptions(lowrank=("a",)))
    assert {d.name for d in space.dimensions()} == {"width:stem", "rank:a", "width:a"}
    assert set(space.graph.group("stem").out_layers) >= {"stem", "b"}   # tied through the residual add
    res = differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn,
                                SearchConfig(search_epochs=2, finetune_epochs=1, target=0.5))
    assert res.plan.base is None and res.predicted <= 0.5 * res.original
    out = res.model(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10)


def test_recalibrate_batchnorm_matches_the_data_statistics() -> None:
    from hwloop.search.differentiable import recalibrate_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.1))
    data = [(torch.randn(16, 2, 6, 6) * 2 + 3, torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    net.eval()
    assert recalibrate_batchnorm(net, data, 0) == 0 and float(net[1].running_mean.abs().sum()) == 0.0
    assert recalibrate_batchnorm(net, data, 3) == 3
    with torch.no_grad():
        conv = torch.cat([net[0](x) for x, _ in data[:3]])
    assert torch.allclose(net[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)   # cumulative average of 3 batches
    assert net[1].momentum == 0.1 and not net.training                              # settings restored


def test_batchnorm_recalibration_recovers_accuracy_after_extraction() -> None:
    # the same search (same seed) with and without re-estimating batch-norm statistics after extraction
    task = make_task("digits", "small_cnn", batch_size=64)
    model = task.ref.build().train()
    torch.manual_seed(0)
    from hwloop.search.train import train_epochs

    train_epochs(model, task.train, 2, 0.05)
    acc: dict[int, float] = {}
    for batches in (0, 20):
        space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=8), model=model)
        cfg = SearchConfig(search_epochs=2, finetune_epochs=0, target=0.5, seed=0, recalibrate_batches=batches,
                           fill_budget=False)   # isolate the recalibration
        res = differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn, cfg)
        assert res.accuracy_extracted is not None
        acc[batches] = res.accuracy_extracted
    assert acc[20] > acc[0] + 5.0, acc
    with pytest.raises(SearchError, match="recalibrate_batches"):
        SearchConfig(recalibrate_batches=-1)


def test_tile_nodes_put_one_staircase_step_in_each_gradient_segment() -> None:
    from hwloop.search.latency import tile_nodes

    g = torch.arange(1.0, 65.0, dtype=torch.float64)
    assert g[tile_nodes(g, 32)].tolist() == [1.0, 32.0, 64.0]
    assert g[tile_nodes(g, 16)].tolist() == [1.0, 16.0, 32.0, 48.0, 64.0]
    coarse = torch.tensor([1.0, 17.0, 33.0, 49.0, 65.0, 81.0, 100.0], dtype=torch.float64)   # an evenly spaced grid
    assert coarse[tile_nodes(coarse, 32)].tolist() == [1.0, 33.0, 65.0, 100.0]


def test_tile_gradient_sees_the_step_a_wide_group_can_save() -> None:
    # on asic-tpu32 small_cnn's 64-channel group costs one extra 32-wide tile above 32 channels: the
    # tile-node gradient at 64 must be the secant over that step (value unchanged); evenly spaced nodes
    # (1, 33, 64) gave it almost no slope
    space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(tile=32))
    pred = _asic_predictor(space)
    full = space.full_sizes()
    key = max((k for k in full if k.startswith("ch:")), key=lambda k: full[k])
    assert full[key] == 64
    grads, values = {}, {}
    for nodes in ("even", "tile"):
        lat = PredictorLatency(space, pred, grad_nodes=nodes)
        sizes = {k: torch.tensor(float(v), requires_grad=True) for k, v in full.items()}
        v = lat(sizes)
        v.backward()
        grads[nodes], values[nodes] = float(sizes[key].grad), float(v.detach())
        at32 = float(lat({**full, key: 32.0}))
    assert values["tile"] == values["even"]
    secant = (values["tile"] - at32) / 32
    assert grads["tile"] == pytest.approx(secant, rel=0.05) and grads["tile"] > 2 * grads["even"]
    with pytest.raises(SearchError, match="grad_nodes"):
        PredictorLatency(space, pred, grad_nodes="fine")


def test_search_fine_tunes_and_scores_with_quantized_activations() -> None:
    from hwloop.compress.actquant import quantized_activations

    task = make_task("digits", "small_cnn", batch_size=64, train_limit=256)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=4))
    res = differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn,
                                SearchConfig(search_epochs=1, finetune_epochs=1, target=0.5))
    amax = res.plan.meta["a_amax"]
    assert set(amax) == set(res.plan.w_bits) and all(v > 0 for v in amax.values())
    with quantized_activations.from_plan(res.model, res.plan):
        assert task.eval_fn(res.model) == res.accuracy       # the reported accuracy is the quantized one
    off = differentiable_search(space, SurrogateLatency(space), task.train, None,
                                SearchConfig(search_epochs=1, finetune_epochs=0, target=0.5,
                                             quantize_activations=False))
    assert "a_amax" not in off.plan.meta


def test_fill_budget_uses_the_latency_an_overshooting_search_left() -> None:
    # a large fixed initial lambda and fast gates overshoot the 0.8 target; growing widths back at extraction
    # must bring the hard sizes up to (but not above) the budget
    task = make_task("digits", "small_cnn", batch_size=64, train_limit=512)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(tile=32))
    lat = PredictorLatency(space, _asic_predictor(space))
    ratios = {}
    for fill in (False, True):
        cfg = SearchConfig(search_epochs=2, finetune_epochs=0, lam=50.0, gate_lr=0.2, target=0.8, tile=32,
                           fill_budget=fill)
        res = differentiable_search(space, lat, task.train, None, cfg)
        ratios[fill] = res.predicted / res.original
    assert ratios[False] < 0.77, ratios                          # the overshoot this protects against
    assert ratios[False] < ratios[True] <= 0.8 + 1e-9, ratios
    assert ratios[True] - ratios[False] > 0.02, ratios           # fill_budget gives back a real part of it


def test_effective_target_schedule_values() -> None:
    from hwloop.search.differentiable import effective_target

    # linear: 1 -> 0.5 over the first half of 20 steps, then flat
    lin = [effective_target(0.5, s, 20, 0.5, "linear") for s in range(20)]
    assert lin[0] == 1.0 and lin[5] == pytest.approx(0.75) and lin[10:] == [0.5] * 10
    # geometric: equal ratios between steps (0.25 ** (s / 4) over 4 of 8 steps)
    geo = [effective_target(0.25, s, 8, 0.5, "geometric") for s in range(8)]
    assert geo[:5] == pytest.approx([1.0, 0.25 ** 0.25, 0.5, 0.25 ** 0.75, 0.25])
    # cubic (gradual pruning): most of the cut early, flat when it reaches the target
    cub = [effective_target(0.4, s, 100, 0.5, "cubic") for s in range(100)]
    assert cub[0] == 1.0 and cub[25] == pytest.approx(0.4 + 0.6 * 0.5 ** 3) and cub[50] == 0.4
    assert cub[1] - cub[2] > cub[40] - cub[41] > 0
    for seq in (lin, geo, cub):
        assert all(a >= b for a, b in itertools.pairwise(seq))                # never loosens
    assert effective_target(0.6, 0, 10, 0.0) == 0.6                            # no warm-up: the target at once
    assert SearchConfig(target=0.5, target_warmup=1.0).target_at(9, 10) > 0.5 and SearchConfig().target_at(0, 9) is None
    with pytest.raises(SearchError, match=r"target_warmup=1.5 must be a fraction of the search steps in \[0, 1\]"):
        SearchConfig(target=0.5, target_warmup=1.5)
    with pytest.raises(SearchError, match="target_warmup=0.5 needs a target"):
        SearchConfig(target_warmup=0.5)
    with pytest.raises(SearchError, match="target_curve='exp' is unknown; allowed: linear, geometric, cubic"):
        SearchConfig(target=0.5, target_curve="exp")
    for kp in (-1.0, math.inf, True):
        with pytest.raises(SearchError, match="dual_kp=.* must be a finite number >= 0"):
            SearchConfig(target=0.5, dual_kp=kp)
    spec = SearchSpec.from_dict({"name": "x", "budget": {"target": 0.6, "target_warmup": 0.4, "dual_kp": 1.0,
                                                          "prune_after_warmup": True}})
    assert (spec.budget.target_warmup, spec.budget.target_curve, spec.budget.dual_kp) == (0.4, "cubic", 1.0)
    assert spec.budget.prune_after_warmup
    with pytest.raises(SearchError, match=r"\[budget\] prune_after_warmup=True needs target_warmup > 0"):
        SearchSpec.from_dict({"name": "x", "budget": {"prune_after_warmup": True}})
    with pytest.raises(SearchError, match=r"\[budget\] target_curve='step' is unknown"):
        SearchSpec.from_dict({"name": "x", "budget": {"target_curve": "step"}})


def test_warmup_and_hinge_land_on_the_target_where_dual_ascent_overshoots() -> None:
    # the CIFAR failure on digits: from a pre-trained model, plain dual ascent (lambda = 1, linear penalty) keeps
    # pulling the latency down after it crossed the target and ends far below it; annealing the target and a hinge
    # penalty (no pull below the target in force) end on it. 90 steps per epoch, 3 epochs, seconds on one thread.
    from hwloop.search.train import train_epochs

    task = make_task("digits", "small_cnn", batch_size=16)
    torch.manual_seed(0)
    model = task.ref.build().train()
    train_epochs(model, task.train, 2, 0.05)
    opts = SpaceOptions(bits=True, a_bits=8, tile=32, bit_levels=(4, 8))
    space = SearchSpace.from_ref(task.ref, opts, model=model)
    lat = PredictorLatency(space, _asic_predictor(space))
    # 0.6: below what 4-bit weights alone give on asic-tpu32 (0.76 with cost model 2), so widths must shrink too
    target, ends, logs = 0.6, {}, []
    new = {"target_warmup": 0.5, "latency_penalty": "hinge"}
    for name, kw in {"old": {}, "new": new, "prune": {**new, "prune_after_warmup": True}}.items():
        cfg = SearchConfig(search_epochs=3, finetune_epochs=0, target=target, tile=32, seed=0, **kw)
        res = differentiable_search(SearchSpace.from_ref(task.ref, opts, model=model), lat, task.train, None, cfg,
                                    log=logs.append)
        assert res.hard_search is not None and res.predicted <= target * res.original * (1 + 1e-9)
        ends[name] = (res.history[0]["ratio_end"], res.history[-1]["ratio_end"], res.hard_search / res.original)
    assert ends["old"][1] < target - 0.05, ends                       # the overshoot (0.48 when recorded)
    # the search itself ends near the target, and so do the hard sizes it extracts: 0.559 for both since the
    # ops after a 4-bit conv run on 4-bit activations on the ASIC (issue 14; 0.532 at target 0.55, 0.632 at
    # 0.65), against 0.475 for dual ascent
    for name in ("new", "prune"):
        assert abs(ends[name][1] - target) < 0.045, ends
        assert abs(ends[name][2] - target) < 0.045, ends
        assert abs(ends[name][1] - target) < 0.5 * abs(ends["old"][1] - target), ends
        assert ends[name][0] > ends["old"][0] + 0.02, ends            # after epoch 1 the warm-up is still above
    fixed = [m for m in logs if "widths fixed" in m]
    assert len(fixed) == 1 and "warm-up over at step 135" in fixed[0], fixed   # ceil(0.5 * 3 * 90)
    with pytest.raises(SearchError, match="prune_after_warmup=True needs target_warmup > 0"):
        SearchConfig(target=0.5, prune_after_warmup=True)


def test_proportional_gain_scales_lambda_by_the_last_error() -> None:
    # one step from the same start: the integral part is the same, the proportional part multiplies it by
    # exp(dual_kp * (ratio / target - 1))
    task = make_task("digits", "small_cnn", batch_size=64, train_limit=128)
    space = SearchSpace.from_ref(task.ref)
    lams, ratios = {}, {}
    for kp in (0.0, 3.0):
        cfg = SearchConfig(search_epochs=1, finetune_epochs=0, target=0.5, max_steps=1, dual_kp=kp, recalibrate_batches=0)
        h = differentiable_search(space, SurrogateLatency(space), task.train, None, cfg).history[-1]
        lams[kp], ratios[kp] = h["lambda"], h["ratio_end"]
    assert ratios[0.0] == ratios[3.0] > 0.5
    assert lams[3.0] / lams[0.0] == pytest.approx(math.exp(3.0 * (ratios[0.0] / 0.5 - 1)), rel=1e-9)
    assert lams[0.0] == pytest.approx(math.exp(0.1 * (ratios[0.0] / 0.5 - 1)), rel=1e-9)   # dual ascent from lam=1
    with pytest.raises(SearchError, match="latency_penalty='square' is unknown; allowed: linear, hinge"):
        SearchConfig(target=0.5, latency_penalty="square")


def test_rewind_extracts_the_starting_weights_of_the_channels_the_gates_keep() -> None:
    from hwloop.compress.extract import get_module
    from hwloop.compress.gated import extract, rewind

    space = SearchSpace.from_ref(ModelRef("small_cnn"))
    gm = GatedModel(space, init_spread=0.0)
    key, gate = next(iter(gm.channel_gates.items()))
    width = gate.max_size // 2
    with torch.no_grad():
        for p in gm.weight_parameters():   # the "search-trained" weights differ from the starting ones
            p.mul_(0.5)
        gate.a.copy_(torch.rand(gate.max_size, generator=torch.Generator().manual_seed(1)) + 0.1)
    mask = gate.keep_mask(width)
    start = get_module(space.model, key).weight.detach()
    net, plan = extract(rewind(gm, widths={key: width}), widths={key: width})
    assert plan.widths[key] == width
    assert torch.equal(get_module(net, key).weight, start[mask])          # the starting weights, those channels
    old, _ = extract(gm, widths={key: width})
    assert not torch.allclose(get_module(old, key).weight, start[mask])   # extract alone keeps the trained ones


def test_finetune_from_start_stops_at_the_warmup_end_and_keeps_the_images() -> None:
    from hwloop.search.accounting import ComputeLedger

    out = {}
    for how in ("search", "start"):
        task = make_task("digits", "small_cnn", batch_size=64, train_limit=512)   # 8 steps per epoch, same order
        space = SearchSpace.from_ref(task.ref)
        led = ComputeLedger()
        cfg = SearchConfig(search_epochs=2, finetune_epochs=1, target=0.6, target_warmup=0.5, prune_after_warmup=True,
                           latency_penalty="hinge", recalibrate_batches=0, finetune_from=how)
        res = differentiable_search(space, SurrogateLatency(space), task.train, None, cfg, ledger=led)
        out[how] = (res, led.total(phase="search").train_images, led.total(phase="finetune").train_images)
    (r0, s0, f0), (r1, s1, f1) = out["search"], out["start"]
    assert (s0, f0) == (2 * 512, 512)
    assert (s1, f1) == (512, 2 * 512)              # the search stopped at the warm-up end (step 8 of 16) ...
    assert s0 + f0 == s1 + f1                      # ... and the fine-tune got the steps it did not use
    assert r1.plan.widths == r0.plan.widths and r1.plan.widths   # same widths: the search up to there is the same
    assert r1.predicted / r1.original <= 0.6 + 1e-9
    with pytest.raises(SearchError, match="finetune_from"):
        SearchConfig(finetune_from="checkpoint")
