"""HALOC with channel pruning in the same search (hwloop.methods.haloc.joint): width gates, the joint cost, extraction."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch

from hwloop.compress.extract import load_compressed, output_layers, save_compressed
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.haloc.costs import layer_specs
from hwloop.methods.haloc.joint import WIDTH_PREFIX, build_joint, extract_joint, width_gates
from hwloop.methods.haloc.mixed import DENSE, eligible_layers, mixed_layers, rank_level, wrap_model
from hwloop.methods.haloc.search import arch_steps, init_logits, set_mode
from hwloop.models import ModelRef
from hwloop.search.costtable import build_cost_table
from hwloop.search.train import make_task, train_epochs

torch.set_num_threads(1)


def _macs(levels, passive):
    return build_cost_table(levels, device="asic-tpu32", source="surrogate", progress=False, passive=passive)


@pytest.fixture(scope="module")
def resnet_built():
    """ResNet-20 with random batch-norm statistics (so a wrongly masked channel shows), wrapped with two ranks per
    conv and width gates at 1/4, 1/2, 3/4 of every group, costed in MACs."""
    torch.manual_seed(0)
    ref = ModelRef("resnet20")
    model = ref.build().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = ref.example_input()
    names = eligible_layers(model, output_layers(model, x))
    wrapped = wrap_model(model, {n: [DENSE, rank_level(4), rank_level(8)] for n in names})
    gates, exp = build_joint(wrapped, model, x, mixed_layers(wrapped), [0.25, 0.5, 0.75], _macs)
    return ref, model, wrapped, gates, exp


@pytest.fixture
def resnet(resnet_built):
    """A fresh copy of the built fixture for each test (the tests train logits, change modes and batch-norm
    statistics; one copy keeps the model, its gates and the expected latency wired to each other)."""
    ref, *rest = resnet_built
    return (ref, *copy.deepcopy(rest))


def test_every_group_gets_a_gate_and_the_full_choice_is_the_original(resnet) -> None:
    ref, model, wrapped, gates, exp = resnet
    assert len(gates) == 12   # 3 residual streams + 9 block-internal groups; not the classifier's output
    assert all(len(g.levels) == 4 and g.levels[-1] == ("w", g.channels) for g in gates.values())
    whole = _macs({"m": {DENSE: [s for s in layer_specs(model, ref.example_input()) if s.op != "other"]}}, [])
    assert exp.original == pytest.approx(whole.model_cost({"m": DENSE}), rel=1e-12)


def test_one_hot_cost_and_output_are_the_extracted_models(resnet, tmp_path: Path) -> None:
    """For random hard choices: E[LAT] at one-hot probabilities = choice_cost = the MACs of the ops the extracted
    model runs; the extracted (physically pruned and factorised) model computes what the masked search model does;
    the plan rebuilds it."""
    ref, model, wrapped, gates, exp = resnet
    x = ref.example_input()
    xs = torch.randn(4, 3, 32, 32)
    rng = random.Random(0)
    for trial in range(2):
        choice = {n: rng.choice(u.levels) for n, u in exp.units.items()}
        for n, u in exp.units.items():
            u.fixed = torch.tensor([1.0 if lv == choice[n] else 0.0 for lv in u.levels])
        wrapped.eval()
        with torch.no_grad():
            y_search = wrapped(xs)
            e = float(exp())
        net, actions = extract_joint(wrapped, x, choice)
        specs = [s for s in layer_specs(net, x) if s.op != "other"]
        real = _macs({"m": {DENSE: specs}}, []).model_cost({"m": DENSE})
        assert e == pytest.approx(exp.choice_cost(choice), rel=1e-9) and e == pytest.approx(real, rel=1e-9)
        assert real < exp.original
        with torch.no_grad():
            y = net.eval()(xs)
        torch.testing.assert_close(y, y_search, atol=1e-4, rtol=1e-4)
        pruned = {a.group: a.kept for a in actions if a.kind == "channel_prune"}
        assert pruned == {k: choice[WIDTH_PREFIX + k][1] for k, g in gates.items()
                          if choice[WIDTH_PREFIX + k][1] < g.channels}
        assert not width_gates(net) and not any(n.endswith("alpha") for n, _ in net.named_parameters())
        rebuilt, _ = load_compressed(save_compressed(net, CompressionPlan(base=ref.to_dict(), actions=actions),
                                                     tmp_path / f"c{trial}"))
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(xs), y)
    for u in exp.units.values():
        u.fixed = None


def test_a_group_draws_one_width_per_forward_pass(resnet) -> None:
    """Every site of a residual stream (four batch norms) is masked with the same sampled width in one pass, and
    a new width may be drawn in the next."""
    ref, model, wrapped, gates, exp = resnet
    stream = gates["conv1"]   # the first stage's residual stream: the stem's bn1 and each block's bn2
    seen: list[list[frozenset[int]]] = []
    sites = ["bn1", "layers.0.bn2", "layers.1.bn2", "layers.2.bn2"]
    hooks = [wrapped.get_submodule(s).register_forward_hook(
        lambda mod, i, o: seen[-1].append(frozenset(torch.nonzero(o.abs().sum(dim=(0, 2, 3)) > 1e-6).flatten()
                                                    .tolist()))) for s in sites]
    try:
        set_mode(wrapped, mode="gumbel", st_all=True)
        wrapped.train()
        torch.manual_seed(1)
        with torch.no_grad():
            stream.alpha.zero_()
            for _ in range(6):
                seen.append([])
                wrapped(torch.randn(2, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
        set_mode(wrapped, mode="softmax", st_all=False)
        wrapped.eval()
    assert all(len(set(s)) == 1 for s in seen), seen
    assert len({s[0] for s in seen}) > 1   # widths are drawn, not fixed


def test_init_puts_full_width_on_top_and_a_large_lambda_narrows(resnet) -> None:
    ref, model, wrapped, gates, exp = resnet
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    init_logits(wrapped, x, 2.0)
    assert all(g.argmax() == len(g.levels) - 1 for g in gates.values())
    assert float(exp().detach()) < exp.original   # the ranks' mixture is already cheaper than dense
    for p in wrapped.parameters():
        p.requires_grad_(False)
    for u in exp.units.values():
        u.alpha.requires_grad_(True)
    start = float(exp())
    e = arch_steps(wrapped, exp, (x, y), lam=100.0, steps=15, lr=0.1)
    for p in wrapped.parameters():
        p.requires_grad_(True)
    widths = {k: g.levels[g.argmax()][1] for k, g in gates.items()}
    assert e < 0.8 * start and any(w < gates[k].channels for k, w in widths.items()), (start, e, widths)


def _digits():
    """The digits task, a small CNN trained one epoch, its search space (the method tests' context)."""
    from hwloop.search.space import SearchSpace

    task = make_task("digits", "small_cnn", train_limit=256, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 1, 0.05)
    model.eval()
    return task, model, SearchSpace.from_ref(task.ref, model=model)


def test_the_method_prunes_and_factorises_to_its_target() -> None:
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency

    task, model, space = _digits()
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.5, device="asic-tpu32")
    res = make_method("haloc", {"search_epochs": 1, "finetune_epochs": 0, "max_steps": 4, "max_candidates": 3,
                                "recalibrate_batches": 1, "sampling": "gumbel", "cost_source": "surrogate",
                                "widths": [0.25, 0.5, 0.75]}).run(ctx)
    c = res.candidates[0]
    assert c.predicted <= 0.5 * c.original + 1e-9
    assert set(c.extra["widths"]) == {"features.0", "features.3", "features.7"}
    kinds = [a.kind for a in c.plan.actions]
    assert "channel_prune" in kinds and kinds == sorted(kinds, key=lambda k: k != "low_rank")   # low rank first
    specs = [s for s in layer_specs(c.model, task.ref.example_input()) if s.op != "other"]
    real = _macs({"m": {DENSE: specs}}, []).model_cost({"m": DENSE})
    assert c.predicted == pytest.approx(real, rel=1e-9)   # the prediction is the extracted model's own cost
    assert res.config["widths"] == [0.25, 0.5, 0.75]


@pytest.mark.parametrize("widths,msg", [([0.0], r"fractions in \(0, 1\]"), ([1.5], r"fractions in \(0, 1\]"),
                                        (["a"], r"fractions in \(0, 1\]"), ([True], r"fractions in \(0, 1\]")])
def test_width_config_errors_are_one_line(widths, msg) -> None:
    with pytest.raises(SearchError, match=msg) as e:
        make_method("haloc", {"widths": widths})
    assert "\n" not in str(e.value)


def test_widths_need_the_rank_search() -> None:
    with pytest.raises(SearchError, match="needs ranks='search'"):
        make_method("haloc", {"widths": [0.5], "ranks": "uniform"})


def test_the_band_pushes_up_below_the_target_and_lambda_grows_there() -> None:
    from hwloop.methods.haloc.search import _latency_term, dual_error

    class Exp:   # E[LAT] = 10·s, the argmax costs `hard`
        original = 10.0

        def __init__(self, hard: float) -> None:
            self.s = torch.tensor(0.5, requires_grad=True)
            self.hard = hard

        def __call__(self):
            return 10.0 * self.s

        def argmax_choice(self):
            return {}

        def choice_cost(self, choice):
            return self.hard

    for hard, band, sign in [(8.0, 0.0, 1), (5.0, 0.0, 0), (5.0, 0.05, -1), (6.8, 0.05, 0), (8.0, 0.05, 1)]:
        e = Exp(hard)
        term, _, a = _latency_term(e, 2.0, 0.7, band)
        if term.requires_grad:
            term.backward()
        g = 0.0 if e.s.grad is None else float(e.s.grad)
        assert a == pytest.approx(hard / 10) and (g > 0) - (g < 0) == sign, (hard, band, g)
        err = dual_error(hard / 10, 0.7, band)
        assert (err > 0) == (sign != 0), (hard, band, err)   # λ grows exactly where the term pushes


def test_original_weights_rebuild_the_chosen_architecture_from_the_trained_model() -> None:
    """``weights = "original"``: the extracted model is the chosen ranks and widths applied to the trained
    model's own weights (HOSVD, chosen channels), not the search's; with no fine-tune it equals that
    extraction exactly, and it differs from the search-trained one."""
    from hwloop.methods.base import MethodContext
    from hwloop.methods.haloc.mixed import DENSE as D
    from hwloop.search.latency import SurrogateLatency

    task, model, space = _digits()
    x = task.ref.example_input()
    xs = next(iter(task.train))[0]
    outs = {}
    for weights in ("search", "original"):
        ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                            latency=SurrogateLatency(space), target=0.5, device="asic-tpu32")
        cfg = {"search_epochs": 1, "finetune_epochs": 0, "max_steps": 4, "max_candidates": 3, "recalibrate_batches": 0,
               "sampling": "gumbel", "cost_source": "surrogate", "widths": [0.25, 0.5, 0.75], "weights": weights}
        c = make_method("haloc", cfg).run(ctx).candidates[0]
        with torch.no_grad():
            outs[weights] = c.model.eval()(xs)
    levels = {n: [D, *[lv for lv in map(tuple, c.extra["candidates"][n]) if lv != D]] for n in c.extra["candidates"]}
    fresh = wrap_model(model, levels)
    gates, _ = build_joint(fresh, model, x, mixed_layers(fresh), [0.25, 0.5, 0.75], _macs)
    choice = {n: (D if r is None else rank_level(r)) for n, r in c.extra["ranks"].items()}
    choice.update({WIDTH_PREFIX + k: ("w", w) for k, w in c.extra["widths"].items()})
    ref_net, _ = extract_joint(fresh, x, choice)
    with torch.no_grad():
        torch.testing.assert_close(outs["original"], ref_net.eval()(xs))
    assert not torch.allclose(outs["original"], outs["search"], atol=1e-3)


def test_weights_must_be_search_or_original() -> None:
    with pytest.raises(SearchError, match="weights='trained' is unknown; allowed: search, original"):
        make_method("haloc", {"weights": "trained"})


def test_sensitivity_init_scales_each_width_by_its_output_error(resnet) -> None:
    """``width_init = "sensitivity"``: gate g's logits are −scale·(output error with g alone at that width)/max
    over all gates; the error is the physically pruned network's (extraction equals masking)."""
    ref, model, wrapped, gates, exp = resnet
    x = torch.randn(6, 3, 32, 32)
    init_logits(wrapped, x, 2.0, "sensitivity")
    lows = [float(g.alpha.detach().min()) for g in gates.values()]
    assert min(lows) == pytest.approx(-2.0) and all(float(g.alpha[-1]) == 0.0 for g in gates.values())
    assert max(lows) > -1.0   # some group is far less sensitive than the most sensitive one
    g = gates["layers.3.conv1"]   # a block-internal group of stage 2

    def run(level):   # the wrapped network with every layer dense and only g at `level`, physically pruned
        choice = {n: DENSE for n in mixed_layers(wrapped)}
        choice.update({WIDTH_PREFIX + k: (level if k == g.key else h.levels[-1]) for k, h in gates.items()})
        net, _ = extract_joint(wrapped, ref.example_input(), choice)
        return net.eval()(x)

    with torch.no_grad():
        y = run(g.levels[-1])
        errs = [float((run(lv) - y).pow(2).mean() / y.pow(2).mean()) for lv in g.levels[:-1]]
    a = g.alpha.detach()[:-1]
    for i in range(len(errs)):
        assert float(a[i]) / float(a[0]) == pytest.approx(errs[i] / errs[0], rel=1e-3)


def test_finding_the_classifier_leaves_batch_norm_statistics_alone() -> None:
    """``output_layers`` (used by ``analyze`` and the extraction) runs one forward pass; in training mode that pass
    moved every batch norm's running statistics (found through the sensitivity test above)."""
    torch.manual_seed(0)
    net = ModelRef("resnet20").build().train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    assert output_layers(net, torch.randn(2, 3, 32, 32)) == ["fc"] and net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    net.layers[0].bn1.eval()           # a part frozen in eval mode stays so (each module gets its own mode back)
    from hwloop.compress.extract import analyze

    analyze(net, torch.randn(2, 3, 32, 32))
    assert net.training and not net.layers[0].bn1.training and net.layers[0].bn2.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_clip_ranks_costs_and_extracts_a_rank_that_reduces_nothing_as_dense() -> None:
    """``clip_ranks``: rank 8 of a conv whose input group is pruned to 4 channels is the dense (pruned) conv: the
    table costs it as dense, ``effective_choice`` extracts it dense, and the one-hot cost is still the extracted
    model's own."""
    torch.manual_seed(0)
    ref = ModelRef("resnet20")
    model = ref.build().eval()
    x = ref.example_input()
    names = eligible_layers(model, output_layers(model, x))
    wrapped = wrap_model(model, {n: [DENSE, rank_level(4), rank_level(8)] for n in names})
    gates, exp = build_joint(wrapped, model, x, mixed_layers(wrapped), [0.25, 0.5, 0.75], _macs, clip_ranks=True)
    choice = {n: rank_level(8) for n in mixed_layers(wrapped)}
    choice.update({WIDTH_PREFIX + k: g.levels[-1] for k, g in gates.items()})
    choice[WIDTH_PREFIX + "conv1"] = ("w", 4)           # the first stage's stream: 4 of 16 channels
    eff = exp.effective_choice(choice)
    assert eff["layers.0.conv1"] == DENSE and eff["layers.0.conv2"] == DENSE   # 4 in / 4 out: rank 8 >= 4
    assert eff["layers.3.conv1"] == DENSE and eff["layers.4.conv1"] == rank_level(8)   # 4 in; 32 in and out
    assert exp.choice_cost(eff) == pytest.approx(exp.choice_cost(choice), rel=1e-12)
    net, actions = extract_joint(wrapped, x, eff)
    assert "layers.0.conv1" not in {a.layer for a in actions if a.kind == "low_rank"}
    specs = [s for s in layer_specs(net, x) if s.op != "other"]
    assert exp.choice_cost(eff) == pytest.approx(_macs({"m": {DENSE: specs}}, []).model_cost({"m": DENSE}), rel=1e-9)


@pytest.mark.parametrize("key,value,msg", [("width_init", "random", "width_init='random' is unknown"),
                                           ("band", 1.0, r"band=1.0 must be in \[0, 1\)"),
                                           ("band", -0.1, r"band=-0.1 must be in \[0, 1\)"),
                                           ("width_lr", 0.0, "width_lr=0.0 must be a finite number > 0")])
def test_joint_search_keys_are_checked(key, value, msg) -> None:
    with pytest.raises(SearchError, match=msg) as e:
        make_method("haloc", {"widths": [0.5], key: value})
    assert "\n" not in str(e.value)


def test_width_logits_move_at_their_own_rate(resnet) -> None:
    """``width_lr``: one architecture step moves every width logit by at most ~width_lr and the rank logits by
    ~arch_lr (Adam), and the two groups hold every architecture logit."""
    from hwloop.methods.haloc.search import _params, alternate

    ref, model, wrapped, gates, exp = resnet
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    before = {id(a): a.detach().clone() for a in _params(wrapped)[1]}
    assert len(before) == len(mixed_layers(wrapped)) + len(gates)
    set_mode(wrapped, mode="gumbel")
    alternate(wrapped, exp, [batch, batch], epochs=1, lr=1e-3, arch_lr=0.1, momentum=0.9, weight_decay=0.0,
              lam=1.0, dual_lr=0.0, mu=0.0, target=0.3, width_lr=1e-4)
    gate_ids = {id(g.alpha) for g in gates.values()}
    moves = {i: float((a.detach() - before[i]).abs().max()) for i, a in ((id(a), a) for a in _params(wrapped)[1])}
    assert max(v for i, v in moves.items() if i in gate_ids) < 3e-4
    assert max(v for i, v in moves.items() if i not in gate_ids) > 0.05


def test_the_repair_steps_widths_down_and_never_raises_the_cost(resnet) -> None:
    from hwloop.methods.haloc.search import step_down_to_budget

    ref, model, wrapped, gates, exp = resnet
    full = exp.full_choice()
    out = step_down_to_budget(exp.units, exp, full, 0.5 * exp.original)
    assert exp.choice_cost(out) <= 0.5 * exp.original
    assert any(out[WIDTH_PREFIX + k] != g.levels[-1] for k, g in gates.items())
    # every group at its narrowest and every layer dense: a rank is no cheaper at 4 channels (Tucker-2's two 1x1
    # factors cost more than they save), so an unreachable budget must not move the cost up
    floor = {**{n: DENSE for n in mixed_layers(wrapped)}, **{WIDTH_PREFIX + k: g.levels[0] for k, g in gates.items()}}
    stuck = step_down_to_budget(exp.units, exp, floor, 1.0)
    assert exp.choice_cost(stuck) <= exp.choice_cost(floor)


def test_layers_without_a_dense_candidate_still_cost_the_original_model() -> None:
    """``allow_dense = false``: the table still holds each layer's dense cost (the full choice, the original)."""
    torch.manual_seed(0)
    ref = ModelRef("resnet20")
    model = ref.build().eval()
    x = ref.example_input()
    names = eligible_layers(model, output_layers(model, x))
    wrapped = wrap_model(model, {n: [rank_level(4), rank_level(8)] for n in names})
    gates, exp = build_joint(wrapped, model, x, mixed_layers(wrapped), [0.5], _macs)
    whole = _macs({"m": {DENSE: [s for s in layer_specs(model, x) if s.op != "other"]}}, [])
    assert exp.original == pytest.approx(whole.model_cost({"m": DENSE}), rel=1e-12)
    for u in exp.units.values():   # one-hot on the last candidate: rank 8, full widths
        u.fixed = torch.nn.functional.one_hot(torch.tensor(len(u.levels) - 1), len(u.levels)).float()
    assert float(exp()) == pytest.approx(exp.choice_cost(exp.full_choice() | {n: rank_level(8) for n in names}))


@pytest.mark.parametrize("cfg,msg", [({"clip_ranks": True}, "clip_ranks=True acts on width gates"),
                                     ({"width_init": "sensitivity"}, "width_init='sensitivity' acts on width gates"),
                                     ({"width_lr": 0.01}, "width_lr=0.01 acts on width gates"),
                                     ({"widths": [0.5], "clip_ranks": True, "allow_dense": False},
                                      "clip_ranks=true needs allow_dense=true"),
                                     ({"widths": [0.5], "width_init": "sensitivity", "init_scale": 0.0},
                                      "needs init_scale > 0")])
def test_joint_keys_that_would_do_nothing_are_refused(cfg, msg) -> None:
    with pytest.raises(SearchError, match=msg):
        make_method("haloc", cfg)
