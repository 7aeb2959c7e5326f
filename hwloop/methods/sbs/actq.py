"""SBS's quantization for the fine-tune and the exported plan: per-layer activation bits with unsigned inputs and
clipped ranges (:func:`sbs_activations`, on hwloop's one activation quantizer,
:class:`hwloop.compress.actquant.quantized_activations`), and weights on the plan's symmetric grid with a
least-error range (:func:`mse_quant`, :class:`mse_weights`).

The activation quantizer lived here in session 5 (``a_signed = "auto"``: unsigned codes for inputs never negative;
``a_range = "mse"``: least-error clip); since session 6 it is :mod:`hwloop.compress.actquant`, which the l1l2
search and the plans' replay use as well. :func:`sbs_activations` keeps this module's call (defaults ``symmetric``,
``max``, the plain quantizer) and its numerics bit for bit.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> data = [(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))] * 2
    >>> with sbs_activations(net, {"2": 4}, signed="auto", mode="mse") as aq:
    ...     n = aq.calibrate(data, 2)
    ...     y = net.eval()(torch.randn(3, 4))
    >>> aq.export()["2"]["signed"]
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hwloop.compress.actquant import A_RANGES, A_SIGNED, mse_range, quantize_act, quantized_activations
from hwloop.compress.extract import get_module

__all__ = ["A_RANGES", "A_SIGNED", "fake_quant_mse", "mse_quant", "mse_range", "mse_weight_scale", "mse_weights",
           "quantize_act", "sbs_activations"]


def sbs_activations(model: nn.Module, bits: Mapping[str, int], *, signed: str = "symmetric", mode: str = "max",
                    amax: Mapping[str, float] | None = None, momentum: float = 0.1) -> quantized_activations:
    """:class:`~hwloop.compress.actquant.quantized_activations` with per-layer ``bits`` (layer → activation bits),
    ``amax`` the search's ranges used until :meth:`~hwloop.compress.actquant.quantized_activations.calibrate` reads
    the signs and least-error ranges (signed codes until then, as in session 5)."""
    return quantized_activations(model, dict(bits), amax=amax, signed=signed, mode=mode, momentum=momentum,
                                 signs={n: True for n in bits})


# ---------------------------------------------------------------- weights: the plan's grid with a least-error range
def mse_weight_scale(w: torch.Tensor, bits: int, points: int = 32) -> torch.Tensor:
    """Per output channel, the step of the symmetric ``bits``-bit grid (codes ``±(2^{b−1}−1)``, the plan's scheme)
    whose clipping range, among ``points`` fractions of the channel's largest magnitude, quantizes the channel with
    the smallest squared error. Detached, shape ``(channels, 1)``."""
    flat = w.detach().reshape(w.shape[0], -1)
    qmax = max(1, 2 ** (bits - 1) - 1)
    top = flat.abs().amax(1, keepdim=True).clamp_min(1e-12)
    best = top / qmax
    best_err = torch.full_like(top, float("inf"))
    for i in range(1, points + 1):
        s = top * (i / points) / qmax
        err = ((torch.clamp(torch.round(flat / s), -qmax, qmax) * s - flat) ** 2).sum(1, keepdim=True)
        better = err < best_err
        best = torch.where(better, s, best)
        best_err = torch.where(better, err, best_err)
    return best


def mse_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` on its channels' least-error symmetric grids (:func:`mse_weight_scale`), no gradient: exactly
    ``code · step``. The largest code of a clipped channel is ``±(2^{b−1}−1)``, so the weights pack on the plan's
    grid (:func:`hwloop.compress.quantstore.pack_weight`)."""
    flat = w.detach().reshape(w.shape[0], -1)
    qmax = max(1, 2 ** (bits - 1) - 1)
    s = mse_weight_scale(w, bits)
    return (torch.clamp(torch.round(flat / s), -qmax, qmax) * s).reshape(w.shape)


def fake_quant_mse(w: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`mse_quant` with a straight-through gradient (for training)."""
    return w + (mse_quant(w, bits) - w).detach()


class _MseQuant(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_mse(w, self.bits)


class mse_weights:
    """Context manager: train with the listed layers' weights on :func:`fake_quant_mse` grids; on exit the quantized
    values are baked in (as :class:`hwloop.compress.gated.quantized_weights` does with the largest-magnitude grid)."""

    def __init__(self, model: nn.Module, w_bits: Mapping[str, int]) -> None:
        self.model, self.w_bits = model, {n: int(b) for n, b in w_bits.items() if b < 32}

    def __enter__(self) -> nn.Module:
        from torch.nn.utils import parametrize

        for name, bits in self.w_bits.items():
            parametrize.register_parametrization(get_module(self.model, name), "weight", _MseQuant(bits))
        return self.model

    def __exit__(self, *exc: object) -> None:
        from torch.nn.utils import parametrize

        for name, bits in self.w_bits.items():
            mod: Any = get_module(self.model, name)
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
                with torch.no_grad():      # baked exactly (code · step), so the weights pack
                    mod.weight.copy_(mse_quant(mod.weight, bits))
