"""Issue 19 through the evidence harness: the harness scores a plan's quantized activations on the test set, and
SBS's uniform controls (``uniform = [w, a]``: uniform W4A4 / prune-then-quantize as ``[[methods]]`` entries)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwloop.compress.actions import Quantize
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.sbs.uniform import fit_fraction
from hwloop.search.harness import plan_accuracy

torch.set_num_threads(1)


def test_the_harness_test_score_applies_the_plans_activation_quantizer() -> None:
    """The harness scored a method's test accuracy on the float-activation model while the method's validation
    figure had its activations quantized (SBS, l1l2 with bits): plan_accuracy replays ``meta["a_quant"]``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(64, 4)
    plan = CompressionPlan(base=None, actions=[Quantize("2", 8, 2)],
                           meta={"a_quant": {"2": {"bits": 2, "amax": 0.5, "signed": False}}})

    def score(m: nn.Module) -> float:   # a "metric" that sees every activation
        with torch.no_grad():
            return float(m(x).abs().sum())

    plain = score(net)
    q = plan_accuracy(score, net, plan)
    with torch.no_grad():
        xs = torch.relu(net[0](x)).clamp(0, 0.5)
        want = float(net[2](torch.round(xs / (0.5 / 3)) * (0.5 / 3)).abs().sum())
    assert q == pytest.approx(want, rel=1e-5) and abs(q - plain) > 1e-3 * abs(plain)
    assert score(net) == plain                                  # the hooks are gone afterwards
    assert plan_accuracy(score, net, CompressionPlan(base=None, actions=[])) == plain


def test_fit_fraction_and_bad_uniform_values() -> None:
    assert fit_fraction(lambda f: f, None) == 1.0 and fit_fraction(lambda f: f, 2.0) == 1.0
    assert fit_fraction(lambda f: 1.0, 0.5) == 0.0                    # nothing fits: every group at its floor
    assert fit_fraction(lambda f: f, 0.3) == pytest.approx(0.3, abs=1e-4)
    for bad in ([4], [4, 3], [5, 4], "w4a4", [True, 4]):
        with pytest.raises(SearchError, match=r"uniform=.+ must be"):
            make_method("sbs", {"uniform": bad})


def test_the_sbs_harness_spec_has_the_issue_controls() -> None:
    """The spec runs SBS against uniform W4A4 and prune-then-quantize (as uniform entries with SBS's training images
    as fine-tune epochs) besides the harness's matched channel-pruning controls."""
    from hwloop.search.harness_spec import load_harness_spec

    repo = Path(__file__).resolve().parents[1]
    spec = load_harness_spec(repo / "search" / "bench-methods-sbs-controls-cifar10-resnet20.toml")
    opts = {m.label: dict(m.options) for m in spec.methods}
    assert opts["w4a4-uniform"]["uniform"] == [4, 4] and opts["prune-then-w8a8"]["uniform"] == [8, 8]
    for o in opts.values():
        assert o["search_epochs"] == 0 and o["finetune_epochs"] == 2   # SBS's 1 + 1 epochs of images
    assert spec.controls.run == ()
    l1 = load_harness_spec(repo / "search" / "bench-methods-sbs-l1l2bits-cifar10-resnet20.toml")
    assert [m.name for m in l1.methods] == ["l1l2"] and l1.space.bits and l1.space.a_bits == 8
    assert l1.task == spec.task                                        # the same data and starting weights
