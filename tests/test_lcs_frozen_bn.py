"""LCS opt-in ``frozen_bn`` (issue 20): batch norm with its statistics frozen at the checkpoint's for every α and
γ/β on the line; members are ordinary batch-norm models that hwloop rebuilds from their plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods.lcs import LcsFamily, LineNorm, to_lines, train_lines
from hwloop.models import ModelRef

torch.set_num_threads(1)
BN_REF = ModelRef("small_cnn", input_shape=(1, 8, 8))


def _trained_bn(seed: int = 0, ref: ModelRef = BN_REF) -> nn.Module:
    """A batch-norm model with non-trivial statistics and affine parameters (as a trained checkpoint has)."""
    torch.manual_seed(seed)
    bn = ref.build()
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    return bn.eval()


def _family(bn: nn.Module) -> LcsFamily:
    return LcsFamily.create(BN_REF, "width", line_convs=False, init=bn.state_dict(), frozen_bn=True)


def test_full_width_member_is_the_checkpoint_and_narrow_members_are_bn_models_with_sliced_statistics() -> None:
    bn = _trained_bn()
    fam = _family(bn)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fam.at(1.0).model(x), bn(x), atol=1e-5)
        assert torch.allclose(fam.line_at(1.0)(x), bn(x), atol=1e-5)
    half = fam.at(1 / 3)   # width 0.5
    assert half.level["width"] == pytest.approx(0.5)
    mods = dict(half.model.named_modules())
    assert isinstance(mods["features.1"], nn.BatchNorm2d) and mods["features.1"].num_features == 8
    assert torch.equal(mods["features.1"].running_mean, bn.features[1].running_mean[:8])
    assert torch.equal(mods["features.1"].running_var, bn.features[1].running_var[:8])
    with torch.no_grad():   # the real member computes what the line model computes at that alpha
        assert torch.allclose(half.model(x), fam.line_at(1 / 3)(x), atol=1e-5)
    # its plan rebuilds a model of the same shapes (hwloop.compress:from_plan, as every hwloop tool reads it)
    rebuilt = ModelRef("hwloop.compress:from_plan", {"plan": half.plan.to_dict()}, input_shape=(1, 8, 8)).build()
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in half.model.state_dict().items()}


def test_training_moves_the_norm_lines_and_never_the_statistics(tmp_path: Path) -> None:
    from hwloop.search.train import make_task

    bn = _trained_bn(1)
    fam = _family(bn)
    norms = {n: m for n, m in fam.net.named_modules() if isinstance(m, LineNorm)}
    assert norms and all(m.kind == "fbn" for m in norms.values())
    stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    w1 = {n: m.weight1.detach().clone() for n, m in norms.items()}
    task = make_task("digits", "small_cnn", train_limit=64, batch_size=32)
    train_lines(fam.net, fam.state, task.train, epochs=1, lr=0.05, n_samples=3, seed=0)
    for n, m in norms.items():   # train mode did not touch the frozen statistics
        assert torch.equal(m.running_mean, stats[n][0]) and torch.equal(m.running_var, stats[n][1]), n
    assert any(not torch.equal(m.weight1, w1[n]) for n, m in norms.items())
    x = torch.randn(3, 1, 8, 8)
    fam.save(tmp_path / "fam")
    back = LcsFamily.load(tmp_path / "fam")
    assert back.flags["frozen_bn"] is True
    with torch.no_grad():
        for a in (0.0, 0.5, 1.0):
            assert torch.allclose(back.at(a).model(x), fam.at(a).model(x), atol=1e-6), a


def test_frozen_bn_is_width_only_and_batch_norm_is_still_refused_without_it() -> None:
    with pytest.raises(SearchError) as e:
        to_lines(_trained_bn(), "topk", frozen_bn=True)
    assert "frozen_bn is for mode 'width'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SearchError, match="or frozen_bn=True in width mode"):
        to_lines(BN_REF.build(), "width")


def test_fold_statistics_makes_the_narrow_endpoint_compute_the_recalibrated_member() -> None:
    from hwloop.search.train import make_task

    bn = _trained_bn(2)
    fam = _family(bn)
    task = make_task("digits", "small_cnn", train_limit=256, batch_size=64, seed=0)
    data = [xy for xy, _ in zip(task.train, range(3))]   # the same three batches for both (the loader reshuffles)
    # the reference: the width-0.25 member with its batch norms re-estimated on the same batches (eval afterwards)
    ref = fam.at(0.0).model
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for x, _ in data:
            ref(x)
    ref.eval()
    frozen = {n: m.running_var.clone() for n, m in fam.net.named_modules() if isinstance(m, LineNorm)}
    full_before = fam.at(1.0).model
    moved = fam.fold_statistics(data, alpha=0.0, batches=3)
    assert moved["layers"] == 3 and moved["mean_abs_log_scale"] > 0.01
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fam.at(0.0).model(x), ref(x), atol=1e-4)
        assert torch.allclose(fam.at(1.0).model(x), full_before(x), atol=1e-6)   # the other endpoint is untouched
    for n, m in fam.net.named_modules():   # the frozen statistics did not move: nothing to re-estimate on a device
        if isinstance(m, LineNorm):
            assert torch.equal(m.running_var, frozen[n])
    with pytest.raises(SearchError, match="must be an endpoint"):
        fam.fold_statistics(data, alpha=0.5)
    in_fam = LcsFamily.create(ModelRef("small_cnn", {"norm": "in"}, input_shape=(1, 8, 8)), "width")
    with pytest.raises(SearchError, match="for frozen_bn families"):
        in_fam.fold_statistics(data)


def test_clip_grad_bounds_each_step_and_bad_values_are_one_line() -> None:
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", train_limit=64, batch_size=64)
    fam = _family(_trained_bn(3))
    before = {n: p.detach().clone() for n, p in fam.net.named_parameters()}
    lr, clip = 0.1, 0.01
    train_lines(fam.net, fam.state, task.train, epochs=1, lr=lr, momentum=0.0, weight_decay=0.0, n_samples=3,
                seed=0, max_steps=1, clip_grad=clip)
    step = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum() for n, p in fam.net.named_parameters()))
    # one plain SGD step (cosine lr = lr at step 0): the update's norm is lr * the clipped gradient norm
    assert 0 < float(step) <= lr * clip * 1.001
    with pytest.raises(SearchError) as e:
        train_lines(fam.net, fam.state, task.train, epochs=1, lr=lr, clip_grad=-1.0)
    assert "clip_grad=-1.0 must be >= 0" in str(e.value) and "\n" not in str(e.value)
