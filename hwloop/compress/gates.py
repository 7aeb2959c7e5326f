"""Gates: one differentiable abstraction for every compression kind.

A :class:`Gate` is a small ``nn.Module`` holding the continuous variables of one
compression decision. Every gate exposes the same four things, so the search, the
latency models and the extraction never need to know which kind they hold:

* :meth:`Gate.size` — the differentiable *effective size* (channels, rank or bits);
* :meth:`Gate.hard_size` — the integer size extraction will use;
* :meth:`Gate.project_` — the projection applied after every optimiser step
  (non-negativity, box constraints);
* :meth:`Gate.to_dict` — a JSON description for logs and plans.

Channel and rank gates share the ℓ1/ℓ2 surrogate of Nasery et al. (2023): for a
non-negative gate vector ``a``, the effective width is ``s(a) = (‖a‖₁/‖a‖₂)²``, which is
scale invariant, never exceeds ``‖a‖₀`` and equals it for 0/1 gates. Bit gates write a
weight as a nested sum of residual quantizers (2 → 4 → 8 bits) with monotone gates in
[0, 1]; the effective bits are differentiable and 0 bits means the weight is zero.

New seeds (HALOC rank candidates, SBS bit sharing, OBC post-training, LCS subspaces)
subclass :class:`Gate`; callers only use the four methods above.

Example:
    >>> import torch
    >>> from hwloop.compress.gates import ChannelGate, effective_size
    >>> g = ChannelGate(4)
    >>> float(g.size().detach())
    4.0
    >>> float(effective_size(torch.tensor([1.0, 1.0, 0.0, 0.0])))
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hwloop.errors import CompressionError

__all__ = ["BIT_LEVELS", "BitGate", "ChannelGate", "Gate", "RankGate", "effective_size", "fake_quant"]

BIT_LEVELS: tuple[int, ...] = (2, 4, 8)


def effective_size(a: torch.Tensor) -> torch.Tensor:
    """The ℓ1/ℓ2 effective size ``(‖a‖₁/‖a‖₂)²`` of a gate vector (0 for an all-zero vector).

    Args:
        a: a 1-D tensor of gate values.

    Returns:
        A 0-d tensor, differentiable in ``a``.

    Example:
        >>> float(effective_size(torch.tensor([3.0, 3.0, 0.0])))
        2.0
    """
    m = a.detach().abs().max() if a.numel() else torch.zeros(())
    if float(m) == 0.0:
        return (a * 0).sum()
    b = a / m  # normalise first: the ratio is scale invariant and this avoids under/overflow
    return b.abs().sum() ** 2 / (b * b).sum()


class Gate(nn.Module):
    """Base class: the contract every gate kind fulfils.

    Attributes:
        kind: a short name (``channel``, ``rank``, ``bits``) written into logs and plans.
        max_size: the size of the uncompressed layer (channels, full rank or top bit-width).
    """

    kind: str = "gate"

    def __init__(self, max_size: int) -> None:
        super().__init__()
        if not isinstance(max_size, int) or max_size < 1:
            raise CompressionError(f"gate max_size={max_size!r} must be a positive int")
        self.max_size = max_size

    def size(self) -> torch.Tensor:
        """Differentiable effective size (a 0-d tensor)."""
        raise NotImplementedError

    def hard_size(self) -> int:
        """The integer size extraction uses."""
        raise NotImplementedError

    def project_(self) -> None:
        """Project the parameters back onto the feasible set (called after each optimiser step)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_size": self.max_size, "size": float(self.size()),
                "hard_size": self.hard_size()}


class ChannelGate(Gate):
    """A non-negative gate per output channel of a coupled group; size = ``s(a)``.

    Args:
        channels: number of channels in the group.
        init: initial gate values (default all ones).
        min_keep: extraction keeps at least this many channels.
    """

    kind = "channel"

    def __init__(self, channels: int, init: torch.Tensor | None = None, min_keep: int = 1) -> None:
        super().__init__(channels)
        value = torch.ones(channels) if init is None else init.detach().float().clone().reshape(-1)
        if value.numel() != channels:
            raise CompressionError(f"gate init has {value.numel()} values; the group has {channels} channels")
        if not 1 <= min_keep <= channels:
            raise CompressionError(f"min_keep={min_keep} must be in [1, {channels}]")
        self.a = nn.Parameter(value.clamp_min(0.0))
        self.min_keep = min_keep

    def values(self) -> torch.Tensor:
        """The gate vector (non-negative after :meth:`project_`)."""
        return self.a

    def size(self) -> torch.Tensor:
        return effective_size(self.a)

    def hard_size(self) -> int:
        """``ceil(s(a))`` rounded to the nearest integer first when within 1e-4 of it, at least ``min_keep``."""
        s = float(self.size().detach())
        r = round(s)
        n = r if abs(s - r) < 1e-4 else math.ceil(s)
        return int(min(self.max_size, max(self.min_keep, n)))

    def nonzero(self) -> int:
        """``‖a‖₀``: the number of channels whose gate is not exactly zero."""
        return int((self.a.detach() != 0).sum())

    def keep_mask(self, width: int | None = None, rule: str = "effective") -> torch.Tensor:
        """Boolean mask of the channels to keep.

        Args:
            width: keep exactly this many (largest gates first); overrides ``rule``.
            rule: ``effective`` keeps the top ``hard_size()`` gates, ``nonzero`` keeps every gate != 0.
        """
        a = self.a.detach().abs()
        if width is None:
            if rule == "nonzero":
                mask = a != 0
                if int(mask.sum()) < self.min_keep:
                    width = self.min_keep
                else:
                    return mask
            elif rule == "effective":
                width = self.hard_size()
            else:
                raise CompressionError(f"keep rule {rule!r} is unknown; allowed: effective, nonzero")
        width = int(min(self.max_size, max(1, width)))
        order = torch.argsort(a, descending=True, stable=True)
        mask = torch.zeros(self.max_size, dtype=torch.bool)
        mask[order[:width]] = True
        return mask

    def project_(self) -> None:
        with torch.no_grad():
            self.a.clamp_(min=0.0)


class RankGate(ChannelGate):
    """Gate on the singular values of a factorised layer ``W ≈ U·diag(a)·Vᵀ``; size = effective rank.

    It is a :class:`ChannelGate` on the ``r`` channels between the two factors, initialised from
    the singular values, so extraction removes rank dimensions with the same machinery.
    """

    kind = "rank"


class BitGate(Gate):
    """Monotone nested gates over residual quantizers ``levels`` (default 2 → 4 → 8 bits).

    The gated weight is ``g₁·(Q₂ + g₂·((Q₄−Q₂) + g₃·(Q₈−Q₄)))`` and the effective bits
    ``2·g₁ + 2·g₁g₂ + 4·g₁g₂g₃`` for gates ``gᵢ ∈ [0, 1]``. With ``allow_zero=False``
    (default) the first gate is fixed at 1 so the layer keeps at least the lowest level.

    Args:
        levels: increasing bit-widths.
        allow_zero: whether the layer may go to 0 bits (weight zero).
    """

    kind = "bits"

    def __init__(self, levels: Sequence[int] = BIT_LEVELS, allow_zero: bool = False) -> None:
        lv = tuple(int(b) for b in levels)
        if not lv or any(b < 1 or b > 16 for b in lv) or list(lv) != sorted(set(lv)):
            raise CompressionError(f"bit levels {levels!r} must be strictly increasing ints in [1, 16]")
        super().__init__(lv[-1])
        self.levels = lv
        self.allow_zero = allow_zero
        self.g = nn.Parameter(torch.ones(len(lv)))

    def _gates(self) -> torch.Tensor:
        g = self.g.clamp(0.0, 1.0)
        if not self.allow_zero:
            g = torch.cat([torch.ones_like(g[:1]), g[1:]])
        return torch.cumprod(g, 0)

    def size(self) -> torch.Tensor:
        inc = torch.tensor([self.levels[0]] + [b - a for a, b in zip(self.levels, self.levels[1:])],
                           dtype=self.g.dtype, device=self.g.device)
        return (self._gates() * inc).sum()

    def hard_size(self) -> int:
        """The bits of the deepest level whose nested gate product is above 0.5 (0 if none)."""
        on = self._gates().detach() > 0.5
        bits = 0
        for level, ok in zip(self.levels, on.tolist()):
            if not ok:
                break
            bits = level
        return bits

    def set_bits(self, bits: int) -> None:
        """Set the gates to exactly represent ``bits`` (one of ``levels``, or 0 if allowed)."""
        if bits not in self.levels and not (bits == 0 and self.allow_zero):
            raise CompressionError(f"bits={bits} is not a level; allowed: {self.levels}")
        with torch.no_grad():
            self.g.copy_(torch.tensor([1.0 if bits >= b else 0.0 for b in self.levels]))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The gated nested residual quantization of weight ``w`` (straight-through rounding)."""
        gates = self.g.clamp(0.0, 1.0)
        if not self.allow_zero:
            gates = torch.cat([torch.ones_like(gates[:1]), gates[1:]])
        qs = [fake_quant(w, b) for b in self.levels]
        out = qs[-1] - qs[-2] if len(qs) > 1 else qs[0]
        for i in range(len(qs) - 1, 0, -1):
            base = qs[i - 1] - qs[i - 2] if i >= 2 else qs[0]
            out = base + gates[i] * out
        return gates[0] * out

    def project_(self) -> None:
        with torch.no_grad():
            self.g.clamp_(0.0, 1.0)
            if not self.allow_zero:
                self.g[0] = 1.0


def fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel uniform quantization of ``w`` with a straight-through gradient.

    Args:
        w: weight tensor, output channels first.
        bits: bit-width (>= 2; 1 bit uses the sign times the mean magnitude).

    Example:
        >>> w = torch.tensor([[0.6, -1.0, 0.2]])
        >>> fake_quant(w, 2).tolist()
        [[1.0, -1.0, 0.0]]
    """
    flat = w.reshape(w.shape[0], -1)
    if bits <= 1:
        scale = flat.abs().mean(1, keepdim=True)
        q = torch.sign(flat) * scale
        # exactly sign x mean in the forward (the straight-through sum below is an ulp off at one bit, which
        # would keep the weight off its grid and out of packed storage); the gradient is the same identity
        return (q.detach() + (flat - flat.detach())).reshape(w.shape)
    else:
        qmax = 2 ** (bits - 1) - 1
        scale = (flat.abs().amax(1, keepdim=True) / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale
    return (flat + (q - flat).detach()).reshape(w.shape)
