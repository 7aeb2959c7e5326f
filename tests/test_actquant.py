"""hwloop's one activation quantizer (``hwloop.compress.actquant``, issue 19 session 6): unsigned codes after a ReLU,
least-error ranges, the plans' replay, and the l1l2 search's fine-tune path that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwloop.compress.actquant import quantize_act, quantized_activations
from hwloop.compress.extract import get_module
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import CompressionError

_CKPT = Path(__file__).resolve().parents[1] / "search" / "checkpoints" / "resnet20_cifar10_converged.safetensors"


def _inputs_of(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each layer receives (after any pre-hook registered before this one, i.e. the quantized input)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [get_module(net, n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
             for n in names]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))


def test_the_default_gives_a_post_relu_input_16_levels_at_4_bits() -> None:
    """The old quantizer (symmetric codes, range = the moving batch maximum) gave a post-ReLU input at most 8 levels at
    4 bits; the default reads the sign and uses all 16 unsigned codes, the image-like signed input keeps signed ones."""
    net = _mlp().eval()
    data = [(torch.randn(256, 6), torch.zeros(256, dtype=torch.long))] * 2
    with quantized_activations(net, ["0", "2"], bits=4) as aq:
        assert aq.calibrate(data, 2) == 2
        q = _inputs_of(net, ["0", "2"], data[0][0])
    ex = aq.export()
    assert ex["2"]["signed"] is False and ex["0"]["signed"] is True
    post = torch.unique(q["2"])
    assert float(post.min()) >= 0 and 8 < len(post) <= 16, len(post)
    assert len(torch.unique(q["0"])) <= 15
    with quantized_activations(net, ["2"], bits=4, signed="symmetric", mode="max"):
        net.train()(data[0][0])                        # the moving maximum, observed in training mode
        net.eval()
        assert len(torch.unique(_inputs_of(net, ["2"], data[0][0])["2"])) <= 8


def test_the_least_error_range_is_frozen_and_replays_from_the_plan() -> None:
    net = _mlp()
    x = torch.randn(128, 6)
    data = [(x, torch.zeros(128, dtype=torch.long))]
    with quantized_activations(net, {"2": 3}) as aq:
        aq.calibrate(data, 1)
        a0 = aq.amax()["2"]
        net.train()(x * 10)                           # training batches do not move a least-error range
        assert aq.amax()["2"] == a0
        quant = net.eval()(x)
    plan = CompressionPlan.from_json(CompressionPlan(base={"name": "small_cnn"}, w_bits={"2": 4},
                                                     meta={"a_quant": aq.export()}).to_json())
    with quantized_activations.from_plan(net, plan) as rp:
        assert torch.equal(net(x), quant) and rp.export() == aq.export()
    # a plan of the old quantizer (a_amax, no a_quant) replays signed, as it was made
    old = CompressionPlan(base={"name": "small_cnn"}, w_bits={"2": 4}, a_bits=3, meta={"a_amax": {"2": a0}})
    with quantized_activations.from_plan(net, old) as rp:
        assert rp.export()["2"]["signed"] is True
        assert not torch.equal(net(x), quant)


@pytest.mark.parametrize("entry, msg", [
    ({"2": {"bits": 1, "amax": 1.0, "signed": False}}, "a_quant['2'] bits=1 must be an int in [2, 16]"),
    ({"2": {"bits": 4, "amax": -1.0, "signed": False}}, "a_quant['2']="),
    ({"2": {"bits": 4, "amax": 1.0, "signed": "no"}}, "signed: true|false"),
    ({"9": {"bits": 4, "amax": 1.0, "signed": False}}, "no layer '9'"),
    ([1, 2], "a_quant must be a mapping"),
])
def test_a_malformed_plan_entry_is_one_line(entry: object, msg: str) -> None:
    plan = CompressionPlan(base={"name": "small_cnn"}, meta={"a_quant": entry})
    with pytest.raises(CompressionError) as e:
        quantized_activations.from_plan(_mlp(), plan)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("a_amax", [[1, 2], "2", {"2": "big"}, {"2": None}, {"2": -1.0}, {"2": 10 ** 400}])
def test_a_malformed_old_plan_range_is_one_line(a_amax: object) -> None:
    plan = CompressionPlan(base={"name": "small_cnn"}, w_bits={"2": 4}, a_bits=4, meta={"a_amax": a_amax})
    with pytest.raises(CompressionError) as e:
        quantized_activations.from_plan(_mlp(), plan)
    assert "a_amax=" in str(e.value) and "\n" not in str(e.value)


def test_bad_options_are_one_line() -> None:
    with pytest.raises(CompressionError, match="a_signed='unsigned' is unknown; allowed: symmetric, auto"):
        quantized_activations(_mlp(), ["2"], 4, signed="unsigned")
    with pytest.raises(CompressionError, match="a_range='pct' is unknown; allowed: max, mse"):
        quantized_activations(_mlp(), ["2"], 4, mode="pct")
    with pytest.raises(CompressionError, match="activation bits of '2'=17 must be an int"):
        quantized_activations(_mlp(), {"2": 17})


def test_sbs_uses_the_compress_quantizer() -> None:
    from hwloop.methods.sbs import actq

    assert actq.quantize_act is quantize_act
    assert isinstance(actq.sbs_activations(_mlp(), {"2": 4}), quantized_activations)


def test_the_l1l2_fine_tune_puts_post_relu_inputs_on_unsigned_codes() -> None:
    """The l1l2 search's fine-tune (``differentiable_search``, a plan with ``a_bits``): the plan records the signs,
    every quantized layer's input (after a ReLU) unsigned (the old path: signed); the reported accuracy replays."""
    from hwloop.search.differentiable import SearchConfig, differentiable_search
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", batch_size=64, train_limit=256)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=4))
    res = differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn,
                                SearchConfig(search_epochs=1, finetune_epochs=1, target=0.5, max_steps=2))
    aq = res.plan.meta["a_quant"]
    assert set(aq) == set(res.plan.w_bits) and "features.0" not in aq   # the first conv (image input) stays float
    assert aq and all(aq[n]["signed"] is False and aq[n]["bits"] == 4 and aq[n]["amax"] > 0 for n in aq), aq
    with quantized_activations.from_plan(res.model, res.plan):
        assert task.eval_fn(res.model) == res.accuracy


def _cifar_or_skip() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    from safetensors.torch import load_file

    from hwloop.data import make_loaders
    from hwloop.models import ModelRef

    if not _CKPT.exists():
        pytest.skip(f"{_CKPT} is not here")
    root = _CIFAR_CACHE
    if not list(root.glob("cifar10-*-train-x.npy")):
        pytest.skip(f"no decoded CIFAR-10 in {root} (any CIFAR-10 run decodes it)")
    _, val = make_loaders("cifar10", 128, cache_dir=root, seed=0, holdout=5000)
    ds = val.dataset
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:512].tolist()  # type: ignore[arg-type]  # class-sorted files
    xs = torch.stack([ds[i][0] for i in idx])
    ys = torch.tensor([int(ds[i][1]) for i in idx])
    model = ModelRef("resnet20", input_shape=(3, 32, 32)).build()
    model.load_state_dict(load_file(str(_CKPT)))
    return model.eval(), [(xs[i:i + 128], ys[i:i + 128]) for i in range(0, 512, 128)]


def _real_cache() -> Path:
    from hwloop.data import cache_root

    return cache_root()


_CIFAR_CACHE = _real_cache()   # read at import, before any fixture points HWLOOP_HOME at a temporary folder


def test_post_relu_error_and_a4_accuracy_on_the_converged_resnet20() -> None:
    """The converged ResNet-20 (88% test), every conv/linear input but the image at 4 bits, weights float: the
    default's squared error on each post-ReLU input is under half the old quantizer's, and it keeps over 5 points more
    accuracy (measured: 89.8% vs 72.7% on these 384 held-out images, float 89.8%)."""
    model, batches = _cifar_or_skip()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "conv1"]
    calib, held = batches[:1], batches[1:]

    def acc() -> float:
        with torch.no_grad():
            return 100.0 * sum(int((model(x).argmax(1) == y).sum()) for x, y in held) / sum(len(y) for _, y in held)

    raw = _inputs_of(model, names, held[0][0])
    out = {}
    for label, kw in (("new", {}), ("old", {"signed": "symmetric", "mode": "max"})):
        with quantized_activations(model, names, 4, **kw) as aq:  # type: ignore[arg-type]
            if label == "new":
                aq.calibrate(calib, 1)
            else:
                aq.observe(calib, 1)                   # the old path: the batch maximum, observed
            q = _inputs_of(model, names, held[0][0])
            out[label] = (acc(), {n: float(((q[n] - raw[n]) ** 2).mean()) for n in names})
    assert all(float(raw[n].min()) >= 0 for n in names)
    for n in names:
        assert out["new"][1][n] < 0.5 * out["old"][1][n], (n, out["new"][1][n], out["old"][1][n])
    assert out["new"][0] > out["old"][0] + 5.0, (out["new"][0], out["old"][0])   # measured 89.8 vs 72.7 (384 images)
