"""Exported weights are physically smaller: 1-bit weights as sign bits, sparsified layers as a bitmask plus their
kept values (float32 or packed codes), old files still load, and tampered files are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hwloop.compress import CompressionPlan, compress_, load_compressed, save_compressed
from hwloop.compress.actions import Quantize, Sparsify
from hwloop.compress.quantstore import METADATA_KEY, decode_weight, encode_weight, pack_weight, read_weights
from hwloop.errors import CompressionError
from hwloop.models import ModelRef

_BASE = {"name": "small_cnn"}
_LAYER = "features.7"                                   # 64 x 32 x 3 x 3 = 18,432 weights


def _small(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ModelRef("small_cnn").build().eval()


def _x() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _export(actions: list[Any], tmp_path: Path, name: str = "m") -> tuple[torch.nn.Module, dict[str, Any], int, int]:
    """The compressed model, its packed table, and the packed and float32 file sizes."""
    plan = CompressionPlan(base=_BASE, actions=actions)
    net = compress_(_small(), plan).eval()
    save_compressed(net, plan, tmp_path / name)
    save_compressed(net, plan, tmp_path / f"{name}-float", pack=False)
    path = tmp_path / name / "weights.safetensors"
    with safe_open(str(path), "pt") as f:
        table = json.loads(f.metadata()[METADATA_KEY])
    loaded, _ = load_compressed(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), net(_x()))             # the export rebuilds the model exactly
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    return net, table, path.stat().st_size, (tmp_path / f"{name}-float" / "weights.safetensors").stat().st_size


def test_one_bit_weights_are_stored_as_sign_bits(tmp_path: Path) -> None:
    net, table, packed, flt = _export([Quantize(_LAYER, 1)], tmp_path)
    w = net.get_submodule(_LAYER).weight
    assert table == {f"{_LAYER}.weight": {"bits": 1, "shape": list(w.shape), "storage": "bin1"}}
    # 18,432 weights: 73,728 bytes as float32, 2,304 as sign bits + 256 of scales
    assert flt - packed >= 0.99 * (4 * w.numel() - w.numel() / 8 - 4 * w.shape[0])
    # the replay writes sign x mean exactly (one magnitude per output channel)
    assert bool((w.abs().reshape(64, -1) == w.abs().reshape(64, -1)[:, :1]).all())


def test_sparsified_float_layer_is_a_bitmask_plus_its_kept_values(tmp_path: Path) -> None:
    net, table, packed, flt = _export([Sparsify(_LAYER, "unstructured", density=0.25)], tmp_path)
    n = net.get_submodule(_LAYER).weight.numel()
    assert table == {f"{_LAYER}.weight": {"bits": 32, "shape": [64, 32, 3, 3], "storage": "float32", "sparse": True}}
    kept = round(0.25 * n)
    assert flt - packed >= 0.99 * (4 * n - n / 8 - 4 * kept)      # ~70% of the layer's bytes saved
    with safe_open(str(tmp_path / "m" / "weights.safetensors"), "pt") as f:
        assert f.get_tensor(f"{_LAYER}.weight:values").numel() == kept
        assert f.get_tensor(f"{_LAYER}.weight:mask").numel() == n // 8


@pytest.mark.parametrize("bits,storage", [(4, "int4"), (8, "int8"), (1, "bin1")])
def test_two_four_sparsity_with_bits_stores_the_kept_codes_only(bits: int, storage: str, tmp_path: Path) -> None:
    net, table, packed, flt = _export([Sparsify(_LAYER, "n:m", n=2, m=4), Quantize(_LAYER, bits)], tmp_path)
    entry = table[f"{_LAYER}.weight"]
    assert entry == {"bits": bits, "shape": [64, 32, 3, 3], "storage": storage, "sparse": True}
    n = net.get_submodule(_LAYER).weight.numel()
    dense_codes = {"int4": n / 2, "int8": n, "bin1": n / 8}[storage]
    # half the weights kept: mask (n/8) + half the codes, against the dense codes
    assert flt - packed >= 0.99 * (4 * n - n / 8 - dense_codes / 2 - 4 * 64)
    # smaller than the dense packing would be (at one bit the zeros rule sign bits out: int4)
    dense = n / 2 if storage == "bin1" else dense_codes
    assert flt - packed > 4 * n - dense - 4 * 64


def test_sparse_storage_is_used_only_when_it_is_smaller() -> None:
    w = torch.randn(8, 16)
    w[0, 0] = 0.0                                          # 1 zero in 128: a mask costs more than it saves
    assert encode_weight(w, None, sparse=True) is None     # stored as it is
    q = pack_weight(torch.sign(torch.randn(8, 16)), 1)
    assert q is not None and q[0].dtype == torch.uint8     # the dense API keeps int4 for one bit (old files)
    got = encode_weight(torch.sign(torch.randn(8, 16)) * 0.5, 1, sparse=False)
    assert got is not None and got[1]["storage"] == "bin1" and got[0]["q"].numel() == 16


def test_files_of_the_old_format_still_load(tmp_path: Path) -> None:
    """A 1-bit weight stored as int4 codes with a three-key entry (before this format) reads back."""
    net = _small()
    w = net.features[3].weight.detach()
    w1 = (torch.sign(w.reshape(32, -1)) * w.reshape(32, -1).abs().mean(1, keepdim=True)).reshape(w.shape)
    got = pack_weight(w1, 1)
    assert got is not None
    state = {k: v.contiguous() for k, v in net.state_dict().items() if k != "features.3.weight"}
    state["features.3.weight:q"], state["features.3.weight:scale"] = got
    meta = {METADATA_KEY: json.dumps({"features.3.weight": {"bits": 1, "shape": list(w.shape), "storage": "int4"}})}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=meta)
    assert torch.equal(read_weights(tmp_path / "old.safetensors")["features.3.weight"], w1)


def _tamper(path: Path, edit: Any) -> None:
    with safe_open(str(path), "pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    table = json.loads(meta[METADATA_KEY])
    edit(table[f"{_LAYER}.weight"], state)
    meta[METADATA_KEY] = json.dumps(table)
    save_file(state, str(path), metadata=meta)


def _set(state: dict[str, torch.Tensor], key: str, t: torch.Tensor) -> None:
    state[f"{_LAYER}.weight:{key}"] = t


def _get(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return state[f"{_LAYER}.weight:{key}"]


@pytest.mark.parametrize("actions,edit,match", [
    # a float sparse layer
    ("f", lambda e, s: e.update(sparse=False), "sparse=False must be true"),
    ("f", lambda e, s: e.pop("sparse"), "bits=32 storage='float32' do not match"),
    ("f", lambda e, s: e.update(storage="int8"), "do not match"),
    ("f", lambda e, s: _set(s, "mask", _get(s, "mask")[:-1]), "mask has torch.uint8 x 2303"),
    ("f", lambda e, s: _set(s, "values", _get(s, "values")[:-1]), "its mask keeps"),
    ("f", lambda e, s: _set(s, "values", _get(s, "values").double()), "values have torch.float64"),
    ("f", lambda e, s: s.pop(f"{_LAYER}.weight:mask"), "must hold mask, values"),
    ("f", lambda e, s: _set(s, "q", torch.zeros(3, dtype=torch.int8)), "must hold mask, values"),
    ("f", lambda e, s: e.update(sparse="yes"), "sparse='yes' must be true"),
    # a 1-bit sparse layer: mask + sign bits
    ("b", lambda e, s: _set(s, "q", _get(s, "q")[:-1]), r"has torch.uint8 x 691; 5530 bits need uint8 x 692"),
    ("b", lambda e, s: e.update(storage="int4"), r"has torch.uint8 x \d+; \d+ codes of 1 bits need torch.uint8"),
    ("b", lambda e, s: _set(s, "scale", _get(s, "scale")[:3]), "scale has torch.float32 x 3; need float32 x 64"),
    ("b", lambda e, s: _set(s, "scale", torch.full_like(_get(s, "scale"), float("nan"))), "finite and positive"),
    ("b", lambda e, s: _set(s, "scale", -_get(s, "scale")), "finite and positive"),
    ("b", lambda e, s: e.update(storage=[]), r"storage=\[\] do not match"),
    ("b", lambda e, s: e.update(storage={"a": 1}), "do not match"),
    ("b", lambda e, s: e.update(shape=[10 ** 1000, 2]), "at most 2\\*\\*40 elements"),
    ("b", lambda e, s: e.update(shape=[2 ** 30, 2 ** 30, 2]), "at most 2\\*\\*40 elements"),
    ("b", lambda e, s: s.update({f"{_LAYER}.weight": torch.zeros(1)}), "must not hold"),
    ("b", lambda e, s: e.update(bits=2), "do not match"),
])
def test_tampered_sparse_and_one_bit_files_are_one_line_errors(actions: str, edit: Any, match: str,
                                                               tmp_path: Path) -> None:
    acts: list[Any] = [Sparsify(_LAYER, "unstructured", density=0.3)]
    if actions == "b":
        acts.append(Quantize(_LAYER, 1))
    plan = CompressionPlan(base=_BASE, actions=acts)
    save_compressed(compress_(_small(), plan), plan, tmp_path)
    _tamper(tmp_path / "weights.safetensors", edit)
    with pytest.raises(CompressionError, match=match) as e:
        load_compressed(tmp_path)
    assert "\n" not in str(e.value)


def test_mask_padding_bits_are_refused() -> None:
    w = torch.zeros(3, 5)                                  # 15 weights: 2 mask bytes, 1 padding bit
    w[0, 1], w[2, 4] = 1.0, -2.0
    got = encode_weight(w, None, sparse=True)
    assert got is not None
    tensors, entry = got
    assert torch.equal(decode_weight(tensors, entry, "w"), w)
    bad = dict(tensors, mask=tensors["mask"].clone())
    bad["mask"][-1] |= 0x80                                # the 16th bit: past the 15 weights
    with pytest.raises(CompressionError, match="padding bits"):
        decode_weight(bad, entry, "w")
    with pytest.raises(CompressionError, match="do not match"):  # float32 values without the sparse flag
        decode_weight(tensors, {k: v for k, v in entry.items() if k != "sparse"}, "w")


def test_two_bit_codes_take_two_bits_and_their_padding_is_checked(tmp_path: Path) -> None:
    from hwloop.compress.gates import fake_quant

    w = fake_quant(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), 2)   # codes -1, 0, 1
    got = encode_weight(w, 2, sparse=False)
    assert got is not None
    tensors, entry = got
    assert entry["storage"] == "int2" and tensors["q"].numel() == 4                     # 15 codes, four per byte
    assert torch.equal(decode_weight(tensors, entry, "w"), w)
    bad = dict(tensors, q=tensors["q"].clone())
    bad["q"][-1] |= 0xC0                                                                # the 16th code: padding
    with pytest.raises(CompressionError, match="padding bits"):
        decode_weight(bad, entry, "w")
    _, table, packed, flt = _export([Quantize(_LAYER, 2)], tmp_path)
    assert table[f"{_LAYER}.weight"]["storage"] == "int2"
    assert flt - packed >= 0.99 * (4 * 18432 - 18432 / 4 - 4 * 64)


def _raw_file(path: Path, table: Any, tensors: dict[str, torch.Tensor]) -> Path:
    raw = table if isinstance(table, str) else json.dumps(table)
    save_file(tensors, str(path), metadata={METADATA_KEY: raw})
    return path


@pytest.mark.parametrize("table,tensors,match", [
    # a 5,000-digit integer: json.loads raises ValueError (not JSONDecodeError)
    ('{"w": {"bits": ' + "9" * 5000 + ', "shape": [1], "storage": "int8"}}', {"w:q": torch.zeros(1, dtype=torch.int8)},
     "is not JSON"),
    # int16 -32768: abs() overflows in int16, the range check must not
    ({"w": {"bits": 9, "shape": [1, 2], "storage": "int16"}},
     {"w:q": torch.tensor([-32768, 1], dtype=torch.int16), "w:scale": torch.ones(1)}, "holds 32768; 9 bits"),
    # int4: an odd count leaves a high nibble as padding
    ({"w": {"bits": 4, "shape": [1, 3], "storage": "int4"}},
     {"w:q": torch.tensor([0x71, 0xF1], dtype=torch.uint8), "w:scale": torch.ones(1)}, "padding bits past its 3"),
    # a listed name with ':' is refused as such, not as "not listed"
    ({"a:w": {"bits": 8, "shape": [1], "storage": "int8"}},
     {"a:w:q": torch.zeros(1, dtype=torch.int8), "a:w:scale": torch.ones(1)}, "must not contain ':'"),
    ({}, {"a.weight:q:x": torch.zeros(1)}, r"\['a.weight:q:x'\] are not listed"),
])
def test_crafted_files_are_one_line_errors(table: Any, tensors: dict[str, torch.Tensor], match: str,
                                           tmp_path: Path) -> None:
    with pytest.raises(CompressionError, match=match) as e:
        read_weights(_raw_file(tmp_path / "w.safetensors", table, tensors))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_many_entries_load_in_linear_time(tmp_path: Path) -> None:
    """Grouping the tensors of 20,000 listed weights is one pass (it was a scan per entry: minutes)."""
    import time

    n = 20000
    table = {f"l{i}.weight": {"bits": 8, "shape": [1], "storage": "int8"} for i in range(n)}
    tensors = {}
    for i in range(n):
        tensors[f"l{i}.weight:q"] = torch.ones(1, dtype=torch.int8)
        tensors[f"l{i}.weight:scale"] = torch.ones(1)
    path = _raw_file(tmp_path / "many.safetensors", table, tensors)
    t0 = time.process_time()
    state = read_weights(path)
    assert len(state) == n and float(state["l7.weight"][0]) == 1.0
    assert time.process_time() - t0 < 30        # generous: the quadratic scan took minutes at this size


def test_negative_zero_survives_the_sparse_float_path() -> None:
    w = torch.zeros(4, 16)
    w[0, 3], w[1, 5], w[2, 7] = -0.0, 1.5, -2.0
    got = encode_weight(w, None, sparse=True)
    assert got is not None
    d = decode_weight(*got, "w")
    assert torch.equal(d, w) and torch.equal(torch.signbit(d), torch.signbit(w))


def test_one_bit_fake_quant_lies_on_its_grid_so_a_fine_tuned_export_packs() -> None:
    from hwloop.compress.gates import fake_quant

    w = (torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 0.1).requires_grad_()
    fq = fake_quant(w, 1)
    exact = torch.sign(w.detach()) * w.detach().abs().mean(1, keepdim=True)
    assert torch.equal(fq.detach(), exact)                 # the straight-through sum used to be an ulp off
    fq.sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))    # gradient: identity, as before
    got = encode_weight(fq.detach(), 1, sparse=False)
    assert got is not None and got[1]["storage"] == "bin1"


def test_old_two_bit_int4_files_load_through_load_compressed(tmp_path: Path) -> None:
    """A plan saved before int2 existed (2-bit codes as int4, three-key entries) loads with the same outputs."""
    from hwloop.compress.gates import fake_quant

    plan = CompressionPlan(base=_BASE, actions=[Quantize("features.3", 2)])
    net = compress_(_small(), plan).eval()
    save_compressed(net, plan, tmp_path, pack=False)
    w = net.features[3].weight.detach()
    assert torch.equal(fake_quant(w, 2), w)
    got = pack_weight(w, 2)                                # the dense API: int4 for 2 bits, as the old writer did
    assert got is not None and got[0].numel() == (w.numel() + 1) // 2
    path = tmp_path / "weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del state["features.3.weight"]
    state["features.3.weight:q"], state["features.3.weight:scale"] = got
    meta[METADATA_KEY] = json.dumps({"features.3.weight": {"bits": 2, "shape": list(w.shape), "storage": "int4"}})
    save_file(state, str(path), metadata=meta)
    loaded, _ = load_compressed(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), net(_x()))
