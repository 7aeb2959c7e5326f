"""HALOC (hwloop.methods.haloc): Tucker-2 branches, the mixed layer, the latency term, candidates from the staircase."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hwloop.compress.extract import load_compressed, save_compressed
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.haloc.costs import ExpectedLatency, probe_steps, rank_ladder
from hwloop.methods.haloc.mixed import (
    DENSE,
    MixedLowRank,
    eligible_layers,
    extract,
    mixed_layers,
    rank_level,
    wrap_model,
)
from hwloop.methods.haloc.search import arch_steps, step_down_to_budget
from hwloop.models import ModelRef
from hwloop.search.train import make_task, train_epochs
from hwloop.workload import extract_layers

torch.set_num_threads(1)


class SynthTable:
    """A cost table with ``T(rank r) = f(r)``, dense = ``dense``, whole model = the sum."""

    unit = "ms"
    source = "synthetic"

    def __init__(self, f=float, dense: float = 1000.0) -> None:
        self.f, self.dense = f, dense

    def cost(self, layer, level) -> float:
        return self.dense if tuple(level) == DENSE else float(self.f(int(level[1])))

    def model_cost(self, choice, base: float = 0.0) -> float:
        return base + sum(self.cost(n, lv) for n, lv in choice.items())



@pytest.fixture(scope="module")
def digits():
    task = make_task("digits", "small_cnn", train_limit=256, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    return task, model.eval()


@pytest.mark.parametrize("cin, cout, stride", [(16, 16, 1), (8, 8, 2)])
def test_tucker2_at_full_rank_reproduces_the_conv(cin: int, cout: int, stride: int) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=True)
    mixed = MixedLowRank(conv, [rank_level(cin)])
    x = torch.randn(2, cin, 9, 9)
    branch = mixed.branches[0]
    assert [type(m) for m in branch] == [nn.Conv2d] * 3
    assert branch[1].stride == (stride, stride) and branch[1].padding == (1, 1)
    torch.testing.assert_close(branch(x), conv(x), atol=1e-4, rtol=1e-4)
    low = MixedLowRank(conv, [rank_level(cin // 2)]).branches[0]
    assert (low(x) - conv(x)).abs().max() > 1e-3   # a truncated rank is not exact (the check can fail)


@pytest.mark.parametrize("r", [1, 5, 16])
def test_rank_r_block_has_the_analytic_macs(r: int) -> None:
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    block = MixedLowRank(conv, [rank_level(r)]).branches[0]
    h_in = w_in = 12
    h_out = w_out = 6
    specs = extract_layers(block, torch.randn(1, 16, h_in, w_in))
    macs = sum(s.macs for s in specs if s.op == "conv2d")
    assert macs == h_in * w_in * 16 * r + h_out * w_out * (r * r * 9 + r * 32)


def test_mixed_layer_with_one_hot_probabilities_equals_that_branch() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    mixed = MixedLowRank(conv, [DENSE, rank_level(2), rank_level(4), rank_level(8)])
    with torch.no_grad():
        mixed.alpha.copy_(torch.randn(4))
    x = torch.randn(3, 8, 7, 7)
    outs = []
    for k in range(4):
        mixed.fixed = torch.nn.functional.one_hot(torch.tensor(k), 4).float()
        y = mixed(x)
        assert torch.equal(y, mixed.branches[k](x))
        outs.append(y)
    assert not torch.allclose(outs[1], outs[3])
    mixed.fixed = None
    p = mixed.probs()
    torch.testing.assert_close(mixed(x), sum(p[k] * outs[k] for k in range(4)))


def test_extracted_model_equals_the_one_hot_search_model_and_its_plan(digits, tmp_path: Path) -> None:
    task, model = digits
    names = eligible_layers(model, ["classifier"])
    assert names == ["features.3", "features.7"]
    wrapped = wrap_model(model, {"features.3": [DENSE, rank_level(4), rank_level(8)],
                                 "features.7": [DENSE, rank_level(8), rank_level(16)]}).eval()
    choice = {"features.3": rank_level(8), "features.7": DENSE}
    for n, m in mixed_layers(wrapped).items():
        m.fixed = torch.tensor([1.0 if lv == choice[n] else 0.0 for lv in m.levels])
    net, actions = extract(wrapped, choice)
    x = next(iter(task.train))[0]
    with torch.no_grad():
        assert torch.equal(net.eval()(x), wrapped(x))
    plan = CompressionPlan(base=task.ref.to_dict(), actions=actions)
    assert [a.to_dict()["ranks"] for a in plan.actions] == [[8, 8]]
    rebuilt, _ = load_compressed(save_compressed(net, plan, tmp_path / "c"))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.parameters())


def test_raising_lambda_never_raises_ranks_or_expected_latency(digits) -> None:
    task, model = digits
    levels = {"features.3": [rank_level(r) for r in (4, 8, 12, 16)],
              "features.7": [rank_level(r) for r in (8, 16, 24, 32)]}
    batch = next(iter(task.train))
    prev_ranks, prev_e = None, math.inf
    seen = []
    for lam in (0.0, 0.3, 1.0, 3.0, 10.0, 100.0):
        torch.manual_seed(0)
        wrapped = wrap_model(model, levels)
        for p in wrapped.parameters():
            p.requires_grad_(False)
        layers = mixed_layers(wrapped)
        for m in layers.values():
            m.alpha.requires_grad_(True)
        before = {k: v.clone() for k, v in wrapped.state_dict().items() if "alpha" not in k and "running" not in k
                  and "num_batches" not in k}
        exp = ExpectedLatency(SynthTable(), layers)
        e = arch_steps(wrapped, exp, batch, lam=lam, steps=30, lr=0.05)
        for k, v in wrapped.state_dict().items():
            if k in before:
                assert torch.equal(v, before[k]), k     # frozen weights
        ranks = {n: int(m.levels[m.argmax()][1]) for n, m in layers.items()}
        seen.append((lam, ranks, e))
        if prev_ranks is not None:
            assert all(ranks[n] <= prev_ranks[n] for n in ranks), seen
            assert e <= prev_e + 1e-9, seen
        prev_ranks, prev_e = ranks, e
    assert seen[-1][2] < seen[0][2] and seen[-1][1] != seen[0][1], seen   # λ does act


def test_step_down_repair_reaches_the_budget(digits) -> None:
    _, model = digits
    wrapped = wrap_model(model, {"features.3": [DENSE, rank_level(8), rank_level(16)],
                                 "features.7": [DENSE, rank_level(16), rank_level(32)]})
    layers = mixed_layers(wrapped)
    exp = ExpectedLatency(SynthTable(), layers)
    start = {n: DENSE for n in layers}
    out = step_down_to_budget(layers, exp, start, budget=40.0)
    assert exp.choice_cost(out) <= 40.0 and exp.choice_cost(start) == 2000.0


def test_rank_ladder_and_candidates_are_multiples_of_the_table_step(digits) -> None:
    _, model = digits
    assert rank_ladder(64, 8, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert rank_ladder(64, 8, 4) == [16, 32, 48, 64] and rank_ladder(7, 8, 4) == []
    pytest.importorskip("hwloop.search.costtable")
    from hwloop.search.costtable import staircase_step

    example = ModelRef("small_cnn").example_input()
    specs = extract_layers(model, example)
    calls = []

    def build(levels, passive):   # a device whose latency steps every 8 ranks
        calls.append(levels)
        return SynthTable(f=lambda r: float(math.ceil(r / 8)))

    steps = probe_steps(model, specs, ["features.3", "features.7"], build)
    ranks = list(range(1, 33))
    assert steps == {"features.3": staircase_step(ranks[:16], [math.ceil(r / 8) for r in ranks[:16]]),
                     "features.7": staircase_step(ranks, [math.ceil(r / 8) for r in ranks])}
    for s in steps.values():
        assert s > 1 and all(r % s == 0 for r in rank_ladder(32, s, 8))
    assert len(calls) == 1 and sorted(calls[0]) == ["features.3", "features.7"]


def test_the_method_takes_candidates_at_multiples_of_the_device_step(digits) -> None:
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace

    task, model = digits
    space = SearchSpace.from_ref(task.ref, model=model)
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                        latency=SurrogateLatency(space), target=None, device="asic-tpu32")
    res = make_method("haloc", {"search_epochs": 1, "finetune_epochs": 0, "max_steps": 2, "max_candidates": 4,
                                "recalibrate_batches": 1}).run(ctx)
    c = res.candidates[0]
    steps, cands = c.extra["steps"], c.extra["candidates"]
    assert set(steps) == {"features.3", "features.7"} and all(s >= 1 for s in steps.values())
    for n, levels in cands.items():
        ranks = [lv[1] for lv in levels if lv[0] == "rank"]
        assert ranks and all(r % steps[n] == 0 for r in ranks) and len(ranks) <= 4, (n, steps[n], ranks)
    assert c.status == "no-target" and c.search_end is not None


def test_config_errors_are_one_line() -> None:
    for bad, needle in [({"mu": -1.0}, "mu=-1.0 must be"), ({"sampling": "hard"}, "sampling='hard' is unknown"),
                        ({"max_candidates": 0}, "max_candidates=0 must be >= 1"),
                        ({"cost_source": "guess"}, "cost_source='guess' is unknown")]:
        with pytest.raises(SearchError, match=needle) as e:
            make_method("haloc", bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("[method] haloc: ")


def test_the_example_spec_reads_as_haloc() -> None:
    from hwloop.search.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "search/cifar10_resnet20_haloc.toml")
    m = spec.method.build()
    assert m.name == "haloc" and m.config.sampling == "softmax" and m.config.search_epochs == 8
    assert spec.budget.target == 0.6 and spec.device.name == "asic-tpu32"


# --- issue 18 follow-up: the search ended at the cheapest candidate of every layer whatever the target -----------

LADDER = {"features.3": [DENSE, *[rank_level(r) for r in (2, 4, 6, 8, 10, 12, 14, 16)]],
          "features.7": [DENSE, *[rank_level(r) for r in (4, 8, 12, 16, 20, 24, 28, 32)]]}


class StairTable:
    """asic-tpu32's shape: a Tucker-2 branch costs ``0.15 + 1.2·r/r_max`` of the dense layer (full rank > dense),
    plus a passive rest of 0.5. Cheapest ratio 0.44."""

    unit, source = "ms", "synthetic"
    def cost(self, layer, level) -> float:
        return 1.0 if tuple(level) == DENSE else 0.15 + 1.2 * level[1] / {"features.3": 16, "features.7": 32}[layer]

    def model_cost(self, choice, base: float = 0.0) -> float:
        return 0.5 + sum(self.cost(n, lv) for n, lv in choice.items())


def test_the_hinge_releases_once_the_argmax_is_at_or_below_the_target(digits) -> None:
    from hwloop.methods.haloc.search import _latency_term

    _, model = digits
    layers = mixed_layers(wrap_model(model, LADDER))
    exp = ExpectedLatency(StairTable(), layers)
    for m in layers.values():   # argmax at the cheapest rank (ratio 0.44), much mass on dense: E[LAT] above 0.75
        with torch.no_grad():
            m.alpha.copy_(torch.tensor([1.0, 1.2] + [0.0] * 7))
    term, e, hard = _latency_term(exp, 10.0, 0.75)
    assert e > 0.75 and hard == pytest.approx(0.44)
    assert float(term.detach()) == 0.0
    grads = torch.autograd.grad(term, [m.alpha for m in layers.values()], allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads), grads   # before the fix: E > target pushed
    for m in layers.values():   # argmax dense (ratio 1.0): the term pushes, towards the cheaper candidates
        with torch.no_grad():
            m.alpha.copy_(torch.tensor([1.0] + [0.0] * 8))
    term, e, hard = _latency_term(exp, 10.0, 0.75)
    assert hard == pytest.approx(1.0) and float(term.detach()) > 0
    g = torch.autograd.grad(term, layers["features.3"].alpha)[0]
    assert g[0] > 0 and g[1] < 0   # dense (cost 1.0 > E) down, rank 2 (the cheapest) up


def test_init_logits_put_the_most_faithful_branch_on_top(digits) -> None:
    from hwloop.methods.haloc.search import init_logits

    task, model = digits
    wrapped = wrap_model(model, LADDER)
    a = init_logits(wrapped, next(iter(task.train))[0], 2.0)
    for n, m in mixed_layers(wrapped).items():
        ranks = a[n][1:]
        assert all(x <= y + 1e-6 for x, y in itertools.pairwise(ranks)), (n, a[n])   # larger rank: higher logit
        assert min(a[n]) == pytest.approx(-2.0) and a[n][1] == pytest.approx(-2.0)  # the smallest rank is worst
        assert m.levels[m.argmax()] in (DENSE, m.levels[-1]) and max(a[n]) > -1e-3


def test_the_task_loss_reaches_the_logits_in_gumbel_architecture_steps(digits) -> None:
    """The one-branch straight-through gate only rescales the branch, which the next batch norm (training mode)
    undoes: the task loss's gradient on the logits is ~0. ``st_all`` (and ``st_paths``) compare branches."""
    task, model = digits
    x, y = next(iter(task.train))
    wrapped = wrap_model(model, LADDER).train()
    layers = mixed_layers(wrapped)
    norms = {}
    for key, st_all, paths in (("one", False, 0), ("all", True, 0), ("two", True, 2)):
        for m in layers.values():
            m.mode, m.st_all, m.st_paths, m.alpha.grad = "gumbel", st_all, paths, None
        torch.manual_seed(3)
        out = wrapped(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        norms[key] = float(torch.cat([m.alpha.grad for m in layers.values()]).norm())
        if key == "one":
            ref_out = out.detach()
        elif key == "all":   # the same samples: the forward value is the sampled branches' output
            torch.testing.assert_close(out.detach(), ref_out, atol=1e-5, rtol=1e-5)
        if key == "two":
            assert all(int((m.alpha.grad != 0).sum()) <= 2 for m in layers.values())
    assert norms["all"] > 100 * norms["one"] and norms["two"] > 10 * norms["one"], norms


@pytest.mark.parametrize("target", [0.9, 0.75])
def test_the_search_follows_its_target_not_the_cheapest_candidates(digits, target: float) -> None:
    from hwloop.methods.haloc.search import alternate

    task, model = digits
    torch.manual_seed(0)
    task.train.generator.manual_seed(0)   # the module's loader: its shuffle must not depend on the tests run before
    wrapped = wrap_model(model, LADDER)
    layers = mixed_layers(wrapped)
    for m in layers.values():
        m.mode = "gumbel"
    exp = ExpectedLatency(StairTable(), layers)
    cheapest = exp.choice_cost({n: m.levels[int(exp.costs[n].argmin())] for n, m in layers.items()}) / exp.original
    trace: list[dict[str, float]] = []
    alternate(wrapped, exp, task.train, epochs=10, lr=0.01, arch_lr=0.1, momentum=0.9, weight_decay=5e-4, lam=1.0,
              dual_lr=0.5, mu=1.0, target=target, trace=trace, init_scale=2.0)
    choice = exp.argmax_choice()
    if exp.choice_cost(choice) > target * exp.original:   # the method's repair
        choice = step_down_to_budget(layers, exp, choice, target * exp.original)
    final = exp.choice_cost(choice) / exp.original
    arg = [t["argmax_ratio"] for t in trace]
    assert cheapest == pytest.approx(0.44)
    assert target - 0.2 <= final <= target + 1e-9, (final, arg)
    assert sum(a == pytest.approx(cheapest) for a in arg[len(arg) // 2:]) < len(arg) // 4, arg
    for t in trace:   # the latency term is silent whenever the argmax is at or below the target
        if t["argmax_ratio"] <= target:
            assert t["grad_lat"] == 0.0, t
    assert max(t["grad_ce"] for t in trace) > 1e-3   # the task loss does reach the logits
