"""Fine-tuning a sparsified model keeps its zeros (`hwloop.compress.sparsity.sparsity_kept`): the pattern of every
`Sparsify` action survives SGD with momentum and weight decay, the plan's replay on the trained weights changes
nothing, and LCS's topk members keep them through their fine-tune (a plain fine-tune regrows the zeros: the
control)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hwloop.compress.actions import Sparsify
from hwloop.compress.sparsity import SparsifyHandler, sparsity_kept

torch.set_num_threads(1)

PATTERNS = [Sparsify("0", "unstructured", density=0.3), Sparsify("0", "n:m", n=2, m=4),
            Sparsify("0", "block", density=0.5, block=(4, 4))]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))


def _train(net: nn.Module, steps: int = 5) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 8, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("action", PATTERNS, ids=lambda a: a.pattern)
def test_fine_tuning_keeps_every_pattern_and_the_replay_changes_nothing(action: Sparsify) -> None:
    net = _net()
    SparsifyHandler().apply(net, [action], None)
    zeros = net[0].weight.detach() == 0
    assert zeros.any()
    control = copy.deepcopy(net)
    with sparsity_kept(net, [action]) as held:
        _train(net)
    _train(control)
    assert held == ["0"]
    w = net[0].weight.detach()
    assert torch.equal(w == 0, zeros)                      # the same zeros, no more, no fewer
    assert not torch.equal(w, control[0].weight.detach())  # it trained
    assert (control[0].weight.detach()[zeros] != 0).all()  # the control: a plain fine-tune regrows them
    replayed = copy.deepcopy(net)
    SparsifyHandler().apply(replayed, [action], None)
    assert torch.equal(replayed[0].weight, net[0].weight)
    assert set(net.state_dict()) == set(_net().state_dict())   # weight is a plain parameter again
    assert isinstance(net[0].weight, nn.Parameter)


def test_an_error_inside_the_block_leaves_a_plain_model_and_other_actions_are_ignored() -> None:
    from hwloop.compress.actions import ChannelPrune
    from hwloop.errors import CompressionError

    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with sparsity_kept(net, [ChannelPrune("0", 4), PATTERNS[0]]) as held:
            assert held == ["0"] and hasattr(net[0], "weight_orig")
            raise RuntimeError("boom")
    assert not hasattr(net[0], "weight_orig") and isinstance(net[0].weight, nn.Parameter)
    twice = [Sparsify("0", "unstructured", density=0.5), Sparsify("0", "n:m", n=2, m=4)]   # two on one layer
    with sparsity_kept(net, twice) as held:
        _train(net)
    assert held == ["0", "0"] and not hasattr(net[0], "weight_orig")          # removed once, no error on exit
    with pytest.raises(CompressionError, match="'1' has no conv/linear weight"):
        with sparsity_kept(net, [Sparsify("1", "unstructured", density=0.5)]):
            pass


def test_lcs_fine_tune_keeps_each_topk_members_sparsity() -> None:
    """LCS's topk family with `finetune_epochs = 1`: every member's zeros after its fine-tune are its plan's (the
    count the plan's density keeps), and replaying the plan on the fine-tuned weights changes nothing."""
    from hwloop.methods import make_method
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", train_limit=128, val_limit=64, seed=0)
    torch.manual_seed(0)
    model = task.ref.build().eval()
    space = SearchSpace.from_ref(task.ref, SpaceOptions(), model=model)
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.6, device="asic-tpu32", seed=0)
    res = make_method("lcs", {"mode": "topk", "norm": "gn", "epochs": 1, "max_steps": 2, "grid": 3, "lr": 0.05,
                              "finetune_epochs": 1}).run(ctx)
    assert "finetune" in {r.phase for r in ctx.ledger.records}   # type: ignore[union-attr]
    checked = 0
    x = next(iter(task.train))[0][:8]
    for cand in res.candidates:
        sparse = [a for a in cand.plan.actions if isinstance(a, Sparsify)]
        mods = dict(cand.model.named_modules())
        for a in sparse:
            w = mods[a.layer].weight.detach()
            assert a.density is not None
            assert int((w != 0).sum()) == max(1, round(a.density * w.numel())), (cand.setting, a.layer)
            checked += 1
        replayed = copy.deepcopy(cand.model)
        SparsifyHandler().apply(replayed, sparse, None)
        with torch.no_grad():
            assert torch.equal(replayed.eval()(x), cand.model.eval()(x))
    assert checked > 0
