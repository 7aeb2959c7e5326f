"""OBC (issue 17): ExactOBS against exhaustive search, recorded losses against the real output error, OBQ on its
grid and better than round-to-nearest, 2:4, the knapsack DP against brute force, structured levels removed for
real, the database file round trip, and the method's config errors."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch

from hwloop.errors import SearchError
from hwloop.methods import make_method
from hwloop.methods.obc.dp import knapsack, solve_savings
from hwloop.methods.obc.exactobs import (
    block_database,
    mse_scales,
    nm_prune,
    obq_quantize,
    obs_rows,
    qmax_of,
    quantize_rtn,
    unstructured_database,
)

torch.set_num_threads(1)


def _layer(rows: int, d: int, n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight, correlated inputs X (d × n) and H = 2XXᵀ/n, float64."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 + torch.eye(d, dtype=torch.float64)
    X = mix @ torch.randn(d, n, generator=g, dtype=torch.float64)
    W = torch.randn(rows, d, generator=g, dtype=torch.float64)
    return W, X, 2 * X @ X.T / n


def _err(W: torch.Tensor, Wh: torch.Tensor, X: torch.Tensor) -> float:
    return float(((W.reshape(W.shape[0], -1) - Wh.reshape(W.shape[0], -1).to(W.dtype)) @ X).pow(2).sum() / X.shape[1])


def _best_removal(w: torch.Tensor, H: torch.Tensor, k: int) -> float:
    """The optimum over every set of k removed inputs of ½ δᵀHδ with optimal compensation of the rest."""
    d = w.numel()
    best = math.inf
    for S in itertools.combinations(range(d), k):
        keep = [i for i in range(d) if i not in S]
        s = list(S)
        wp = torch.zeros_like(w)
        wp[keep] = w[keep] + torch.linalg.solve(H[keep][:, keep], H[keep][:, s] @ w[s])
        best = min(best, float((w - wp) @ H @ (w - wp)) / 2)
    return best


def _first_layer(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained small CNN's first conv (16 rows × 9 inputs) and its Hessian on 256 digits: a real small layer."""
    from hwloop.methods.obc.exactobs import collect_hessians

    task, model, _ = digits
    H = collect_hessians(model, ["features.0"], [x for x, _ in task.train])["features.0"]
    return model.features[0].weight.detach().reshape(16, -1).double(), H


def test_exactobs_equals_exhaustive_at_one_removal_and_is_near_optimal_beyond(digits) -> None:
    W, H = _first_layer(digits)
    _, losses, _ = obs_rows(W, torch.linalg.inv(H), steps=9)
    cum = losses.cumsum(1)
    per_row = [[0.0] + [_best_removal(W[i], H, k) for k in range(1, 10)] for i in range(W.shape[0])]
    for i in range(W.shape[0]):
        assert cum[i, 0].item() == pytest.approx(per_row[i][1], rel=1e-9)      # one removal: the optimum
        assert cum[i, 1].item() <= 1.05 * per_row[i][2] + 1e-12                # two: within 5%
        for k in range(3, 10):                                                  # beyond: measured up to 1.77x
            assert cum[i, k - 1].item() <= 2.0 * per_row[i][k] + 1e-12, (i, k)

    def layer_opt(m: int) -> float:     # the best split of m removals over the rows (a DP over rows)
        best = [0.0] + [math.inf] * m
        for row in per_row:
            best = [min(best[t - k] + row[k] for k in range(min(t, 9) + 1)) for t in range(m + 1)]
        return best[m]

    levels = [s / 10 for s in range(1, 10)]
    db = unstructured_database(W, H, levels)
    ratios = {}
    for s in levels:
        m = math.ceil(W.numel() * s - 1e-9)
        assert int((db.weights[s] == 0).sum()) == m
        ratios[s] = db.loss[s] / layer_opt(m)
        assert ratios[s] >= 1 - 1e-9
    # the layer (global allocation of one greedy pass): within 5% of the optimum up to 20% sparsity; measured
    # 1.12-1.19x at 30-60% (docs/obc.md), so beyond it is held to 1.25x
    assert all(ratios[s] <= 1.05 for s in (0.1, 0.2)), ratios
    assert all(r <= 1.25 for r in ratios.values()), ratios


@pytest.mark.parametrize("kind", ["unstructured", "obq", "n:m", "block"])
def test_recorded_loss_is_the_real_output_error(kind: str) -> None:
    W, X, H = _layer(6, 32, seed=2)          # a conv with 8 input channels × 2×2 kernel, flattened
    W4 = W.reshape(6, 8, 2, 2)
    if kind == "unstructured":
        db = unstructured_database(W4, H, [0.25, 0.5, 0.9])
        pairs = [(db.weights[s], db.loss[s]) for s in db.loss]
        assert [int((db.weights[s] == 0).sum()) for s in (0.25, 0.5, 0.9)] == [48, 96, 173]
    elif kind == "obq":
        pairs = [obq_quantize(W4, H, b) for b in (4, 3, 2)]
    elif kind == "n:m":
        pairs = [nm_prune(W4, H, 2, 4)]
    else:
        db = block_database(W4, H, [0.75, 0.5, 0.25])
        pairs = [(db.weights[s], db.loss[s]) for s in db.loss]
    for Wh, loss in pairs:
        assert loss == pytest.approx(_err(W, Wh, X), rel=1e-7, abs=1e-12)


def test_recorded_loss_in_float32_is_close() -> None:
    W, X, H = _layer(16, 64, seed=3)
    Wq, loss = obq_quantize(W.float(), H, 4, dtype=torch.float32)
    assert loss == pytest.approx(_err(W, Wq, X), rel=1e-3)


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_obq_lies_on_its_grid_and_beats_round_to_nearest(bits: int) -> None:
    W, X, H = _layer(16, 48, seed=4)
    s = mse_scales(W, bits)
    Wq, _ = obq_quantize(W, H, bits, scale=s)
    q = Wq / s[:, None]
    assert torch.allclose(q, q.round(), atol=1e-9) and int(q.round().abs().max()) <= qmax_of(bits)
    rtn = quantize_rtn(W, s, bits)
    assert _err(W, Wq, X) < _err(W, rtn, X)
    if bits <= 4:
        assert _err(W, Wq, X) < 0.8 * _err(W, rtn, X)


def test_every_2_4_group_has_two_zeros() -> None:
    W, _X, H = _layer(5, 10 * 9, seed=5)      # 10 input channels (the last run of 2 keeps both) × 3×3
    W4 = W.reshape(5, 10, 3, 3)
    Wn, _ = nm_prune(W4, H, 2, 4)
    runs = Wn[:, :8].reshape(5, 2, 4, 9)
    assert int((runs == 0).sum(2).min()) >= 2
    from hwloop.compress.sparsity import sparsity_mask

    keep = sparsity_mask(Wn, "n:m", n=2, m=4)          # the plan's Sparsify replay keeps exactly these weights
    assert torch.equal(torch.where(keep, Wn, torch.zeros_like(Wn)), Wn)


def test_dp_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(6)
    for trial in range(20):
        err = (torch.rand(3, 3, generator=g, dtype=torch.float64) * 10).tolist()
        cost = (torch.rand(3, 3, generator=g, dtype=torch.float64) * 5).tolist()
        budget = float(torch.rand(1, generator=g)) * 12
        best = None
        for ch in itertools.product(range(3), repeat=3):
            c = sum(cost[u][li] for u, li in enumerate(ch))
            e = sum(err[u][li] for u, li in enumerate(ch))
            # the DP rounds costs up to buckets of budget/10000: compare on the same rounded costs
            cb = sum(math.ceil(cost[u][li] / (budget / 10_000) - 1e-9) for u, li in enumerate(ch))
            if cb <= 10_000 and c <= budget and (best is None or e < best[0]):
                best = (e, list(ch))
        got = knapsack(err, cost, budget)
        if best is None:
            assert got is None
        else:
            assert got is not None and got[1] == pytest.approx(best[0]), trial
    # savings form: Σ saving >= required
    sv = [[0.0, 1.0, 2.0], [0.0, 0.5, 3.0], [0.0, 2.0, 2.5]]
    er = [[0.0, 1.0, 5.0], [0.0, 0.1, 4.0], [0.0, 2.0, 2.1]]
    levels, e = solve_savings(er, sv, 3.0)
    assert sum(s[li] for s, li in zip(sv, levels)) >= 3.0 and e == pytest.approx(3.1)
    assert solve_savings(er, sv, 7.6) is None


@pytest.fixture(scope="module")
def digits(digits_pretrained):
    return digits_pretrained  # tests/conftest.py


def test_structured_levels_remove_channels_and_the_rebuilt_model_equals_the_stitched(digits, tmp_path) -> None:
    from hwloop.compress.extract import load_compressed, save_compressed
    from hwloop.methods.base import MethodContext
    from hwloop.methods.obc.database import load_database, save_database
    from hwloop.methods.obc.structured import apply_group_
    from hwloop.search.latency import SurrogateLatency

    task, model, space = digits
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn,
                        latency=SurrogateLatency(space), target=0.5)
    meth = make_method("obc", {"calib": 128, "error_images": 64, "channel_levels": [0.75, 0.5, 0.25],
                               "kinds": ["channels", "bits"], "bits": [4], "bn_reestimate": False})
    db, calib = meth.database(ctx, copy.deepcopy(model))
    groups = [u for u in db.units if u.kind == "group"]
    assert groups and all(len(u.levels) == 4 for u in groups)
    for u in groups:      # the recorded loss is the consumers' summed output error at the dense inputs
        assert u.group is not None
        k = u.levels[2]
        real = 0.0
        for n, w in u.group.weights[k].items():
            W0 = dict(model.named_modules())[n].weight.detach().reshape(w.shape[0], -1).double()
            d = W0 - w.reshape(w.shape[0], -1).double()
            real += float(torch.einsum("ri,ij,rj->", d, db.hessians[n], d) / 2)
        assert u.group.loss[k] == pytest.approx(real, rel=1e-3)
        assert int(u.group.masks[k].sum()) == k
    choice = [2 if u.kind == "group" else 1 for u in db.units]    # every group at half width, every layer at w4
    net = meth.stitch(ctx, model, db, choice, calib)
    masked = copy.deepcopy(model)                   # the same choice by masking, without quantization
    for u, li in zip(db.units, choice):
        if u.kind == "group":
            assert u.group is not None
            apply_group_(masked, u.group.info, u.group.masks[u.levels[li]], u.group.weights[u.levels[li]])
    widths = {g.key: g.channels for g in space.graph.groups}
    assert net.features[0].out_channels == groups[0].levels[2] < widths["features.0"]
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.parameters())
    plan = meth.arch_plan(ctx, db, choice)
    assert {a.kind for a in plan.actions} == {"channel_prune", "quantize"}
    x = next(iter(task.train))[0]
    rebuilt, _ = load_compressed(save_compressed(net, plan, tmp_path / "c"))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
        meth_f = make_method("obc", {**meth.config.to_dict(), "kinds": ["channels"], "bits": [4]})
        chf = [li for u, li in zip(db.units, choice) if u.kind == "group"]
        dbf = copy.copy(db)
        dbf.units = groups
        unquantized = meth_f.stitch(ctx, model, dbf, chf, calib)
        assert torch.allclose(unquantized(x), masked(x), atol=1e-5)   # physically removed == masked
    save_database(db, str(tmp_path / "db.safetensors"))
    back = load_database(str(tmp_path / "db.safetensors"))
    assert [u.levels for u in back.units] == [u.levels for u in db.units]
    assert [u.errors for u in back.units] == [u.errors for u in db.units]
    again = meth.stitch(ctx, model, back, choice, calib)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_cli_compresses_a_checkpoint_to_a_measured_budget(digits, tmp_path, capsys) -> None:
    import json

    from safetensors.torch import save_file

    from hwloop.cli import main
    from hwloop.compress.extract import load_compressed

    _, model, _ = digits
    ck = tmp_path / "small_cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ck))
    out = tmp_path / "run"
    args = ["search", "obc", str(ck), "--model", "small_cnn", "--task", "digits", "--calib", "128",
            "--device", "asic-tpu32", "--target", "0.5", "--out", str(out), "--no-progress", "--eval-limit", "128"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["measured_ratio"] <= 0.5 * 1.05 and m["status"] in ("met", "met-by-repair")
    assert m["extra"]["dp_first_whole_ratio"] == pytest.approx(m["search_ratio"])
    net, plan = load_compressed(out)
    assert plan.widths and sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.parameters())
    capsys.readouterr()
    assert main([*args[:2], str(tmp_path / "nope.safetensors"), *args[3:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "\n" not in err
    assert main([*args[:2], str(ck), "--model", "resnet20", "--task", "digits"]) == 2   # resnet20 is not a digits model


@pytest.mark.parametrize("table, needle", [
    ({"kinds": ["channels", "pixels"]}, "kinds=['channels', 'pixels'] must be a non-empty list of channels"),
    ({"channel_levels": [0.5, 1.5]}, "channel_levels=[0.5, 1.5] must be a non-empty list of numbers in (0, 1]"),
    ({"bits": [1]}, "bits=[1] must be a non-empty list of ints in [2, 16]"),
    ({"calib": 0}, "calib=0 must be an int >= 1"),
    ({"cost_source": "flops"}, "cost_source='flops' is unknown; allowed: latency, table"),
    ({"check": "guess"}, "check='guess' is unknown; allowed: latency, device"),
    ({"bn_mode": "ema"}, "bn_mode='ema' is unknown; allowed: reset, blend"),
    ({"bn_data": "test"}, "bn_data='test' is unknown; allowed: train, calib"),
])
def test_bad_config_is_one_line(table: dict, needle: str) -> None:
    with pytest.raises(SearchError) as e:
        make_method("obc", table)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_no_budget_is_refused() -> None:
    with pytest.raises(SearchError, match="needs a budget"):
        make_method("obc").check(None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    W, _X, H = _layer(8, 36, seed=7)
    Wc, lc = obq_quantize(W.cuda(), H.cuda(), 4)
    Wp, lp = obq_quantize(W, H, 4)
    assert Wc.device.type == "cuda" and lc == pytest.approx(lp, rel=1e-6)
    assert torch.allclose(Wc.cpu(), Wp, atol=1e-9)


def test_bn_reestimation_modes() -> None:
    from torch import nn

    from hwloop.methods.obc.structured import reestimate_bn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    xs = [torch.randn(16, 3, 8, 8) * 2 + 1 for _ in range(4)]
    with torch.no_grad():
        y = net[0](torch.cat(xs))
    bn = net[1]
    reestimate_bn(net, xs)                  # reset: the cumulative average of the batch statistics
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and not net.training
    prior = torch.full((4,), 5.0)
    bn.running_mean.copy_(prior)
    reestimate_bn(net, xs[:1], mode="blend")   # blend: one momentum step from the trained statistics
    with torch.no_grad():
        m1 = net[0](xs[0]).mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, 0.9 * prior + 0.1 * m1, atol=1e-5)
    with pytest.raises(SearchError, match=r"mode='cumulative' is unknown; allowed: reset, blend"):
        reestimate_bn(net, xs, mode="cumulative")


def test_bn_data_train_draws_from_the_training_loader_once(digits) -> None:
    """``bn_data="train"`` re-estimates on images from the context's training loader as it gives them (the same
    draw for every target of a run); ``"calib"`` on the calibration images."""
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency

    task, model, space = digits
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.5)
    calib = [(torch.zeros(8, *x.shape[1:]), y[:8]) for x, y in [next(iter(task.train))]]
    meth = make_method("obc", {})
    assert meth.config.bn_data == "train"
    a, b = meth.bn_batches(ctx, calib), meth.bn_batches(ctx, calib)
    assert sum(len(x) for x in a) == 8 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].abs().sum() > 0          # training images, not the (zero) calibration batch
    assert torch.equal(make_method("obc", {"bn_data": "calib"}).bn_batches(ctx, calib)[0], calib[0][0])


def test_cpu_check_is_an_interleaved_ratio(digits) -> None:
    """On the CPU the whole-model check is one interleaved comparison against the dense model, not two absolute
    latencies measured at different times (and not a layer sum against a whole model)."""
    from hwloop.methods.base import MethodContext
    from hwloop.search.latency import SurrogateLatency

    task, model, space = digits
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=None,
                        latency=SurrogateLatency(space), target=0.5, device="local-cpu")
    meth = make_method("obc", {"check": "device", "kinds": ["channels"], "calib": 64})
    assert meth.interleaved(ctx)
    assert not make_method("obc", {"check": "latency"}).interleaved(ctx)
    assert not meth.interleaved(dataclasses.replace(ctx, device="asic-tpu32"))
    from hwloop.compress.actions import ChannelPrune
    from hwloop.compress.plan import CompressionPlan

    g = space.graph.groups[0]
    half = CompressionPlan(base=task.ref.to_dict(), actions=[ChannelPrune(g.key, g.channels // 2)])
    r, whole, info = meth.whole_ratio(ctx, model, half, 2.0)
    lo, hi = info["ratio_ci"]
    assert 0.0 < lo <= r <= hi < 1.5 and whole == pytest.approx(2.0 * r)
