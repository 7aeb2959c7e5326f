"""Plan format 2: typed actions replayed by registered handlers; format-1 plans upgrade bit for bit.

Assets: ``tests/assets/plan-v1/`` holds two format-1 plans (one with its weights) and what the format-1 code
built from them (``expected.json``, written by ``make_expected.py`` before plan v2 existed).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hwloop.compress import (
    Action,
    ChannelPrune,
    CompressionPlan,
    LowRank,
    Quantize,
    Sparsify,
    compress_,
    fake_quant,
    from_plan,
    load_compressed,
    save_compressed,
    tucker2,
)
from hwloop.compress.actions import action_from_dict
from hwloop.compress.extract import analyze
from hwloop.compress.lowrank import tucker2_full_ranks as tucker2_full
from hwloop.compress.quantstore import METADATA_KEY, pack_weight, read_weights
from hwloop.compress.sparsity import sparsity_mask
from hwloop.errors import CompressionError
from hwloop.models import ModelRef

torch.set_num_threads(1)
ASSETS = Path(__file__).parent / "assets" / "plan-v1"
sys.path.insert(0, str(ASSETS))
import make_expected  # the asset's own digest and inputs


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ModelRef("small_cnn").build().eval()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- format 1 still loads
def test_v1_assets_upgrade_to_actions_in_the_v1_order() -> None:
    raw = json.loads((ASSETS / "digits" / "plan.json").read_text())
    assert raw["version"] == 1 and "actions" not in raw
    plan = CompressionPlan.from_dict(raw)
    assert plan.version == 2
    kinds = [a.kind for a in plan.actions]
    assert kinds == ["low_rank"] * 2 + ["channel_prune"] * 2 + ["quantize"] * 4
    assert plan.actions[0] == LowRank("features.3", "svd", (21,))
    assert plan.actions[2] == ChannelPrune("features.0", 13)
    assert plan.actions[-1] == Quantize("features.7.1", 4, 8)
    # the format-1 views read back what the file said
    assert plan.lowrank == raw["lowrank"] and plan.widths == raw["widths"] and plan.w_bits == raw["w_bits"]
    assert plan.a_bits == raw["a_bits"] and plan.meta == raw["meta"]
    d = plan.to_dict()
    assert d["version"] == 2 and set(d) == {"type", "version", "base", "actions", "meta"}
    assert CompressionPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("case", ["digits_weights", "digits_replay", "resnet20_replay"])
def test_v1_plans_rebuild_bit_identically_through_v2(case: str) -> None:
    expected = json.loads((ASSETS / "expected.json").read_text())[case]
    model = make_expected.cases()[case]        # today's code: v1 file → actions → handlers
    with torch.no_grad():
        y = model(make_expected.inputs(case))
    assert make_expected.state_digest(model) == expected["state_sha256"]
    assert torch.equal(y, torch.tensor(expected["outputs"]))
    assert sum(p.numel() for p in model.parameters()) == expected["params"]


def test_upgraded_plan_written_as_v2_rebuilds_the_same_model(tmp_path: Path) -> None:
    v1 = CompressionPlan.from_json((ASSETS / "digits" / "plan.json").read_text())
    (tmp_path / "plan.json").write_text(v1.to_json())
    (tmp_path / "weights.safetensors").write_bytes((ASSETS / "digits" / "weights.safetensors").read_bytes())
    net, plan = load_compressed(tmp_path)
    assert json.loads((tmp_path / "plan.json").read_text())["version"] == 2 and plan == v1
    with torch.no_grad():
        y = net(make_expected.inputs("digits_weights"))
    expected = json.loads((ASSETS / "expected.json").read_text())["digits_weights"]
    assert torch.equal(y, torch.tensor(expected["outputs"]))


# ----------------------------------------------------------------------------- validation of untrusted plans
_BASE = {"name": "small_cnn"}


def _v2(*actions: dict, **top: Any) -> dict:
    return {"version": 2, "base": _BASE, "actions": list(actions), **top}


@pytest.mark.parametrize("bad,match", [
    (_v2({"kind": "os.path:join"}), "kind 'os.path:join' is unknown"),
    (_v2({"kind": 3}), "kind 3 is unknown"),
    (_v2({"group": "features.0", "kept": 3}), "kind None is unknown"),
    (_v2("channel_prune"), "must be a JSON object"),
    (_v2({"kind": "channel_prune", "group": "features.0"}), r"needs field\(s\) \['kept'\]"),
    (_v2({"kind": "channel_prune", "group": "features.0", "kept": 0}), "kept=0"),
    (_v2({"kind": "channel_prune", "group": "features.0", "kept": True}), "kept=True"),
    (_v2({"kind": "channel_prune", "group": "", "kept": 2}), "group=''"),
    (_v2({"kind": "channel_prune", "group": "a\nb", "kept": 2}), "printable"),
    (_v2({"kind": "channel_prune", "group": "features.0", "kept": 2, "evil": 1}), r"unknown field\(s\) \['evil'\]"),
    (_v2({"kind": "channel_prune", "group": "features.0", "kept": 2, "version": 2}), "version 2 is not supported"),
    (_v2({"kind": "low_rank", "layer": "features.3", "form": "cp", "ranks": [3]}), "form='cp' is unknown"),
    (_v2({"kind": "low_rank", "layer": "features.3", "form": "svd", "ranks": [3, 4]}), "list of 1 int"),
    (_v2({"kind": "low_rank", "layer": "features.3", "form": "tucker2", "ranks": [3]}), "list of 2 int"),
    (_v2({"kind": "low_rank", "layer": "features.3", "form": "svd", "ranks": 3}), "ranks=3"),
    (_v2({"kind": "low_rank", "layer": "features.3", "form": "svd", "ranks": [0]}), "ranks=0"),
    (_v2({"kind": "quantize", "layer": "features.3", "w_bits": 33}), r"w_bits=33 must be an int in \[1, 32\]"),
    (_v2({"kind": "quantize", "layer": "features.3", "w_bits": 4, "a_bits": 0}), "a_bits=0"),
    (_v2({"kind": "quantize", "layer": "features.3", "w_bits": 4.0}), "w_bits=4.0"),
    (_v2({"kind": "quantize", "layer": "features.3", "w_bits": 4, "scheme": "asym"}), "scheme='asym' is unknown"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "random", "density": 0.5}), "pattern='random'"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "unstructured", "density": 0}), r"density=0 .*\(0, 1\]"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "unstructured", "density": 1.5}), "density=1.5"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "unstructured", "density": "half"}), "density='half'"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "unstructured"}), "density=None"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "n:m", "n": 2}), "needs n and m"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "n:m", "n": 5, "m": 4}), r"n=5 must be an int in \[1, 4\]"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "n:m", "n": 2, "m": 4, "density": 0.3}), "must equal n/m"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "unstructured", "density": 0.5, "n": 2}),
     "belong to pattern 'n:m'"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "block", "density": 0.5}), "block=None"),
    (_v2({"kind": "sparsify", "layer": "features.3", "pattern": "block", "density": 0.5, "block": [4, 0]}), "block=0"),
    (_v2({"kind": "quantize", "layer": "features.3", "w_bits": 4}, {"kind": "quantize", "layer": "features.3",
                                                                    "w_bits": 8}), "two 'quantize' actions"),
    ({"version": 2, "base": _BASE, "actions": {"kind": "quantize"}}, "must be a JSON list"),
    ({"version": 2, "base": _BASE, "widths": {"features.0": 3}}, r"unknown plan field\(s\) \['widths'\] for version 2"),
    ({"version": 1, "base": _BASE, "actions": []}, r"unknown plan field\(s\) \['actions'\] for version 1"),
    ({"version": 3, "base": _BASE}, "version 3 is not supported"),
    ({"version": "2", "base": _BASE}, "version '2' is not supported"),
    ({"version": 2, "actions": []}, "needs a 'base'"),
    ({"version": 2, "base": _BASE, "meta": [1]}, "meta must be a JSON object"),
    ({"version": 1, "base": _BASE, "a_bits": 40}, "a_bits=40"),
])
def test_bad_plans_are_one_line_errors(bad: dict, match: str) -> None:
    before = set(sys.modules)
    with pytest.raises(CompressionError, match=match) as e:
        CompressionPlan.from_dict(bad)
    assert "\n" not in str(e.value)
    assert set(sys.modules) - before == set()          # no name from the file was imported


def test_bad_actions_in_a_model_fail_at_replay_with_one_line() -> None:
    cases = [
        (ChannelPrune("features.99", 3), "unknown group"),
        (ChannelPrune("features.0", 999), "kept=999 is more than"),
        (LowRank("features.99", "svd", (3,)), "no layer 'features.99'"),
        (LowRank("features.3", "svd", (999,)), "rank=999"),
        (LowRank("features.3", "tucker2", (999, 2)), "tucker2 ranks"),
        (LowRank("classifier", "tucker2", (2, 2)), "tucker2 needs a dense Conv2d"),
        (Quantize("features", 4), "no weight"),
    ]
    for action, match in cases:
        with pytest.raises(CompressionError, match=match) as e:
            compress_(_small(), CompressionPlan(base=_BASE, actions=[action]))
        assert "\n" not in str(e.value)


def test_every_action_kind_round_trips_through_json() -> None:
    acts = [LowRank("features.3", "tucker2", (3, 5)), LowRank("features.7", "svd", (6,)), ChannelPrune("features.0", 5),
            Sparsify("features.3.1", "n:m", n=2, m=4), Sparsify("classifier", "block", 0.5, block=(2, 4)),
            Sparsify("features.7.0", "unstructured", 0.3), Quantize("classifier", 4, 8)]
    plan = CompressionPlan(base=_BASE, actions=acts, meta={"note": "x"})
    again = CompressionPlan.from_json(plan.to_json())
    assert again == plan and again.actions == tuple(acts)
    assert acts[3].density == 0.5 and action_from_dict(acts[3].to_dict()) == acts[3]
    assert plan.lowrank == {"features.7": 6} and plan.widths == {"features.0": 5} and plan.w_bits == {"classifier": 4}
    mixed = CompressionPlan(base=_BASE, actions=[Quantize("features.3", 4, 8), Quantize("features.7", 4, 4)])
    with pytest.raises(CompressionError, match="different a_bits"):
        _ = mixed.a_bits


# ----------------------------------------------------------------------------- handlers
@dataclass(frozen=True)
class ScaleWeight(Action):
    layer: str
    factor: float
    kind: ClassVar[str] = "scale_weight"

    @property
    def target(self) -> str:
        return self.layer


class ScaleHandler:
    action = ScaleWeight

    def apply(self, model: torch.nn.Module, actions: Any, state: Any) -> None:
        with torch.no_grad():
            for a in actions:
                model.get_submodule(a.layer).weight.mul_(a.factor)


def test_a_new_kind_is_a_new_handler_not_a_branch() -> None:
    text = json.dumps(_v2({"kind": "scale_weight", "layer": "classifier", "factor": 2.0}))
    with pytest.raises(CompressionError, match="kind 'scale_weight' is unknown"):
        CompressionPlan.from_json(text)                   # a file alone cannot add a kind
    plan = CompressionPlan.from_json(text, action_types={"scale_weight": ScaleWeight})
    with pytest.raises(CompressionError, match="no handler for plan action kind 'scale_weight'"):
        compress_(_small(), plan)
    net = compress_(_small(), plan, handlers={"scale_weight": ScaleHandler()})
    assert torch.equal(net.classifier.weight, _small().classifier.weight * 2)


def test_actions_replay_in_the_order_given() -> None:
    quant_then_sparse = [Quantize("features.3", 3), Sparsify("features.3", "unstructured", 0.5)]
    a = compress_(_small(), CompressionPlan(base=_BASE, actions=quant_then_sparse))
    b = compress_(_small(), CompressionPlan(base=_BASE, actions=quant_then_sparse[::-1]))
    assert not torch.equal(a.features[3].weight, b.features[3].weight)
    # pruning before factorising is allowed and gives the factorised layer the pruned input width
    net = compress_(_small(), CompressionPlan(base=_BASE, actions=[ChannelPrune("features.0", 5),
                                                                    LowRank("features.3", "svd", (4,))]))
    assert net.features[3][0].in_channels == 5 and net.features[3][0].out_channels == 4


# ----------------------------------------------------------------------------- Tucker-2
@pytest.mark.parametrize("args", [
    {"in_channels": 8, "out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1},
    {"in_channels": 3, "out_channels": 16, "kernel_size": 3, "padding": 1, "bias": False},
    {"in_channels": 16, "out_channels": 4, "kernel_size": (3, 1), "padding": (1, 0), "dilation": 2}])
def test_tucker2_is_exact_at_full_rank_and_carries_stride_padding(args: dict) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(**args)
    x = torch.randn(2, conv.in_channels, 9, 9)
    seq = tucker2(conv)
    first, core, last = seq
    assert first.kernel_size == (1, 1) and last.kernel_size == (1, 1)
    assert (core.stride, core.padding, core.dilation) == (conv.stride, conv.padding, conv.dilation)
    assert torch.allclose(seq(x), conv(x), atol=1e-5)
    # truncation: the kernel is projected on nested bases, so its error cannot grow with the ranks
    def kernel_error(ranks: tuple[int, int]) -> float:
        a, g, b = (m.weight.detach() for m in tucker2(conv, ranks))
        w = torch.einsum("or,rshw,si->oihw", b[:, :, 0, 0], g, a[:, :, 0, 0])
        return float((w - conv.weight.detach()).norm())

    errs = [kernel_error((r, r)) for r in (1, 2, 3)]
    assert errs[0] >= errs[1] >= errs[2] and errs[0] > errs[2] and kernel_error(tucker2_full(conv)) < 1e-5


def test_tucker2_plan_replays_prunes_its_rank_groups_and_saves(tmp_path: Path) -> None:
    base = _small()
    plan = CompressionPlan(base=_BASE, actions=[LowRank("features.3", "tucker2", (6, 10)),
                                                ChannelPrune("rank:features.3:out", 7), ChannelPrune("features.0", 12)])
    net = compress_(_small(), plan)
    first, core, last = net.features[3]
    assert (first.in_channels, first.out_channels, core.out_channels, last.in_channels) == (12, 6, 7, 7)
    keys = {g.key for g in analyze(net, _x(), tucker2=["features.3"]).groups}
    assert {"rank:features.3:in", "rank:features.3:out", "features.3"} <= keys
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in base.parameters())
    save_compressed(net, plan, tmp_path)
    again, p2 = load_compressed(tmp_path)
    assert p2 == plan
    with torch.no_grad():
        assert torch.equal(again(_x()), net(_x()))


# ----------------------------------------------------------------------------- Sparsify
def test_sparsity_patterns() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 12, 3, 3)
    m = sparsity_mask(w, "unstructured", density=0.25)
    assert int(m.sum()) == round(0.25 * w.numel())
    assert float(w.abs()[m].min()) >= float(w.abs()[~m].max())          # magnitude: every kept >= every dropped
    m = sparsity_mask(w, "n:m", n=2, m=4)
    runs = m.movedim(1, -1).reshape(-1, 4)
    assert bool((runs.sum(1) == 2).all())                               # exactly 2 of every 4 input channels
    m = sparsity_mask(torch.randn(6, 10), "n:m", n=1, m=4)             # 10 = 4 + 4 + 2: the short run keeps 1
    assert m.reshape(6, 10)[:, 8:].sum(1).tolist() == [1] * 6 and int(m.sum()) == 18
    m = sparsity_mask(w, "block", density=0.5, block=(4, 4))
    tiles = m[:, :, 0, 0].reshape(2, 4, 3, 4).permute(0, 2, 1, 3).reshape(6, 16)
    assert all(int(t.sum()) in (0, 16) for t in tiles) and int(tiles.any(1).sum()) == 3
    assert bool((m == m[:, :, :1, :1]).all())                            # a tile holds all kernel positions


@pytest.mark.parametrize("action", [Sparsify("features.3", "unstructured", 0.3),
                                    Sparsify("features.3", "n:m", n=2, m=4),
                                    Sparsify("features.3", "block", 0.25, block=(4, 4))])
def test_sparsify_replays_idempotently_and_saves(action: Sparsify, tmp_path: Path) -> None:
    plan = CompressionPlan(base=_BASE, actions=[action, Quantize("features.3", 8)])
    net = compress_(_small(), plan)
    w = net.features[3].weight
    assert abs(float((w != 0).float().mean()) - action.density) < 0.02
    again = compress_(net, CompressionPlan(base=_BASE, actions=[action]))
    assert torch.equal(again.features[3].weight, w)                     # masking twice changes nothing
    save_compressed(net, plan, tmp_path)
    loaded, _ = load_compressed(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), net(_x()))


# ----------------------------------------------------------------------------- low-bit storage
def test_pack_weight_round_trips_every_bit_width_and_refuses_off_grid_weights() -> None:
    from hwloop.compress.quantstore import unpack_weight

    torch.manual_seed(0)
    for bits in (1, 2, 3, 4, 5, 8, 12, 16):
        for shape in ((7, 5), (4, 3, 3, 3), (3, 1)):
            w = torch.randn(shape) * 3
            # fake_quant's straight-through sum is exact from 2 bits on; 1 bit is sign·mean, built directly here
            w = fake_quant(w, bits) if bits > 1 else torch.sign(w) * w.abs().reshape(shape[0], -1).mean(1).reshape(
                -1, *[1] * (len(shape) - 1))
            got = pack_weight(w, bits)
            assert got is not None, (bits, shape)
            assert torch.equal(unpack_weight(*got, bits, shape), w), (bits, shape)
    assert pack_weight(torch.randn(4, 4), 4) is None                    # not on a 4-bit grid: stored as float
    assert pack_weight(fake_quant(torch.randn(4, 4), 20), 20) is None   # no saving above 16 bits


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_export_is_smaller_and_loads_the_fake_quantized_model(bits: int, tmp_path: Path) -> None:
    plan = CompressionPlan.from_json((ASSETS / "resnet20_plan.json").read_text())
    plan = CompressionPlan(base=plan.base, actions=[a if not isinstance(a, Quantize) else Quantize(a.layer, bits, 8)
                                                    for a in plan.actions])
    torch.manual_seed(0)
    net = compress_(ModelRef.from_dict(plan.base).build(), plan).eval()  # weights rounded in float32
    save_compressed(net, plan, tmp_path / "packed")
    save_compressed(net, plan, tmp_path / "float", pack=False)
    packed = (tmp_path / "packed" / "weights.safetensors").stat().st_size
    flt = (tmp_path / "float" / "weights.safetensors").stat().st_size
    conv_bytes = sum(net.get_submodule(a.layer).weight.numel() * 4 for a in plan.actions if isinstance(a, Quantize))
    saved = conv_bytes * (1 - bits / 32) - sum(net.get_submodule(a.layer).weight.shape[0] * 4
                                                for a in plan.actions if isinstance(a, Quantize))
    assert flt - packed >= 0.95 * saved                                 # the quantized layers shrink ~32/bits x
    with safe_open(str(tmp_path / "packed" / "weights.safetensors"), "pt") as f:
        table = json.loads(f.metadata()[METADATA_KEY])
        assert f.get_tensor("layers.0.conv1.weight:q").dtype == (torch.uint8 if bits == 4 else torch.int8)
    assert len(table) == len(plan.w_bits)
    x = torch.randn(2, 3, 32, 32)
    for d in ("packed", "float"):
        loaded, _ = load_compressed(tmp_path / d)
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x))


def test_off_grid_weights_are_stored_as_float(tmp_path: Path) -> None:
    plan = CompressionPlan(base=_BASE, actions=[Quantize("features.3", 4)])
    net = compress_(_small(), plan)
    with torch.no_grad():
        net.features[3].weight.add_(1e-3)                                # e.g. trained on without the quantizer
    save_compressed(net, plan, tmp_path)
    with safe_open(str(tmp_path / "weights.safetensors"), "pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == {} and "features.3.weight" in f.keys()  # noqa: SIM118
    loaded, _ = load_compressed(tmp_path)
    assert torch.equal(loaded.features[3].weight, net.features[3].weight)


def _tamper(path: Path, edit: Any) -> None:
    with safe_open(str(path), "pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    table = json.loads(meta[METADATA_KEY])
    edit(table, state)
    meta[METADATA_KEY] = json.dumps(table)
    save_file(state, str(path), metadata=meta)


@pytest.mark.parametrize("edit,match", [
    (lambda t, s: t["features.3.weight"].update(bits=8), "do not match"),
    (lambda t, s: t["features.3.weight"].update(bits=True), "do not match"),
    (lambda t, s: t["features.3.weight"].update(shape=[5, 3, 3, 3]), "shape"),
    (lambda t, s: t["features.3.weight"].update(shape="big"), "positive ints"),
    (lambda t, s: t["features.3.weight"].update(extra=1), "exactly bits, shape and storage"),
    (lambda t, s: s.pop("features.3.weight:scale"), "must hold"),
    (lambda t, s: s.update({"features.3.weight:q": torch.full_like(s["features.3.weight:q"], 0x88)}), "at most 7"),
    (lambda t, s: s.update({"features.3.weight:scale": s["features.3.weight:scale"][:2]}), "scale"),
    (lambda t, s: t.pop("features.3.weight"), "not listed"),
])
def test_tampered_packed_weights_are_one_line_errors(edit: Any, match: str, tmp_path: Path) -> None:
    plan = CompressionPlan(base=_BASE, actions=[Quantize("features.3", 4)])
    save_compressed(compress_(_small(), plan), plan, tmp_path)
    _tamper(tmp_path / "weights.safetensors", edit)
    with pytest.raises(CompressionError, match=match) as e:
        load_compressed(tmp_path)
    assert "\n" not in str(e.value)


def test_from_plan_model_ref_reads_packed_weights(tmp_path: Path) -> None:
    plan = CompressionPlan(base=_BASE, widths={"features.0": 6}, w_bits={"features.3": 2, "classifier": 4})
    net = compress_(_small(), plan)
    save_compressed(net, plan, tmp_path)
    ref = ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict(), "weights": str(tmp_path / "weights.safetensors")},
                   input_shape=(1, 8, 8))
    with torch.no_grad():
        assert torch.equal(ref.build()(_x()), net(_x()))
    assert set(read_weights(tmp_path / "weights.safetensors")) == set(net.state_dict())
    assert from_plan(plan.to_dict()).features[0].out_channels == 6


# ----------------------------------------------------------------------------- typed decision keys
def test_size_keys_are_typed_and_spell_the_old_strings() -> None:
    import copy

    from hwloop.compress.keys import SizeKey, is_rank_group, rank_group, rank_layer

    k = SizeKey.channels(rank_group("features.3"))
    assert k == "ch:rank:features.3" and hash(k) == hash("ch:rank:features.3") and str(k) == "ch:rank:features.3"
    assert (k.kind, k.name) == ("ch", "rank:features.3") and rank_layer(k.name) == "features.3"
    assert SizeKey.parse("bits:features.7") == SizeKey.bits("features.7") and SizeKey.parse("bits:x").kind == "bits"
    assert json.loads(json.dumps({k: 1})) == {"ch:rank:features.3": 1} and type(copy.deepcopy(k)) is str
    assert rank_layer("rank:features.3:in") == "features.3" and is_rank_group("rank:a") and not is_rank_group("a")
    for bad, match in ((lambda: SizeKey("width", "a"), "kind 'width' is unknown"), (lambda: SizeKey.bits(""), "non-empty"),
                       (lambda: SizeKey.parse("features.3"), "must be 'ch:<group>'"),
                       (lambda: rank_layer("features.3"), "not a rank group")):
        with pytest.raises(CompressionError, match=match):
            bad()


def test_search_space_sizes_use_typed_keys_with_the_old_names() -> None:
    from hwloop.compress.gated import GatedModel
    from hwloop.compress.keys import SizeKey
    from hwloop.search.space import SearchSpace, SpaceOptions

    space = SearchSpace.from_ref(ModelRef("small_cnn"), SpaceOptions(lowrank=True, bits=True))
    sizes = space.full_sizes()
    old = {f"ch:{g.key}" for g in space.graph.groups} | {f"bits:{n}" for n in space.bit_layers}
    assert set(sizes) == old and all(isinstance(k, SizeKey) for k in sizes)
    assert "ch:rank:features.3" in sizes and sizes[SizeKey.channels("rank:features.3")] == space.full_ranks["features.3"]
    assert set(GatedModel(space).sizes()) == old
