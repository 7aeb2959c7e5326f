"""Gates, low-rank factorisation, plans and extraction to a real smaller model."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwloop.compress import (
    BitGate,
    ChannelGate,
    CompressionPlan,
    compress_,
    effective_size,
    factorize,
    fake_quant,
    from_plan,
    load_compressed,
    merge,
    save_compressed,
)
from hwloop.compress.gated import GatedModel, extract, quantized_weights
from hwloop.errors import CompressionError
from hwloop.models import ModelRef
from hwloop.search.latency import SurrogateLatency
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.workload import extract_layers

torch.set_num_threads(1)

# zeros and magnitudes whose scaled copies stay representable (c*a must not underflow to exact zero)
vectors = st.lists(st.one_of(st.just(0.0), st.floats(1e-200, 100.0)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(vectors, st.floats(0.01, 100.0))
def test_effective_size_bounded_by_l0_and_scale_invariant(vals: list[float], c: float) -> None:
    a = torch.tensor(vals, dtype=torch.float64)
    s = float(effective_size(a))
    assert s <= int((a != 0).sum()) + 1e-9
    assert s == pytest.approx(float(effective_size(c * a)), rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=64))
def test_effective_size_equals_l0_for_binary_gates(vals: list[float]) -> None:
    a = torch.tensor(vals, dtype=torch.float64)
    assert float(effective_size(a)) == pytest.approx(int((a != 0).sum()))


def test_channel_gate_keep_rules_and_projection() -> None:
    g = ChannelGate(6)
    with torch.no_grad():
        g.a.copy_(torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 0.0]))
    g.project_()
    assert g.a.min() >= 0 and g.nonzero() == 3
    assert g.keep_mask(rule="nonzero").tolist() == [True, False, False, True, True, False]
    assert int(g.keep_mask(rule="effective").sum()) == g.hard_size() <= g.nonzero()
    assert g.keep_mask(width=1).tolist() == [True, False, False, False, False, False]
    with pytest.raises(CompressionError, match="keep rule"):
        g.keep_mask(rule="bogus")


def test_bit_gate_is_monotone_nested_and_differentiable() -> None:
    w = torch.randn(8, 4, 3, 3)
    g = BitGate((2, 4, 8))
    for bits in (2, 4, 8):
        g.set_bits(bits)
        assert g.hard_size() == bits and float(g.size().detach()) == bits
        assert torch.equal(g.quantize(w), fake_quant(w, bits))
    with torch.no_grad():
        g.g.copy_(torch.tensor([1.0, 0.3, 0.9]))   # the 8-bit level needs the 4-bit level: product 0.27
    assert g.hard_size() == 2
    assert float(g.size().detach()) == pytest.approx(2 + 2 * 0.3 + 4 * 0.3 * 0.9)
    g.size().backward()
    assert g.g.grad is not None and float(g.g.grad[1]) > 0
    z = BitGate(allow_zero=True)
    z.set_bits(0)
    assert z.hard_size() == 0 and float(z.quantize(w).detach().abs().max()) == 0.0


@pytest.mark.parametrize("layer", [torch.nn.Conv2d(6, 10, 3, padding=1, bias=True), torch.nn.Linear(12, 5)])
def test_factorize_exact_at_full_rank_and_merge_roundtrip(layer: torch.nn.Module) -> None:
    x = torch.randn(2, 6, 7, 7) if isinstance(layer, torch.nn.Conv2d) else torch.randn(3, 12)
    seq, sigma = factorize(layer)
    assert torch.allclose(seq(x), layer(x), atol=1e-4)
    assert torch.all(sigma[:-1] >= sigma[1:])
    assert torch.allclose(merge(seq)(x), layer(x), atol=1e-4)
    low, _ = factorize(layer, rank=2)
    assert low[0].weight.shape[0] == 2
    with pytest.raises(CompressionError, match="rank"):
        factorize(layer, rank=999)


def _set_gates(gm: GatedModel, seed: int, zero_frac: float = 0.4, binary: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gm.channel_gates.values():
            vals = torch.ones(gate.max_size) if binary else torch.rand(gate.max_size, generator=g) + 0.2
            drop = torch.rand(gate.max_size, generator=g) < zero_frac
            drop[0] = False
            vals[drop] = 0.0
            gate.a.copy_(vals)
        for i, bg in enumerate(gm.bit_gates.values()):
            bg.set_bits((2, 4, 8)[i % 3])


@pytest.mark.parametrize("name,opts", [
    ("small_cnn", SpaceOptions(bits=True, lowrank=True)),
    ("resnet20", SpaceOptions(bits=True)),
    ("mobilenetv2", SpaceOptions(min_keep_ratio=0.1)),
])
def test_extracted_model_equals_gated_model_with_zero_gates(name: str, opts: SpaceOptions) -> None:
    ref = ModelRef(name, {"width_mult": 0.5} if name == "mobilenetv2" else {})
    model = ref.build()
    # non-trivial batch-norm statistics so folding is really exercised
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    space = SearchSpace.from_ref(ref, opts, model=model)
    gm = GatedModel(space).eval()
    _set_gates(gm, seed=3)
    x = torch.randn(2, *ref.input_shape)
    with torch.no_grad():
        want = gm(x)
    net, plan = extract(gm, rule="nonzero")
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    n_base = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in net.parameters()) < n_base
    assert plan.widths and all(v < space.graph.group(k).channels for k, v in plan.widths.items())
    # the plan rebuilds the same structure from the base architecture, and the weights load into it
    rebuilt = from_plan(plan.to_dict())
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), got, atol=1e-5)


def test_residual_coupled_layers_keep_matching_shapes() -> None:
    ref = ModelRef("resnet20")
    space = SearchSpace.from_ref(ref)
    stage1 = space.graph.group("conv1")
    assert {"bn1", "layers.0.bn2", "layers.1.bn2", "layers.2.bn2"} <= set(stage1.sites)
    plan = CompressionPlan(base=ref.to_dict(), widths={"conv1": 5, "layers.3.conv2": 9, "layers.6.conv1": 7})
    net = compress_(ref.build(), plan)
    assert net.conv1.out_channels == 5
    for b in range(3):
        assert net.layers[b].conv2.out_channels == 5 and net.layers[b].conv1.in_channels == 5
    assert net.layers[3].shortcut[0].out_channels == net.layers[3].conv2.out_channels == 9
    assert net.layers[6].conv1.out_channels == 7 and net.layers[6].conv2.in_channels == 7
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_mobilenetv2_depthwise_and_residual_groups() -> None:
    ref = ModelRef("mobilenetv2", {"width_mult": 0.5})
    space = SearchSpace.from_ref(ref)
    cfg = {d.name: 0.5 for d in space.dimensions()}
    net, _plan = space.compress(cfg)
    assert net(ref.example_input()).shape == (1, 10)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert sum(p.numel() for p in net.parameters()) < 0.5 * sum(p.numel() for p in space.model.parameters())


@pytest.mark.parametrize("name,opts", [("small_cnn", SpaceOptions(lowrank=True)), ("resnet20", SpaceOptions()),
                                       ("mobilenetv2", SpaceOptions())])
def test_extracted_macs_equal_surrogate_polynomial(name: str, opts: SpaceOptions) -> None:
    ref = ModelRef(name, {"width_mult": 0.5} if name == "mobilenetv2" else {})
    space = SearchSpace.from_ref(ref, opts)
    gm = GatedModel(space)
    _set_gates(gm, seed=5, binary=True)
    net, plan = extract(gm)
    macs = sum(s.macs for s in extract_layers(net, ref.example_input()) if s.op in ("conv2d", "linear"))
    lat = SurrogateLatency(space)
    assert float(lat(gm.sizes())) * 1e6 == pytest.approx(macs, rel=1e-6)   # 0/1 gates: s(a) = ||a||_0
    assert lat.plan_latency(plan) * 1e6 == pytest.approx(macs, rel=1e-6)


def test_save_and_load_compressed_roundtrip(tmp_path) -> None:
    ref = ModelRef("small_cnn")
    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, lowrank=("features.3",)))
    cfg = {"width:features.0": 0.5, "rank:features.3": 0.4, "bits:features.7": 4}
    net, plan = space.compress(cfg)
    assert plan.lowrank == {"features.3": 13} and plan.w_bits["features.7"] == 4
    assert len(torch.unique(net.features[7].weight[0])) <= 2 ** 4
    d = save_compressed(net, plan, tmp_path / "out")
    assert not list(d.glob("*.pt")) and json.loads((d / "plan.json").read_text())["type"] == "hwloop.CompressionPlan"
    loaded, plan2 = load_compressed(d)
    assert plan2 == plan
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    # any device can rebuild it from JSON through a ModelRef
    mref = ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict(), "weights": str(d / "weights.safetensors")},
                    input_shape=(1, 8, 8))
    with torch.no_grad():
        assert torch.equal(mref.build()(x), net(x))


def test_quantized_weights_context_bakes_bits() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with quantized_weights(net, {"0": 2}):
        loss = net(torch.randn(4, 8)).sum()
        loss.backward()
    assert not hasattr(net[0], "parametrizations")
    assert all(len(torch.unique(row.abs())) <= 2 for row in net[0].weight)


@pytest.mark.parametrize("bad,match", [
    ({"base": {"name": "small_cnn"}, "widths": {"features.0": 0}}, "widths"),
    ({"base": {"name": "nope"}}, "base"),
    ({"base": {"name": "small_cnn"}, "w_bits": {"features.3": 40}}, "w_bits"),
    ({"base": {"name": "small_cnn"}, "extra": 1}, "unknown plan field"),
    ({"base": {"name": "small_cnn"}, "version": 9}, "version"),
])
def test_plan_rejects_bad_input(bad: dict, match: str) -> None:
    with pytest.raises(CompressionError, match=match):
        CompressionPlan.from_dict(bad)


def test_compress_rejects_unknown_group() -> None:
    plan = CompressionPlan(base={"name": "small_cnn"}, widths={"features.99": 3})
    with pytest.raises(CompressionError, match="unknown group"):
        compress_(ModelRef("small_cnn").build(), plan)


def test_activation_quantizer_observes_in_training_and_freezes_in_eval() -> None:
    from hwloop.compress.actquant import ActivationQuantizer

    q = ActivationQuantizer(4, momentum=0.5)
    x = torch.linspace(-3.0, 3.0, 101, requires_grad=True)
    assert torch.equal(q.eval()(x), x)                     # nothing observed yet: unchanged
    y = q.train()(x)
    assert float(q.amax) == pytest.approx(3.0)
    assert len(torch.unique(y.detach())) <= 2 ** 4 - 1     # 15 symmetric levels
    assert float((y.detach() - x.detach()).abs().max()) <= 3.0 / 7 / 2 + 1e-6   # within half a step
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))         # straight-through
    q.train()(x.detach() * 2)                               # moving average: 0.5·3 + 0.5·6
    assert float(q.amax) == pytest.approx(4.5)
    q.eval()(x.detach() * 10)
    assert float(q.amax) == pytest.approx(4.5)              # frozen in eval mode
    with pytest.raises(CompressionError, match="activation bits=1"):
        ActivationQuantizer(1)


def test_quantized_activations_hooks_come_off_and_replay_from_a_plan() -> None:
    from hwloop.compress.actquant import quantized_activations

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(32, 6)
    ref = net(x)
    with quantized_activations(net, ["2"], bits=3) as aq:
        net.train()(x)                                      # observe
        net.eval()
        quant = net(x)
    assert not torch.allclose(quant, ref) and torch.equal(net(x), ref)   # hooks removed on exit
    plan = CompressionPlan(base={"name": "small_cnn"}, w_bits={"2": 4}, a_bits=3,
                           meta={"a_amax": aq.amax(), "a_quant": aq.export()})   # signs too (issue 19)
    with quantized_activations.from_plan(net, CompressionPlan.from_json(plan.to_json())):
        assert torch.equal(net(x), quant)                   # the same ranges give the same outputs
    with quantized_activations.from_plan(net, CompressionPlan(base={"name": "small_cnn"}, a_bits=8)):
        assert torch.equal(net(x), ref)                     # no ranges recorded: float
    with pytest.raises(CompressionError, match="no layer 'features.9'"):
        quantized_activations(net, ["features.9"], bits=8)
