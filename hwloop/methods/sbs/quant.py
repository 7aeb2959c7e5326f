"""The super-bit quantizer of SBS and its binary threshold gates.

Weights are normalised per output channel and clipped, ``z = (clip(w/γ, −1, 1) + 1) / 2`` in ``[0, 1]``
(``γ`` the channel's largest magnitude times ``clip``, a statistic, not learned), and quantized on the grids
``s_b = 1/(2^b − 1)``. These grids are nested for ``b`` doubling (``2^{2b} − 1 = (2^b − 1)(2^b + 1)``:
2 → 4 → 8), so the super-bit weight is a ``b₁``-bit base plus re-quantized residual offsets, kept as
integer codes on the top grid ``D = 2^{b_K} − 1``::

    k₁ = ⌊z·(2^{b₁}−1) + ½⌋                        (the base)
    r_j = ⌊z·(2^{b_j}−1) − n_{j−1} + ½⌋            (offset j, n_{j−1} = the code so far on grid b_j)
    code = k₁·M₁ + g₂·(r₂·M₂ + g₃·(r₃·M₃ + …))      (M_j = D / (2^{b_j} − 1))
    ŵ = γ·(2·code/D − 1)

With every gate on, ``code = ⌊z·D + ½⌋``: the top-bit quantizer, bit for bit (the codes are integers and the
arithmetic runs in float64, where ``z·D ± n + ½`` is exact); with ``g₂ = 0`` it is the base quantizer whatever
the higher gates. Rounding is half-up everywhere (half-to-even would break the identity at ties).

Gates are binary in the forward pass and straight-through in the backward pass
(:func:`threshold_gate`): a residual is kept when its normalised RMS exceeds its learned threshold; a filter
is kept (not 0-bit) when its normalised norm exceeds its group's threshold.

Example:
    >>> import torch
    >>> w = torch.randn(4, 3, 3, 3)
    >>> g = torch.ones(2)
    >>> torch.equal(super_bit_weight(w, (2, 4, 8), g)[0], uniform_quant(w, 8))
    True
    >>> torch.equal(super_bit_weight(w, (2, 4, 8), torch.tensor([0.0, 1.0]))[0], uniform_quant(w, 2))
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from hwloop.errors import CompressionError

__all__ = ["W_GRIDS", "act_quant", "check_levels", "normalise", "plan_grid_weight", "residual_codes",
           "super_bit_weight", "threshold_gate", "uniform_quant"]

W_GRIDS = ("superbit", "plan")


def check_levels(levels: Sequence[int], what: str = "w_levels") -> tuple[int, ...]:
    """Nested levels: strictly increasing, each the double of the previous (2 → 4 → 8), in [1, 16]."""
    lv = tuple(levels)
    if (not lv or any(isinstance(b, bool) or not isinstance(b, int) for b in lv) or lv[0] < 1 or lv[-1] > 16
            or any(b != 2 * a for a, b in itertools.pairwise(lv))):
        raise CompressionError(f"{what}={list(levels)!r} must be bit-widths in [1, 16], each twice the previous "
                               "(nested grids), e.g. [2, 4, 8]")
    return lv


def _rhu(x: torch.Tensor) -> torch.Tensor:
    """Round half up (``⌊x + ½⌋``)."""
    return torch.floor(x + 0.5)


def normalise(w: torch.Tensor, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, γ)``: ``z = (clip(w/γ, −1, 1) + 1)/2`` in float64, ``γ`` per output channel (detached, > 0)."""
    flat = w.reshape(w.shape[0], -1).double()
    gamma = (flat.detach().abs().amax(1, keepdim=True) * clip).clamp_min(1e-12)
    z = (torch.clamp(flat / gamma, -1.0, 1.0) + 1.0) / 2.0
    return z, gamma


def uniform_quant(w: torch.Tensor, bits: int, clip: float = 1.0) -> torch.Tensor:
    """The plain ``bits``-bit quantizer on the same normalised grid (no gradient): the reference of the tests."""
    z, gamma = normalise(w.detach(), clip)
    d = float(2 ** bits - 1)
    return (gamma * (2.0 * (_rhu(z * d) / d) - 1.0)).to(w.dtype).reshape(w.shape)


def residual_codes(z: torch.Tensor, levels: Sequence[int]) -> list[torch.Tensor]:
    """Integer codes ``[k₁, r₂, …, r_K]`` of ``z`` (float64, no gradient): base, then each re-quantized offset."""
    z = z.detach()
    codes = [_rhu(z * float(2 ** levels[0] - 1))]
    n = codes[0]
    for a, b in itertools.pairwise(levels):
        n = n * float(2 ** a + 1)              # the code so far, on grid b (exact: nested grids)
        r = _rhu(z * float(2 ** b - 1) - n)
        codes.append(r)
        n = n + r
    return codes


def super_bit_weight(w: torch.Tensor, levels: Sequence[int], gates: torch.Tensor, clip: float = 1.0
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The gated super-bit weight and the normalised RMS of each offset (``len(levels) − 1`` gates).

    ``gates[j]`` multiplies offset ``j + 2`` (nested: a higher offset counts only under the lower ones).
    The weight gets a straight-through gradient (identity inside the clip range), the gates the exact
    derivative of the code. Returns ``(ŵ, [rms of offset 2, …])`` (the RMS in units of ``γ``).
    """
    z, gamma = normalise(w, clip)
    codes = residual_codes(z, levels)
    top = float(2 ** levels[-1] - 1)
    mult = [top / float(2 ** b - 1) for b in levels]
    g = gates.double()
    inner = torch.zeros_like(z)
    for j in range(len(levels) - 1, 0, -1):
        inner = g[j - 1] * (codes[j] * mult[j] + inner)
    code = codes[0] * mult[0] + inner
    q = gamma * (2.0 * (code / top) - 1.0)
    lin = gamma * (2.0 * z - 1.0)
    out = (q + (lin - lin.detach())).to(w.dtype).reshape(w.shape)
    rms = [((2.0 * codes[j] * mult[j] / top) ** 2).mean().sqrt().float() for j in range(1, len(levels))]
    return out, rms


def plan_grid_weight(w: torch.Tensor, levels: Sequence[int], gates: torch.Tensor, w_range: str = "max"
                     ) -> torch.Tensor:
    """The gated weight on the grids extraction exports (``w_grid = "plan"``): ``E₁ + Σ_j G_j·(E_j − E_{j−1})`` with
    ``E_j`` the plan's symmetric per-channel ``levels[j]``-bit weight (codes ``±(2^{b−1}−1)``: 2 bits is ternary; the
    step from each channel's largest magnitude, or its least-error clip with ``w_range = "mse"``) and ``G_j =
    gates[j − 1]`` (cumulative, hard in the forward pass). So with the gates of a level the searched weight equals
    the exported one exactly: the search prices each level as it is exported. Straight-through gradient to ``w``
    (identity), ``∂ŵ/∂G_j = E_j − E_{j−1}``."""
    from hwloop.compress.gates import fake_quant
    from hwloop.methods.sbs.actq import mse_quant

    qs = [mse_quant(w, b) if w_range == "mse" else fake_quant(w.detach(), b) for b in levels]
    g = [torch.ones((), dtype=w.dtype), *[x.to(w.dtype) for x in gates], torch.zeros((), dtype=w.dtype)]
    out = torch.zeros_like(qs[0])
    for j, q in enumerate(qs):   # Σ (G_j − G_{j+1})·E_j: with hard gates exactly one E_j, bit for bit
        out = out + (g[j] - g[j + 1]) * q
    return out + (w - w.detach())


def threshold_gate(score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``1[score > threshold]`` in the forward pass; straight-through ``score − threshold`` in the backward pass
    (the threshold gets −1 per gate, the score +1)."""
    soft = score - threshold
    hard = (soft > 0).to(soft.dtype)
    return hard + (soft - soft.detach())


def act_quant(x: torch.Tensor, amax: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-tensor quantization with range ``amax`` (as :class:`~hwloop.compress.actquant.ActivationQuantizer`
    does it, so the search sees what the exported plan runs), straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = (amax / qmax).clamp_min(1e-12)
    q = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
    return x + (q - x).detach()
