"""LCS (issue 20): line layers, compression functions, the regulariser, training, the family, select, the controller,
and group/instance norm as ops of their own in workloads, predictor features and the asic."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.lcs import (
    LcsFamily,
    LineConv2d,
    LineLinear,
    LineNorm,
    alpha_to_bits,
    cos2_regularizer,
    n_channels,
    to_lines,
    topk_mask,
    train_lines,
)
from hwloop.methods.lcs.controller import LcsController, budgets_from_load
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec, WorkloadWarning, build_layer, extract_layers, make_inputs

torch.set_num_threads(1)
REF = ModelRef("small_cnn", {"norm": "in"}, input_shape=(1, 8, 8))


def _family(mode: str = "width", seed: int = 0) -> LcsFamily:
    torch.manual_seed(seed)
    ref = REF if mode == "width" else ModelRef("small_cnn", {"norm": "gn"}, input_shape=(1, 8, 8))
    return LcsFamily.create(ref, mode)


def test_line_layers_are_the_endpoints_at_0_and_1() -> None:
    fam = _family()
    net, st = fam.net, fam.state
    x = torch.randn(2, 1, 8, 8)
    conv = net.features[0]
    norm = net.features[1]
    fc = net.classifier
    assert isinstance(conv, LineConv2d) and isinstance(norm, LineNorm) and isinstance(fc, LineLinear)
    assert not torch.equal(conv.weight, conv.weight1)          # two independent endpoints
    with torch.no_grad():
        norm.weight1.mul_(3.0)
        fc.bias1.add_(1.0)
    st.mode = "none"   # no compression: the pure line (γ off)
    for a, suffix in ((0.0, ""), (1.0, "1")):
        st.alpha = a
        for m in (conv, norm, fc):
            for p in m.names:
                assert torch.equal(m.at(p), getattr(m, p + suffix)), (m, p, a)
        with torch.no_grad():
            y = conv(x)
            assert torch.allclose(y, F.conv2d(x, getattr(conv, "weight" + suffix), None, 1, 1))
            z = norm(y)
            ref = F.instance_norm(y, weight=getattr(norm, "weight" + suffix), bias=getattr(norm, "bias" + suffix))
            assert torch.allclose(z, ref, atol=1e-6)
    st.alpha = 0.25
    assert torch.allclose(conv.at("weight"), 0.75 * conv.weight + 0.25 * conv.weight1)


@pytest.mark.parametrize("density", [0.05, 0.1, 0.333, 0.5, 0.999, 1.0])
def test_topk_keeps_exactly_the_requested_count(density: float) -> None:
    w = torch.randn(32, 16, 3, 3)
    k = max(1, round(density * w.numel()))
    mask = topk_mask(w, density)
    assert int(mask.sum()) == k
    assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max()) if k < w.numel() else True


def test_topk_member_has_the_count_and_its_plan_rebuilds_it(tmp_path: Path) -> None:
    from hwloop.compress.extract import load_compressed, save_compressed

    fam = _family("topk")
    m = fam.at(0.5)
    dens = fam.level(0.5)["density"]
    assert 0.05 < dens < 1
    names = [n for n, mod in m.model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    first = names[0]
    for n, mod in m.model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nz = int((mod.weight != 0).sum())
            assert nz == (mod.weight.numel() if n == first else max(1, round(dens * mod.weight.numel()))), n
    rebuilt, plan = load_compressed(save_compressed(m.model, m.plan, tmp_path / "m"))
    assert plan == m.plan and {a.kind for a in plan.actions} == {"sparsify"}
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), m.model(x))
        assert torch.allclose(m.model(x), fam.line_at(0.5)(x), atol=1e-5)


def test_alpha_to_bits_is_monotone_and_covers_3_to_8() -> None:
    alphas = [i / 600 for i in range(601)]
    bits = [alpha_to_bits(a) for a in alphas]
    assert all(b0 <= b1 for b0, b1 in itertools.pairwise(bits))
    assert set(bits) == set(range(3, 9)) and bits[0] == 3 and bits[-1] == 8
    fam = _family("bits")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        errs = [float((fam.line_at(a)(x) - fam.line_at(1.0)(x)).abs().mean()) for a in (1 / 6, 3 / 6)]
    assert errs[0] > errs[1] > 0           # 3 bits is further from 8 bits than 5 bits is


def test_regularizer_is_in_0_1_and_1_for_parallel_endpoints() -> None:
    fam = _family()
    r = float(cos2_regularizer(fam.net).detach())
    assert 0.0 <= r < 0.05          # independent random endpoints are nearly orthogonal
    with torch.no_grad():
        for mod in fam.net.modules():
            if isinstance(mod, LineConv2d):
                mod.weight1.copy_(-2.5 * mod.weight)
    assert math.isclose(float(cos2_regularizer(fam.net).detach()), 1.0, rel_tol=1e-5)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        with torch.no_grad():
            for mod in fam.net.modules():
                if isinstance(mod, LineConv2d):
                    mod.weight1.copy_(torch.randn(mod.weight.shape, generator=g) + 0.5 * mod.weight)
        assert 0.0 <= float(cos2_regularizer(fam.net).detach()) <= 1.0


def test_a_training_step_updates_both_endpoints() -> None:
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", model_kwargs={"norm": "in"}, train_limit=64, batch_size=32)
    fam = _family()
    before = {k: v.clone() for k, v in fam.net.state_dict().items()}
    h = train_lines(fam.net, fam.state, task.train, epochs=1, lr=0.05, max_steps=1, n_samples=4)
    assert h["steps"] == 1 and h["forward_passes"] == 4
    after = fam.net.state_dict()
    for name in ("features.3.weight", "features.3.weight1", "features.4.weight", "features.4.weight1",
                 "classifier.weight", "classifier.weight1"):
        assert not torch.equal(before[name], after[name]), name


def test_width_half_slicing_halves_the_channels_and_gives_the_analytic_macs() -> None:
    fam = _family()
    a = (0.5 - 0.25) / 0.75                  # width = 0.25 + 0.75 α
    m = fam.at(a)
    assert m.level["width"] == pytest.approx(0.5)
    convs = [mod for mod in m.model.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and m.model.classifier.in_features == 32
    assert m.model.classifier.out_features == 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        specs = extract_layers(m.model, REF.example_input())
    macs = sum(s.macs for s in specs if s.op in ("conv2d", "linear"))
    analytic = 8 * 8 * 9 * 1 * 8 + 8 * 8 * 9 * 8 * 16 + 4 * 4 * 9 * 16 * 32 + 32 * 10
    assert macs == analytic
    full = sum(s.macs for s in extract_layers(REF.build(), REF.example_input()) if s.op in ("conv2d", "linear"))
    assert macs < 0.3 * full
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(m.model(x), fam.line_at(a)(x), atol=1e-5)   # the real member = the line at α
    assert [n_channels(0.5, c) for c in (16, 32, 64)] == [8, 16, 32]


def test_select_returns_the_most_accurate_alpha_within_the_table_budget() -> None:
    fam = _family()
    fam.latency["dev"] = {0.0: 1.0, 0.25: 2.0, 0.5: 3.0, 0.75: 4.0, 1.0: 5.0}
    fam.accuracy = {0.0: 50.0, 0.25: 60.0, 0.5: 72.0, 0.75: 70.0, 1.0: 80.0}   # not monotone on purpose
    s = fam.select(4.5, "dev")
    assert (s.alpha, s.met, s.latency_ms, s.accuracy) == (0.5, True, 3.0, 72.0)
    assert fam.select(5.0, "dev").alpha == 1.0
    assert fam.select(2.0, "dev").alpha == 0.25
    s = fam.select(0.5, "dev")
    assert (s.alpha, s.met) == (0.0, False)
    fam.accuracy = {}
    assert fam.select(4.5, "dev").alpha == 0.75       # no accuracies recorded: the largest α that fits
    with pytest.raises(SearchError, match="no latency table for device 'other'"):
        fam.select(1.0, "other")
    with pytest.raises(SearchError, match="budget_ms=nan"):
        fam.select(float("nan"), "dev")


def test_family_files_round_trip_and_bad_files_are_one_line(tmp_path: Path) -> None:
    fam = _family()
    fam.accuracy = {0.0: 10.0, 1.0: 20.0}
    fam.latency["asic-tpu32"] = {0.0: 0.01, 1.0: 0.02}
    d = fam.save(tmp_path / "fam")
    assert sorted(p.name for p in d.iterdir()) == ["endpoints.safetensors", "family.json"]
    back = LcsFamily.load(d)
    assert back.accuracy == fam.accuracy and back.latency == fam.latency
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for a in (0.0, 0.4, 1.0):
            assert torch.equal(back.at(a).model(x), fam.at(a).model(x))
    desc = json.loads((d / "family.json").read_text())
    (d / "family.json").write_text(json.dumps({**desc, "format": 99}))
    with pytest.raises(SearchError, match="not an hwloop LCS family") as e:
        LcsFamily.load(d)
    assert "\n" not in str(e.value)
    (d / "family.json").write_text(json.dumps(desc))
    (d / "endpoints.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SearchError, match="cannot read endpoints.safetensors"):
        LcsFamily.load(d)


def test_controller_counts_misses_by_measured_latency_and_regret() -> None:
    fam = _family()
    fam.latency["asic-tpu32"] = {0.0: 1.0, 0.5: 2.0, 1.0: 3.0}       # what select reads
    fam.accuracy = {0.0: 50.0, 0.5: 70.0, 1.0: 80.0}
    measured = {0.0: 1.0, 0.5: 2.6, 1.0: 3.0}                          # α = 0.5 is slower on the device
    ctl = LcsController(fam, "asic-tpu32", measure=measured.__getitem__, reference_ms=measured)
    run = ctl.run([3.5, 2.2, 2.7, 0.5])
    st = run.steps
    assert [s.alpha for s in st] == [1.0, 0.5, 0.5, 0.0]
    assert [s.miss for s in st] == [False, True, False, True]        # by the device, not by the table
    assert [s.table_met for s in st] == [True, True, True, False]
    assert st[1].best_alpha == 0.0 and st[1].regret == pytest.approx(50.0)   # missed: charged the best α's accuracy
    assert st[2].regret == pytest.approx(0.0) and st[3].regret == 0.0
    sm = run.summary()
    assert sm["misses"] == 2 and sm["infeasible_steps"] == 1 and sm["misses_when_feasible"] == 1 and run.switches == 2
    assert budgets_from_load([0.0, 0.5], 4.0) == [4.0, 2.0]
    with pytest.raises(SearchError, match="load value 1.5"):
        budgets_from_load([1.5], 4.0)


@pytest.mark.parametrize("table, needle", [
    ({"mode": "pruning"}, "mode='pruning' is unknown; allowed: width, topk, bits"),
    ({"mode": "width", "norm": "gn"}, "mode 'width' needs norm='in'"),
    ({"norm": "bn"}, "norm='bn' is unknown"),
    ({"grid": 1}, "grid=1 must be an integer in [2, 101]"),
    ({"lo": 1.5}, "lo=1.5 must be in (0, hi=1.0]"),
    ({"init": "imagenet"}, "init='imagenet' is unknown; allowed: context, scratch"),
    ({"mode": "topk", "norm": "frozen_bn"}, "norm='frozen_bn' is for mode 'width'"),
    ({"norm": "frozen_bn", "init": "scratch"}, "norm='frozen_bn' needs init='context'"),
    ({"fold_start": 4}, "fold_start=4 must be an integer >= 0, and > 0 only with norm='frozen_bn'"),
    ({"clip_grad": -1}, "clip_grad=-1.0 must be a number >= 0 (0: off)"),
])
def test_bad_config_is_one_line(table: dict, needle: str) -> None:
    with pytest.raises(SearchError) as e:
        make_method("lcs", table)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_batch_norm_models_are_refused() -> None:
    with pytest.raises(SearchError, match="batch norm statistics would have to be re-estimated"):
        to_lines(ModelRef("small_cnn").build(), "width")


def test_group_and_instance_norm_are_ops_of_their_own_and_costed_on_the_asic() -> None:
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.devices.asic.opgraph import ops_from_layer
    from hwloop.predict.features import NORM_CODES, spec_table

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.InstanceNorm2d(8, affine=True),
                        nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    for method in ("export", "hooks"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", WorkloadWarning)   # no 'other' op left
            specs = extract_layers(net, x, method=method)
        assert [s.op for s in specs] == ["conv2d", "groupnorm", "instancenorm", "activation"], method
        assert specs[1].groups == 2 and specs[1].params == 16 == specs[2].params
    gn, inn = specs[1], specs[2]
    for s in (gn, inn):
        assert tuple(build_layer(s)(*make_inputs(s)).shape) == s.out_shape
        ops = ops_from_layer(s)
        assert [o.kind for o in ops] == ["eltwise"] and ops[0].vector_ops == 4 * s.out_elements
    bn = LayerSpec("batchnorm", gn.in_shape)
    host = LayerSpec("other", gn.in_shape, variant="group_norm")   # how a group norm was costed before
    dev = create_device("asic-tpu32")
    r_gn, r_in, r_bn, r_host = dev.measure([MeasureRequest.for_layer(s) for s in (gn, inn, bn, host)])
    assert r_gn.ok and r_in.ok and r_gn.latency_ms == r_in.latency_ms > 0
    assert r_bn.latency_ms < r_gn.latency_ms < r_host.latency_ms   # BN folds into the conv; the norm is on-chip
    t = spec_table([gn, inn, bn])
    assert t[0, 0] == t[1, 0] == t[2, 0] and len({t[0, 1], t[1, 1], t[2, 1]}) == 3
    assert NORM_CODES["groupnorm"] != NORM_CODES["instancenorm"]
    with pytest.raises(Exception, match="groupnorm groups=3 must divide its 8 channels"):
        LayerSpec("groupnorm", (1, 8, 4, 4), groups=3)


def test_whole_models_with_norms_have_no_host_ops_on_the_asic() -> None:
    pytest.importorskip("tvm")
    from hwloop.devices.asic.frontend import lower_model

    for norm in ("in", "gn"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = lower_model(ModelRef("small_cnn", {"norm": norm}, input_shape=(1, 8, 8)))
        assert not g.host_ops, (norm, [o.fused for o in g.host_ops])
        norms = [o for o in g.ops if any("norm" in f for f in o.fused)]
        assert len(norms) == 3 and all(o.kind == "eltwise" for o in norms)


def test_latency_tables_on_the_asic_table_calibrated_to_the_live_member() -> None:
    pytest.importorskip("tvm")
    fam = _family()
    grid = [0.0, 0.5, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        live = fam.measure("asic-tpu32", grid, source="measure")
        table = fam.measure("asic-tpu32", grid, source="table", store=False)
    assert live[0.0] < live[0.5] < live[1.0] and table[0.0] < table[0.5] < table[1.0]
    assert table[1.0] == pytest.approx(live[1.0], rel=1e-9)        # calibrated on the widest member
    assert fam.latency_source["asic-tpu32"] == "table+calibrated" and fam.latency["asic-tpu32"] == table
    assert fam.select(live[0.5] * 1.0001, "asic-tpu32").alpha in grid


def test_a_family_starts_from_a_batch_norm_checkpoint_and_bad_weights_are_one_line() -> None:
    torch.manual_seed(3)
    bn = ModelRef("small_cnn", input_shape=(1, 8, 8)).build()
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.fill_(7.0)   # dropped: an instance norm has no running statistics
    fam = LcsFamily.create(REF, "width", line_convs=False, init=bn.state_dict())
    assert fam.flags["init"] == "state"
    full = dict(fam.at(1.0).model.named_modules())
    for name, m in bn.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            assert torch.equal(full[name].weight, m.weight), name
            if m.bias is not None:
                assert torch.equal(full[name].bias, m.bias), name
    quarter = dict(fam.at(0.0).model.named_modules())   # width 0.25: the checkpoint's first channels
    assert torch.equal(quarter["features.0"].weight, bn.features[0].weight[:4])
    assert torch.equal(quarter["features.1"].bias, bn.features[1].bias[:4])
    wide = ModelRef("small_cnn", {"width_mult": 2.0}, input_shape=(1, 8, 8)).build().state_dict()
    with pytest.raises(SearchError) as e:
        LcsFamily.create(REF, "width", init=wide)
    assert "features.0.weight has shape (32, 1, 3, 3), the model (16, 1, 3, 3)" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(SearchError, match="missing .*features.0.weight"):
        LcsFamily.create(REF, "width", init={k: v for k, v in bn.state_dict().items() if k != "features.0.weight"})


_CKPT = Path(__file__).resolve().parents[1] / "search" / "checkpoints" / "resnet20_cifar10_converged.safetensors"


def _real_cache() -> Path:
    from hwloop.data import cache_root

    return cache_root()


_CIFAR_CACHE = _real_cache()   # read at import, before the autouse fixture points HWLOOP_HOME at a temporary folder


def _cifar_or_skip():
    from torch.utils.data import DataLoader, Subset

    from hwloop.data import make_loaders

    if not _CKPT.exists():
        pytest.skip(f"{_CKPT} is not here")
    if not list(_CIFAR_CACHE.glob("cifar10-*-train-x.npy")):
        pytest.skip(f"no decoded CIFAR-10 in {_CIFAR_CACHE} (decoding takes minutes; any CIFAR-10 run makes it)")
    train, val = make_loaders("cifar10", 64, cache_dir=_CIFAR_CACHE, seed=0)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(Subset(train.dataset, torch.randperm(50000, generator=g)[:256].tolist()), batch_size=64,
                       shuffle=True, generator=torch.Generator().manual_seed(0))
    # 128 test images at random (the stored arrays are sorted by class: the first 128 are all airplanes)
    test_idx = torch.randperm(10000, generator=torch.Generator().manual_seed(1))[:128].tolist()
    return train, DataLoader(Subset(val.dataset, test_idx), batch_size=128)


def test_cifar_resnet20_family_from_the_checkpoint_lowers_the_training_loss() -> None:
    """Regression (docs/lcs.md, CIFAR-10): from scratch an instance-norm ResNet-20 stayed at chance (loss ≈ ln 10)
    for 50–100 steps, so every family member and single model scored ~10%; started from the trained checkpoint a
    few sandwich steps must lower the loss of a fixed batch of test images clearly."""
    from safetensors.torch import load_file

    train, val = _cifar_or_skip()
    torch.manual_seed(0)
    fam = LcsFamily.create(ModelRef("resnet20", {"norm": "in"}), "width", line_convs=False, init=load_file(str(_CKPT)))
    xb, yb = next(iter(val))

    def loss_at(a: float) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(fam.line_at(a)(xb), yb))

    before = {a: loss_at(a) for a in (0.0, 1.0)}
    train_lines(fam.net, fam.state, train, epochs=1, lr=0.05, n_samples=2, seed=0)
    after = {a: loss_at(a) for a in (0.0, 1.0)}
    assert after[1.0] < before[1.0] - 0.15, (before, after)          # full width: 2.63 -> 2.31 when written
    assert after[0.0] + after[1.0] < before[0.0] + before[1.0] - 0.15, (before, after)
