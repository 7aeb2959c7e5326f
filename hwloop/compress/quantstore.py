"""Low-bit weight storage: quantized layers go to safetensors as integers plus per-channel scales.

A plan's ``Quantize(layer, w_bits)`` rounds the weight to ``q·s`` with integer ``q`` in ``[-qmax, qmax]``
(``qmax = 2^(bits-1) - 1``, 1 for one bit) and one float32 scale ``s`` per output channel
(:func:`~hwloop.compress.gates.fake_quant`). :func:`write_weights` stores such a weight as ``<name>:q``
(int4 packed two per byte for ≤ 4 bits, int8 for ≤ 8, int16 for ≤ 16) and ``<name>:scale`` (float32, one per
output channel), listed in the file's ``hwloop.packed`` metadata; :func:`read_weights` turns them back into
``q·s``. A weight is packed only when ``q·s`` reproduces it bit for bit (it lies on its grid, as after
``compress_`` or quantization-aware fine-tuning), so a saved model always loads with identical outputs; a weight
that is not on its grid (or not float32) is stored as it is.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwloop.errors import CompressionError

__all__ = ["METADATA_KEY", "pack_weight", "read_weights", "storage_of", "unpack_weight", "write_weights"]

#: safetensors metadata key listing the packed tensors
METADATA_KEY = "hwloop.packed"
_STEPS = 3   # scales tried: the formula's and up to this many float32 neighbours on each side


def storage_of(bits: int) -> str | None:
    """``int4``, ``int8`` or ``int16`` for a bit-width, None when packing would not save space (> 16 bits)."""
    return "int4" if bits <= 4 else "int8" if bits <= 8 else "int16" if bits <= 16 else None


def _qmax(bits: int) -> int:
    return max(1, 2 ** (bits - 1) - 1)


def pack_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q, scale)`` that give back ``w`` exactly (``q`` packed for its storage), or None when ``w`` is not on a
    ``bits``-bit grid (or not float32, or more than 16 bits)."""
    storage = storage_of(bits)
    if storage is None or w.dtype != torch.float32 or w.dim() < 1 or w.numel() == 0:
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
    q = q.reshape(-1)
    if storage == "int4":
        u = (q & 0xF).to(torch.uint8)
        if u.numel() % 2:
            u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])
        packed = u[0::2] | (u[1::2] << 4)
    elif storage == "int8":
        packed = q.to(torch.int8)
    else:
        packed = q
    return packed.contiguous(), scale.reshape(-1).contiguous()


def unpack_weight(q: torch.Tensor, scale: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 weight of ``shape`` that ``q`` (as :func:`pack_weight` stores it) and ``scale`` encode."""
    storage = storage_of(bits)
    n = 1
    for d in shape:
        n *= d
    want = {"int4": (torch.uint8, (n + 1) // 2), "int8": (torch.int8, n), "int16": (torch.int16, n)}.get(storage or "")
    if want is None or q.dtype != want[0] or q.dim() != 1 or q.numel() != want[1]:
        raise CompressionError(f"packed weight has {q.dtype} x {q.numel()}; {bits} bits of shape {list(shape)} "
                               f"need {want[0] if want else 'no packing'} x {want[1] if want else 0}")
    if scale.dtype != torch.float32 or scale.dim() != 1 or scale.numel() != shape[0]:
        raise CompressionError(f"packed weight scale has {scale.dtype} x {scale.numel()}; need float32 x {shape[0]}")
    if storage == "int4":
        lo = (q & 0xF).to(torch.int16)
        hi = (q >> 4).to(torch.int16)
        vals = torch.stack([lo, hi], 1).reshape(-1)[:n]
        vals = torch.where(vals >= 8, vals - 16, vals)
    else:
        vals = q.to(torch.int16)
    qmax = _qmax(bits)
    if vals.numel() and int(vals.abs().max()) > qmax:
        raise CompressionError(f"packed weight holds {int(vals.abs().max())}; {bits} bits allow at most {qmax}")
    flat = vals.to(torch.float32).reshape(shape[0], -1) * scale.reshape(-1, 1)
    return flat.reshape(shape)


def write_weights(model: nn.Module, plan: Any, path: str | Path, *, pack: bool = True,
                  metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Save ``model``'s state dict to safetensors, packing its plan's quantized weights; returns the packed
    tensors' table (name → bits, shape, storage)."""
    from safetensors.torch import save_file

    from hwloop.compress.actions import Quantize

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    table: dict[str, Any] = {}
    if pack:
        for a in plan.actions:
            if not isinstance(a, Quantize):
                continue
            name = f"{a.layer}.weight"
            w = state.get(name)
            if w is None:
                continue
            got = pack_weight(w, a.w_bits)
            if got is None:
                continue
            q, s = got
            del state[name]
            state[f"{name}:q"], state[f"{name}:scale"] = q, s
            table[name] = {"bits": a.w_bits, "shape": list(w.shape), "storage": storage_of(a.w_bits)}
    meta = dict(metadata or {})
    meta[METADATA_KEY] = json.dumps(table, sort_keys=True)
    save_file(state, str(path), metadata=meta)
    return table


def read_weights(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, packed weights dequantized (``model``, when given, must have each
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
    except (json.JSONDecodeError, RecursionError) as e:
        raise CompressionError(f"weights {str(path)!r}: metadata {METADATA_KEY} is not JSON: {e}") from e
    if not isinstance(table, dict):
        raise CompressionError(f"weights {str(path)!r}: metadata {METADATA_KEY} must be a JSON object")
    own = dict(model.state_dict()) if model is not None else {}
    for name, info in table.items():
        where = f"weights {str(path)!r}: packed {name!r}"
        if not isinstance(info, dict) or set(info) != {"bits", "shape", "storage"}:
            raise CompressionError(f"{where} needs exactly bits, shape and storage")
        bits, shape = info["bits"], info["shape"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16 or info["storage"] != storage_of(bits):
            raise CompressionError(f"{where}: bits={bits!r} storage={info['storage']!r} do not match "
                                   "(int4 up to 4 bits, int8 up to 8, int16 up to 16)")
        if (not isinstance(shape, list) or not shape or len(shape) > 8
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
            raise CompressionError(f"{where}: shape {shape!r} must be a list of positive ints")
        if name in own and list(own[name].shape) != shape:
            raise CompressionError(f"{where} has shape {shape}; the plan's model has {list(own[name].shape)}")
        if f"{name}:q" not in state or f"{name}:scale" not in state or name in state:
            raise CompressionError(f"{where}: the file must hold {name}:q and {name}:scale and not {name}")
        state[name] = unpack_weight(state.pop(f"{name}:q"), state.pop(f"{name}:scale"), bits, tuple(shape))
    stray = [k for k in state if ":" in k]
    if stray:
        raise CompressionError(f"weights {str(path)!r}: tensors {stray[:3]} are not listed in {METADATA_KEY}")
    return state
