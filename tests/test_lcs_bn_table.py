"""LCS frozen-BN opt-ins (issue 20): channels sorted by magnitude before training, training with batch statistics,
and the per-α statistics table stored with the family (interpolated between grid α, nothing re-estimated on the
device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods.lcs import LcsFamily, LineNorm, to_lines, train_lines
from hwloop.methods.lcs.bnstats import channel_order, sort_channels_, table_stats
from hwloop.models import ModelRef
from test_lcs_frozen_bn import BN_REF, _trained_bn  # the same batch-norm stand-in for a trained checkpoint

torch.set_num_threads(1)


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 8, 8)), ("resnet20", (3, 32, 32))])
def test_sort_channels_preserves_the_function_and_orders_every_group(name: str, shape: tuple[int, ...]) -> None:
    ref = ModelRef(name, input_shape=shape)
    bn = _trained_bn(ref=ref)
    x = ref.example_input().repeat(3, 1, 1, 1) + torch.randn(3, *shape)
    with torch.no_grad():
        y = bn(x)
    before = channel_order(bn, ref.example_input())
    applied = sort_channels_(bn, ref.example_input())
    assert any(o != sorted(o) for o in applied.values())   # something moved (random weights are not in order)
    with torch.no_grad():
        assert torch.allclose(bn(x), y, atol=1e-4)   # a permutation of every coupled group: the same function
    after = channel_order(bn, ref.example_input())   # now each group is in descending magnitude already
    assert set(after) == set(before)
    for key, order in after.items():
        assert order.tolist() == list(range(order.numel())), key


def test_a_sorted_family_keeps_the_largest_channels_at_every_width() -> None:
    bn = _trained_bn(seed=4)
    key = "features.0"
    order = channel_order(bn, BN_REF.example_input())[key]
    fam = LcsFamily.create(BN_REF, "width", line_convs=False, init=bn.state_dict(), frozen_bn=True, sort_channels=True)
    m = fam.at(0.0).model   # width 0.25: 4 of the first conv's 16 channels
    k = m.features[0].out_channels
    assert k == 4
    assert torch.allclose(m.features[0].weight, bn.features[0].weight[order[:k]])
    assert torch.allclose(m.features[1].running_var, bn.features[1].running_var[order[:k]])
    unsorted = LcsFamily.create(BN_REF, "width", line_convs=False, init=bn.state_dict(), frozen_bn=True).at(0.0)
    assert torch.equal(unsorted.model.features[0].weight, bn.features[0].weight[:k])
    with torch.no_grad():   # the full-width member is still the checkpoint
        x = torch.randn(4, 1, 8, 8)
        assert torch.allclose(fam.at(1.0).model(x), bn(x), atol=1e-5)
    with pytest.raises(SearchError) as e:
        LcsFamily.create(BN_REF, "width", frozen_bn=False, sort_channels=True)
    assert "sort_channels needs" in str(e.value) and "\n" not in str(e.value)


def _batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", train_limit=256, batch_size=64, seed=seed)
    return [xy for xy, _ in zip(task.train, range(n))]


def test_the_table_row_at_a_grid_alpha_is_the_recalibrated_member() -> None:
    bn = _trained_bn(seed=2)
    fam = LcsFamily.create(BN_REF, "width", line_convs=False, init=bn.state_dict(), frozen_bn=True,
                           train_stats="batch")
    data = _batches()
    with pytest.raises(SearchError) as e:   # trained with batch statistics: no member until the table exists
        fam.at(0.0)
    assert "calibrate_statistics" in str(e.value) and "\n" not in str(e.value)
    out = fam.calibrate_statistics(data, [0.0, 1 / 3, 1.0], batches=3)
    assert out["alphas"] == 3 and out["images"] == 3 * 3 * 64 and out["mean_abs_log_std_ratio"] > 0.01
    for a in (0.0, 1 / 3, 1.0):
        member = fam.at(a).model
        ref = fam.at(a).model   # the reference: the same member with its batch norms re-estimated on the same data
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        ref.train()
        with torch.no_grad():
            for x, _ in data:
                ref(x)
        ref.eval()
        for (n, m), r in zip(((n, m) for n, m in member.named_modules() if isinstance(m, nn.BatchNorm2d)),
                             (m for m in ref.modules() if isinstance(m, nn.BatchNorm2d))):
            assert torch.allclose(m.running_mean, r.running_mean, atol=1e-5), (a, n)
            assert torch.allclose(m.running_var, r.running_var, rtol=1e-4, atol=1e-5), (a, n)
        x = torch.randn(5, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(member(x), ref(x), atol=1e-4)
            assert torch.allclose(fam.line_at(a)(x), member(x), atol=1e-4)   # the line model uses the table too
    # the frozen checkpoint statistics are untouched: they only fill channels that no grid alpha has
    norm = next(m for m in fam.net.modules() if isinstance(m, LineNorm))
    assert torch.equal(norm.running_var, bn.features[1].running_var)


def test_between_grid_points_the_statistics_interpolate_and_missing_channels_come_from_the_wider_row() -> None:
    grid = torch.tensor([0.0, 0.5, 1.0])
    mean = torch.tensor([[1.0, 9.0], [3.0, 5.0], [5.0, 7.0]])
    var = mean + 1
    m, v = table_stats(grid, mean, var, 0.25)
    assert m.tolist() == [2.0, 7.0] and v.tolist() == [3.0, 8.0]
    assert table_stats(grid, mean, var, 1.0)[0].tolist() == [5.0, 7.0]
    # a real table: at alpha = 0 (width 0.25) the second norm of small_cnn (after a conv whose inputs are cut too)
    # has 8 of 32 channels, at alpha = 1/3 (width 0.5) 16; a row's channels past its width are the next row's
    fam = LcsFamily.create(BN_REF, "width", line_convs=False, init=_trained_bn(seed=3).state_dict(), frozen_bn=True,
                           train_stats="batch")
    fam.calibrate_statistics(_batches(2), [0.0, 1 / 3, 1.0], batches=2)
    norm = [m for m in fam.net.modules() if isinstance(m, LineNorm)][1]
    assert norm.num_channels == 32 and norm.table_mean is not None and norm.table_var is not None
    assert torch.equal(norm.table_var[0, 8:16], norm.table_var[1, 8:16])
    assert not torch.allclose(norm.table_var[0, :8], norm.table_var[1, :8])   # fewer inputs: other statistics
    assert torch.equal(norm.table_var[1, 16:], norm.table_var[2, 16:])
    mid = norm.stats(1 / 6)[1]
    assert torch.allclose(mid, (norm.table_var[0] + norm.table_var[1]) / 2)


def test_batch_statistics_training_keeps_the_frozen_buffers_and_the_table_round_trips(tmp_path: Path) -> None:
    from hwloop.search.train import make_task

    bn = _trained_bn(seed=5)
    fam = LcsFamily.create(BN_REF, "width", line_convs=False, init=bn.state_dict(), frozen_bn=True,
                           sort_channels=True, train_stats="batch")
    norms = [m for m in fam.net.modules() if isinstance(m, LineNorm)]
    frozen = [m.running_var.clone() for m in norms]
    first = norms[0]
    fam.net.train()
    fam.state.set(1.0)
    with torch.no_grad():   # train mode normalises by the batch: each channel's output mean is its beta
        h = fam.net.features[0](torch.randn(32, 1, 8, 8) * 3 + 2)
        out = first(h)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), first.bias1, atol=1e-4)
    task = make_task("digits", "small_cnn", train_limit=64, batch_size=32)
    g1 = first.weight1.detach().clone()
    train_lines(fam.net, fam.state, task.train, epochs=1, lr=0.05, n_samples=3, seed=0)
    assert not torch.equal(first.weight1, g1)
    assert all(torch.equal(m.running_var, f) for m, f in zip(norms, frozen))
    fam.calibrate_statistics(_batches(2), [0.0, 0.5, 1.0], batches=2)
    fam.save(tmp_path / "fam")
    back = LcsFamily.load(tmp_path / "fam")
    assert back.flags["bn_table"] == 3 and back.flags["train_stats"] == "batch" and back.flags["sort_channels"]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for a in (0.0, 0.25, 0.5, 0.9, 1.0):
            assert torch.allclose(back.at(a).model(x), fam.at(a).model(x), atol=1e-6), a
    _tampered_tables_are_refused(tmp_path / "fam")


def _tampered_tables_are_refused(src: Path) -> None:
    """A family directory is untrusted: a table size that does not match its tensors, or table values no
    calibration could give, is one line on load, never an allocation or NaN members."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    for case in ("rows", "huge", "order", "var"):
        d = src.parent / f"bad_{case}"
        shutil.copytree(src, d)
        desc = json.loads((d / "family.json").read_text())
        state = load_file(str(d / "endpoints.safetensors"))
        if case in ("rows", "huge"):
            desc["flags"]["bn_table"] = -1 if case == "rows" else 10 ** 9
            (d / "family.json").write_text(json.dumps(desc))
        else:
            key = next(k for k in state if k.endswith(".table_alpha" if case == "order" else ".table_var"))
            v = state[key].clone()
            if case == "order":
                v[0], v[-1] = v[-1].clone(), v[0].clone()
            else:
                v[0, 0] = -1.0
            state[key] = v
            save_file(state, str(d / "endpoints.safetensors"))
        with pytest.raises(SearchError) as e:
            LcsFamily.load(d)
        assert "\n" not in str(e.value) and ("bn_table" in str(e.value) or "table" in str(e.value)), case


def test_bad_options_are_one_line() -> None:
    from hwloop.methods import make_method

    with pytest.raises(SearchError) as e:
        to_lines(_trained_bn(), "width", frozen_bn=True, train_stats="running")
    assert "train_stats='running' is unknown; allowed: frozen, batch" in str(e.value)
    with pytest.raises(SearchError, match="is for frozen_bn families"):
        to_lines(ModelRef("small_cnn", {"norm": "in"}, input_shape=(1, 8, 8)).build(), "width", train_stats="batch")
    in_fam = LcsFamily.create(ModelRef("small_cnn", {"norm": "in"}, input_shape=(1, 8, 8)), "width")
    with pytest.raises(SearchError, match="for frozen_bn families"):
        in_fam.calibrate_statistics(_batches(1))
    fam = LcsFamily.create(BN_REF, "width", line_convs=False, init=_trained_bn().state_dict(), frozen_bn=True,
                           train_stats="batch")
    for take in (fam.at, fam.line_at):   # no table yet: neither a member nor the line model at an alpha
        with pytest.raises(SearchError, match="has no statistics table yet"):
            take(0.5)
    for kw, needle in (({"alphas": [0.0, 1.5]}, "must be a non-empty list of values in [0, 1]"),
                       ({"batches": 0}, "batches=0 must be >= 1")):
        with pytest.raises(SearchError) as e:
            fam.calibrate_statistics(_batches(1), **kw)   # type: ignore[arg-type]
        assert needle in str(e.value) and "\n" not in str(e.value)
    for cfg, needle in (({"train_stats": "batch"}, "train_stats='batch' must be 'frozen' or 'batch', and 'batch' "
                                                   "only with norm='frozen_bn'"),
                        ({"norm": "frozen_bn", "calib_batches": 0}, "calib_batches=0 must be an integer >= 1"),
                        ({"sort_channels": True, "init": "scratch"}, "sort_channels=True must be false unless"),
                        ({"sort_channels": True}, "and norm='frozen_bn' (the sort permutes batch-norm channels)"),
                        ({"sort_channels": "no"}, "sort_channels='no' must be"),
                        ({"norm": "frozen_bn", "calib_batches": 2.5}, "calib_batches=2.5 must be"),
                        ({"norm": "frozen_bn", "train_stats": "batch", "fold_start": 4},
                         "fold_start=4 must be 0 with train_stats='batch'")):
        with pytest.raises(SearchError) as e:
            make_method("lcs", cfg)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_method_stores_a_table_with_the_family() -> None:
    from hwloop.methods import make_method
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task, train_epochs

    task = make_task("digits", "small_cnn", train_limit=128, val_limit=128, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 1, 0.05)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(), model=model)
    ctx = MethodContext(model=model.eval(), ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn,
                        latency=SurrogateLatency(space), target=0.6, device="asic-tpu32", seed=0)
    res = make_method("lcs", {"norm": "frozen_bn", "train_stats": "batch", "sort_channels": True, "epochs": 1,
                              "max_steps": 2, "grid": 3, "calib_batches": 2, "lr": 0.05}).run(ctx)
    fam = res.family
    assert fam is not None and fam.flags["bn_table"] == 3
    assert {c.extra["alpha"] for c in res.candidates} == {0.0, 0.5, 1.0}
    assert "calibrate" in {r.phase for r in ctx.ledger.records}   # type: ignore[union-attr]
