"""Low-bit and sparse weight storage: quantized and sparsified layers go to safetensors physically smaller.

A plan's ``Quantize(layer, w_bits)`` rounds the weight to ``q·s`` with integer ``q`` in ``[-qmax, qmax]``
(``qmax = 2^(bits-1) - 1``, 1 for one bit) and one float32 scale ``s`` per output channel
(:func:`~hwloop.compress.gates.fake_quant`). :func:`write_weights` stores such a weight as ``<name>:q``
(``bin1``: one sign bit per weight when every code is ±1 at one bit; ``int2``: four codes per byte at two bits;
int4 packed two per byte for ≤ 4 bits, int8 for ≤ 8, int16 for ≤ 16) and ``<name>:scale`` (float32, one per
output channel). A ``Sparsify`` layer may instead keep a bitmask of its nonzero weights (``<name>:mask``) and
only those: their codes (``:q`` + ``:scale``) when quantized, else their float32 ``:values``. Each weight gets the
smallest exact storage (:func:`encode_weight`), listed in the file's ``hwloop.packed`` metadata;
:func:`read_weights` turns them back into float32. A weight is packed only when its storage reproduces it bit for
bit (it lies on its grid, as after ``compress_`` or quantization-aware fine-tuning), so a saved model always loads
with identical outputs; a weight that no storage gives back exactly in fewer bytes (not on its grid and not
sparse, or not float32) is stored as it is.

The file is untrusted: the metadata is checked entry by entry (names, bits, shapes, sizes, integer range) and
every problem is a one-line :class:`~hwloop.errors.CompressionError`.

Example:
    >>> import torch
    >>> from hwloop.compress.gates import fake_quant
    >>> from hwloop.compress.quantstore import pack_weight, unpack_weight
    >>> w = fake_quant(torch.randn(4, 9), 4)
    >>> q, s = pack_weight(w, 4)
    >>> q.dtype, q.numel(), torch.equal(unpack_weight(q, s, 4, tuple(w.shape)), w)
    (torch.uint8, 18, True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwloop.errors import CompressionError

__all__ = ["METADATA_KEY", "decode_weight", "encode_weight", "pack_weight", "read_weights", "storage_of", "unpack_weight",
           "write_weights"]

#: safetensors metadata key listing the packed tensors
METADATA_KEY = "hwloop.packed"
_MAX_DIMS = 8              # a packed weight's dimensions (reader and writer agree)
_MAX_ELEMENTS = 2 ** 40    # a packed weight's elements, as a file may claim them
_STEPS = 3   # scales tried: the formula's and up to this many float32 neighbours on each side


def storage_of(bits: int) -> str | None:
    """``int4``, ``int8`` or ``int16`` for a bit-width, None when packing would not save space (> 16 bits)."""
    return "int4" if bits <= 4 else "int8" if bits <= 8 else "int16" if bits <= 16 else None


def _storages(bits: int, sparse: bool) -> set[str]:
    """The storages a table entry may name for ``bits`` (32: float values, sparse entries only)."""
    if bits == 32:
        return {"float32"} if sparse else set()
    return {s for s in (storage_of(bits), "bin1" if bits == 1 else "int2" if bits == 2 else None) if s}


def _nbytes(storage: str, count: int) -> int:
    return {"int2": (count + 3) // 4, "int4": (count + 1) // 2, "int8": count, "int16": 2 * count, "bin1": (count + 7) // 8,
            "float32": 4 * count}[storage]


def _qmax(bits: int) -> int:
    return max(1, 2 ** (bits - 1) - 1)


def _grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q, scale)``: int16 codes of shape ``(out, rest)`` and a float32 ``(out, 1)`` scale with ``q·scale == w``
    exactly, or None when ``w`` is not on a ``bits``-bit grid (or not float32, or more than 16 bits)."""
    if storage_of(bits) is None or w.dtype != torch.float32 or w.dim() < 1 or w.numel() == 0:
        return None
    flat = w.detach().reshape(w.shape[0], -1)
    qmax = _qmax(bits)
    base = (flat.abs().amax(1, keepdim=True) / qmax).clamp_min(1e-12)
    cands = [base]
    up, down = base, base
    for _ in range(_STEPS):
        up, down = torch.nextafter(up, torch.full_like(up, float("inf"))), torch.nextafter(down, torch.zeros_like(down))
        cands += [up, down]
    scale = torch.zeros_like(base)
    q = torch.zeros_like(flat, dtype=torch.int16)
    done = torch.zeros(flat.shape[0], dtype=torch.bool)
    for s in cands:
        qs = torch.clamp(torch.round(flat / s), -qmax, qmax)
        exact = ((qs * s) == flat).all(1) & ~done
        scale[exact] = s[exact]
        q[exact] = qs[exact].to(torch.int16)
        done |= exact
        if bool(done.all()):
            break
    if not bool(done.all()):
        return None
    return q, scale


def _bits_to_bytes(b: torch.Tensor) -> torch.Tensor:
    """Booleans packed eight per byte, element ``8j+i`` in bit ``i`` of byte ``j`` (the last byte zero-padded)."""
    u = b.reshape(-1).to(torch.uint8)
    u = torch.cat([u, torch.zeros((-u.numel()) % 8, dtype=torch.uint8)]).reshape(-1, 8)
    return (u << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8).contiguous()


def _bytes_to_bits(t: torch.Tensor, n: int, where: str) -> torch.Tensor:
    if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != (n + 7) // 8:
        raise CompressionError(f"{where} has {t.dtype} x {t.numel()}; {n} bits need uint8 x {(n + 7) // 8}")
    bits = ((t.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1).bool()
    if bool(bits[n:].any()):
        raise CompressionError(f"{where} sets padding bits past its {n} elements")
    return bits[:n]


def _encode(vals: torch.Tensor, storage: str) -> torch.Tensor:
    """Integer codes (1-D int16) in ``storage`` (``bin1``: codes ±1 as one sign bit each)."""
    if storage == "int4":
        u = (vals & 0xF).to(torch.uint8)
        if u.numel() % 2:
            u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])
        return (u[0::2] | (u[1::2] << 4)).contiguous()
    if storage == "int2":
        u = (vals & 0x3).to(torch.uint8)
        u = torch.cat([u, torch.zeros((-u.numel()) % 4, dtype=torch.uint8)]).reshape(-1, 4)
        return (u << torch.tensor([0, 2, 4, 6], dtype=torch.uint8)).sum(1, dtype=torch.uint8).contiguous()
    if storage == "int8":
        return vals.to(torch.int8).contiguous()
    if storage == "bin1":
        return _bits_to_bytes(vals > 0)
    return vals.to(torch.int16).contiguous()


def _decode(t: torch.Tensor, storage: str, n: int, bits: int, where: str) -> torch.Tensor:
    """The ``n`` int16 codes :func:`_encode` stored in ``t``, checked against ``bits``."""
    if storage == "bin1":
        one = torch.ones((), dtype=torch.int16)
        return torch.where(_bytes_to_bits(t, n, where), one, -one)
    dtype = {"int2": torch.uint8, "int4": torch.uint8, "int8": torch.int8, "int16": torch.int16}[storage]
    size = _nbytes(storage, n) // (2 if storage == "int16" else 1)
    if t.dtype != dtype or t.dim() != 1 or t.numel() != size:
        raise CompressionError(f"{where} has {t.dtype} x {t.numel()}; {n} codes of {bits} bits need {dtype} x {size}")
    if storage == "int4":
        lo, hi = (t & 0xF).to(torch.int16), (t >> 4).to(torch.int16)
        vals = torch.stack([lo, hi], 1).reshape(-1)
        if bool(vals[n:].any()):
            raise CompressionError(f"{where} sets padding bits past its {n} codes")
        vals = vals[:n]
        vals = torch.where(vals >= 8, vals - 16, vals)
    elif storage == "int2":
        vals = ((t.reshape(-1, 1) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)) & 0x3).to(torch.int16).reshape(-1)
        if bool(vals[n:].any()):
            raise CompressionError(f"{where} sets padding bits past its {n} codes")
        vals = torch.where(vals[:n] >= 2, vals[:n] - 4, vals[:n])
    else:
        vals = t.to(torch.int16)
    qmax = _qmax(bits)
    if vals.numel() and int(vals.to(torch.int32).abs().max()) > qmax:   # int32: abs(-32768) overflows int16
        raise CompressionError(f"{where} holds {int(vals.to(torch.int32).abs().max())}; {bits} bits allow at most "
                               f"{qmax}")
    return vals


def pack_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q, scale)`` that give back ``w`` exactly (``q`` packed for its storage), or None when ``w`` is not on a
    ``bits``-bit grid (or not float32, or more than 16 bits)."""
    got = _grid(w, bits)
    storage = storage_of(bits)
    if got is None or storage is None:
        return None
    q, scale = got
    return _encode(q.reshape(-1), storage), scale.reshape(-1).contiguous()


def unpack_weight(q: torch.Tensor, scale: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 weight of ``shape`` that ``q`` (as :func:`pack_weight` stores it) and ``scale`` encode."""
    storage = storage_of(bits)
    if storage is None:
        raise CompressionError(f"packed weight of {bits} bits: packing stores at most 16 bits")
    n = math.prod(shape)
    vals = _decode(q, storage, n, bits, "packed weight")
    return _dequant(vals, scale, shape)


def _dequant(vals: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...], where: str = "packed weight"
             ) -> torch.Tensor:
    if scale.dtype != torch.float32 or scale.dim() != 1 or scale.numel() != shape[0]:
        raise CompressionError(f"{where} scale has {scale.dtype} x {scale.numel()}; need float32 x {shape[0]}")
    if scale.numel() and not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise CompressionError(f"{where} scale must be finite and positive (one per output channel)")
    return (vals.to(torch.float32).reshape(shape[0], -1) * scale.reshape(-1, 1)).reshape(shape)


def _codes_storage(bits: int, codes: torch.Tensor) -> str:
    """``bin1`` for codes that are all ±1 at one bit, ``int2`` at two bits (codes -1..1), else the dense storage."""
    if bits == 1 and bool((codes != 0).all()):
        return "bin1"
    if bits == 2:
        return "int2"
    st = storage_of(bits)
    assert st is not None
    return st


def encode_weight(w: torch.Tensor, bits: int | None, sparse: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The smallest exact storage of ``w`` — tensors (suffixes ``q``, ``scale``, ``mask``, ``values``) and the table
    entry — or None when no storage beats float32 or gives ``w`` back exactly.

    ``bits``: the plan's weight bits (None: not quantized); ``sparse``: the plan sparsifies the layer, so a bitmask
    of the nonzero weights plus their values alone is tried too. Codes of ±1 only (one bit, no zeros among the
    stored values) take one sign bit each (``bin1``); two-bit codes (-1, 0, 1 on the symmetric grid) two bits
    (``int2``, four per byte).

    Example:
        >>> import torch
        >>> w = torch.tensor([[0.0, 1.5, 0.0, -1.5], [2.0, 0.0, 0.0, 0.0]] * 8)
        >>> tensors, entry = encode_weight(w, 1, sparse=True)
        >>> entry["storage"], entry["sparse"], {k: t.numel() for k, t in sorted(tensors.items())}
        ('bin1', True, {'mask': 8, 'q': 3, 'scale': 16})
        >>> torch.equal(decode_weight(tensors, entry, "w"), w)
        True
    """
    if w.dtype != torch.float32 or not 1 <= w.dim() <= _MAX_DIMS or w.numel() == 0:
        return None
    shape, n = list(w.shape), w.numel()
    best: tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None = None

    def consider(size: int, tensors: dict[str, torch.Tensor], entry: dict[str, Any]) -> None:
        nonlocal best
        if size < 4 * n and (best is None or size < best[0]):
            best = (size, tensors, entry)

    got = _grid(w, bits) if bits is not None else None
    if got is not None and bits is not None:
        q, scale = got
        flat_q = q.reshape(-1)
        st = _codes_storage(bits, flat_q)
        consider(_nbytes(st, n) + 4 * shape[0], {"q": _encode(flat_q, st), "scale": scale.reshape(-1).contiguous()},
                 {"bits": bits, "shape": shape, "storage": st})
        if sparse:
            keep = flat_q != 0
            nz = flat_q[keep]
            st = _codes_storage(bits, nz)
            consider(_nbytes("bin1", n) + _nbytes(st, nz.numel()) + 4 * shape[0],
                     {"mask": _bits_to_bytes(keep), "q": _encode(nz, st), "scale": scale.reshape(-1).contiguous()},
                     {"bits": bits, "shape": shape, "storage": st, "sparse": True})
    if sparse and got is None:
        flat = w.detach().reshape(-1)
        keep = (flat != 0) | torch.signbit(flat)   # -0.0 is kept as a value, so it loads back as -0.0
        consider(_nbytes("bin1", n) + 4 * int(keep.sum()), {"mask": _bits_to_bytes(keep),
                 "values": flat[keep].contiguous()}, {"bits": 32, "shape": shape, "storage": "float32", "sparse": True})
    return None if best is None else (best[1], best[2])


def decode_weight(tensors: Mapping[str, torch.Tensor], entry: Mapping[str, Any], where: str) -> torch.Tensor:
    """The float32 weight an :func:`encode_weight` entry and its tensors stand for (both checked: untrusted)."""
    bits, shape, storage = entry["bits"], tuple(entry["shape"]), entry["storage"]
    sparse = bool(entry.get("sparse", False))
    if not isinstance(storage, str) or storage not in _storages(bits, sparse):
        raise CompressionError(f"{where}: bits={_short(bits)} storage={_short(storage)} sparse={sparse} do not match")
    n = math.prod(shape)
    want = {"mask", "values"} if storage == "float32" else {"mask", "q", "scale"} if sparse else {"q", "scale"}
    if set(tensors) != want:
        raise CompressionError(f"{where}: the file must hold {', '.join(sorted(want))} for it, got "
                               f"{', '.join(sorted(tensors)) or 'none'}")
    if not sparse:
        return _dequant(_decode(tensors["q"], storage, n, bits, where), tensors["scale"], shape, where)
    keep = _bytes_to_bits(tensors["mask"], n, f"{where} mask")
    count = int(keep.sum())
    if storage == "float32":
        vals_f = tensors["values"]
        if vals_f.dtype != torch.float32 or vals_f.dim() != 1 or vals_f.numel() != count:
            raise CompressionError(f"{where} values have {vals_f.dtype} x {vals_f.numel()}; its mask keeps {count}")
        out = torch.zeros(n, dtype=torch.float32)
        out[keep] = vals_f
        return out.reshape(shape)
    codes = torch.zeros(n, dtype=torch.int16)
    codes[keep] = _decode(tensors["q"], storage, count, bits, where)
    return _dequant(codes, tensors["scale"], shape, where)


def write_weights(model: nn.Module, plan: Any, path: str | Path, *, pack: bool = True,
                  metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Save ``model``'s state dict to safetensors, each weight of its plan's ``Quantize`` and ``Sparsify`` layers in
    its smallest exact storage (:func:`encode_weight`); returns the table of those (name → entry)."""
    from safetensors.torch import save_file

    from hwloop.compress.actions import Quantize, Sparsify

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    table: dict[str, Any] = {}
    if pack:
        bits = {f"{a.layer}.weight": a.w_bits for a in plan.actions if isinstance(a, Quantize)}
        sparse = {f"{a.layer}.weight" for a in plan.actions if isinstance(a, Sparsify)}
        for name in sorted(set(bits) | sparse):
            w = state.get(name)
            if w is None:
                continue
            got = encode_weight(w, bits.get(name), name in sparse)
            if got is None:
                continue
            tensors, entry = got
            del state[name]
            state.update({f"{name}:{k}": t for k, t in tensors.items()})
            table[name] = entry
    meta = dict(metadata or {})
    meta[METADATA_KEY] = json.dumps(table, sort_keys=True)
    save_file(state, str(path), metadata=meta)
    return table


def read_weights(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, packed weights decoded (``model``, when given, must have each
    packed weight with the recorded shape)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # OSError or safetensors' own error types
        raise CompressionError(f"cannot read weights {str(path)!r}: {e}") from e
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return state
    try:
        table = json.loads(raw)
    except (ValueError, RecursionError) as e:   # JSONDecodeError is a ValueError; so is a 5,000-digit integer
        raise CompressionError(f"weights {str(path)!r}: metadata {METADATA_KEY} is not JSON: "
                               f"{str(e)[:200]}") from e
    if not isinstance(table, dict):
        raise CompressionError(f"weights {str(path)!r}: metadata {METADATA_KEY} must be a JSON object")
    own = dict(model.state_dict()) if model is not None else {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k in [k for k in state if ":" in k]:
        prefix, _, suffix = k.rpartition(":")
        groups.setdefault(prefix, {})[suffix] = state.pop(k)
    for name, info in table.items():
        where = f"weights {str(path)!r}: packed {name[:200]!r}"
        if ":" in name:
            raise CompressionError(f"{where}: a packed tensor's name must not contain ':'")
        if (not isinstance(info, dict) or not {"bits", "shape", "storage"} <= set(info)
                or not set(info) <= {"bits", "shape", "storage", "sparse"}):
            raise CompressionError(f"{where} needs exactly bits, shape and storage (and sparse: true when sparse)")
        bits, shape, sparse, storage = info["bits"], info["shape"], info.get("sparse", False), info["storage"]
        if sparse is not True and "sparse" in info:
            raise CompressionError(f"{where}: sparse={sparse!r} must be true when given")
        if (isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 16 or bits == 32)
                or not isinstance(storage, str) or storage not in _storages(bits, bool(sparse))):
            raise CompressionError(f"{where}: bits={_short(bits)} storage={_short(storage)} do not match "
                                   "(int4 up to 4 bits, bin1 for 1, int2 for 2, int8 up to 8, int16 up to 16; "
                                   "float32 for bits 32, sparse only)")
        if (not isinstance(shape, list) or not shape or len(shape) > _MAX_DIMS
                or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= _MAX_ELEMENTS for d in shape)
                or math.prod(shape) > _MAX_ELEMENTS):
            raise CompressionError(f"{where}: shape {_short(shape)} must be a list of at most {_MAX_DIMS} positive "
                                   f"ints, at most 2**40 elements in all")
        if name in own and list(own[name].shape) != shape:
            raise CompressionError(f"{where} has shape {shape}; the plan's model has {list(own[name].shape)}")
        if name in state:
            raise CompressionError(f"{where}: the file must not hold {name} itself beside its packed form")
        state[name] = decode_weight(groups.pop(name, {}), info, where)
    if groups:
        stray = [f"{p}:{s}" for p, parts in groups.items() for s in parts][:3]
        raise CompressionError(f"weights {str(path)!r}: tensors {stray} are not listed in {METADATA_KEY}")
    return state


def _short(v: Any) -> str:
    """``repr`` of an untrusted value, cut to 60 characters (and safe for huge integers)."""
    try:
        r = repr(v)
    except ValueError:   # an integer past Python's 4,300-digit limit
        r = f"<{type(v).__name__} too large to print>"
    return r if len(r) <= 60 else r[:57] + "..."
