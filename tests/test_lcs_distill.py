"""LCS opt-in in-place distillation (issue 20; Yu & Huang 2019): the α = 1 member on the labels, narrower members on
its detached softmax; ``distill = 0`` is the unchanged loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.lcs import LcsFamily, train_lines
from hwloop.methods.lcs.train import distill_loss
from hwloop.models import ModelRef

torch.set_num_threads(1)
REF = ModelRef("small_cnn", {"norm": "in"}, input_shape=(1, 8, 8))
LR = 0.1


def _family() -> LcsFamily:
    torch.manual_seed(0)
    return LcsFamily.create(REF, "width")


def _loader(n: int = 32) -> DataLoader[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=n, shuffle=False)   # one fixed batch


def _train(fam: LcsFamily, **kw: float) -> dict[str, torch.Tensor]:
    """One plain SGD step (no momentum, no weight decay, no cos²; cosine lr = LR at step 0), α = 0 and 1."""
    train_lines(fam.net, fam.state, _loader(), epochs=1, lr=LR, momentum=0.0, weight_decay=0.0, beta=0.0,
                n_samples=2, seed=0, **kw)
    return {k: v.detach().clone() for k, v in fam.net.state_dict().items()}


def _manual(fam: LcsFamily, *, distill: bool, detach: bool = True) -> dict[str, torch.Tensor]:
    """The same step written out: CE at α = 1 then, for α = 0, KL to α = 1's softmax (or CE at α = 0 then 1)."""
    net, st = fam.net, fam.state
    net.train()
    x, y = next(iter(_loader()))
    net.zero_grad(set_to_none=True)
    if distill:
        st.set(1.0, 0)
        wide = net(x)
        F.cross_entropy(wide, y).backward(retain_graph=not detach)
        teacher = F.softmax(wide.detach() if detach else wide, dim=1)
        st.set(0.0, 0)
        F.kl_div(F.log_softmax(net(x), dim=1), teacher, reduction="batchmean").backward()
    else:
        for a in (0.0, 1.0):
            st.set(a, 0)
            F.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-LR)
    st.set(1.0, 1)
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_distill_loss_at_1_is_the_kl_to_the_detached_teacher() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(6, 10, generator=g).requires_grad_(True)
    teacher_logits = torch.randn(6, 10, generator=g).requires_grad_(True)
    y = torch.randint(0, 10, (6,), generator=g)
    pt = F.softmax(teacher_logits, dim=1)
    loss = distill_loss(student, y, pt, 1.0)
    ls, lt = F.log_softmax(student, dim=1), F.log_softmax(teacher_logits, dim=1)
    kl = float((lt.exp() * (lt - ls)).sum(dim=1).mean().detach())
    assert math.isclose(float(loss), kl, rel_tol=1e-5) and kl > 0
    loss.backward()
    assert teacher_logits.grad is None and student.grad is not None and float(student.grad.abs().sum()) > 0
    half = distill_loss(student, y, pt, 0.5)
    assert math.isclose(float(half), 0.5 * float(F.cross_entropy(student, y)) + 0.5 * kl, rel_tol=1e-5)
    assert torch.equal(distill_loss(student, y, pt, 0.0), F.cross_entropy(student, y))
    assert torch.equal(distill_loss(student, y, None, 1.0), F.cross_entropy(student, y))   # α = 1: the labels


def test_distill_1_step_is_ce_at_alpha_1_plus_kl_to_its_detached_output() -> None:
    got = _train(_family(), distill=1.0)
    want = _manual(_family(), distill=True)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-5), k
    # the checks can fail: a teacher that is not detached (gradient into α = 1 through its targets) or plain CE
    # at both α give other steps
    leaky = _manual(_family(), distill=True, detach=False)
    plain = _manual(_family(), distill=False)
    for other in (leaky, plain):
        assert max(float((got[k] - other[k]).abs().max()) for k in got) > 1e-4


def test_distill_0_is_bit_identical_to_the_default_loop() -> None:
    # the first half only guards the default value (distill=0.0 is the default); the second half is the check
    base, zero = _family(), _family()
    kw = dict(epochs=1, lr=0.05, n_samples=3, seed=3, max_steps=2)
    loader = _loader(16)
    torch.manual_seed(5)
    train_lines(base.net, base.state, loader, **kw)   # type: ignore[arg-type]
    torch.manual_seed(5)
    train_lines(zero.net, zero.state, loader, distill=0.0, **kw)   # type: ignore[arg-type]
    for k, v in base.net.state_dict().items():
        assert torch.equal(v, zero.net.state_dict()[k]), k
    # and the default loop is plain cross-entropy at α = 0 then 1, summed (the loop before distillation existed)
    got = _train(_family(), distill=0.0)
    want = _manual(_family(), distill=False)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-7, rtol=0), k


def test_bad_distill_values_are_one_line_errors() -> None:
    fam = _family()
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(SearchError) as e:
            train_lines(fam.net, fam.state, _loader(), epochs=1, lr=LR, distill=bad)
        assert "distill=" in str(e.value) and "must be a number in [0, 1]" in str(e.value)
        assert "\n" not in str(e.value)
    top = LcsFamily.create(ModelRef("small_cnn", {"norm": "gn"}, input_shape=(1, 8, 8)), "topk")
    with pytest.raises(SearchError, match="is for mode 'width'") as e2:
        train_lines(top.net, top.state, _loader(), epochs=1, lr=LR, distill=0.5)
    assert "\n" not in str(e2.value)
    assert make_method("lcs", {"epochs": 1}).config.distill == 0.0
    assert make_method("lcs", {"distill": 0.5}).config.distill == 0.5
    for cfg in ({"distill": 2.0}, {"distill": "1"}, {"mode": "topk", "norm": "gn", "distill": 0.5}):
        with pytest.raises(SearchError) as e3:
            make_method("lcs", cfg)
        assert "distill=" in str(e3.value) and "\n" not in str(e3.value)
