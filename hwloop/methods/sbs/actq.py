"""SBS's activation quantization for the fine-tune and the exported plan: per-layer bits, unsigned inputs, clipped
ranges (:class:`sbs_activations`).

A quantized layer reads its input at ``a_bits`` with one static scale per tensor. Two choices decide how much a
low bit-width costs in accuracy, and the plain :class:`~hwloop.compress.actquant.ActivationQuantizer` (symmetric,
range = the moving average of each batch's largest magnitude) makes the expensive one of both:

* **signedness** (``a_signed``): ``symmetric`` codes ``−(2^{b−1}−1) … 2^{b−1}−1`` for every input; ``auto`` codes
  ``0 … 2^b − 1`` for an input that is never negative (the output of a ReLU or of an average pool over one, every
  conv input of a ResNet but the first): a 4-bit post-ReLU activation gets 16 levels, not 8 (symmetric spends the
  negative half on values that never occur, so its "A4" is 3 bits of resolution).
* **range** (``a_range``): ``max`` the moving average of each training batch's largest magnitude (what the plain
  quantizer does); ``mse`` the clipping range with the smallest quantization error on the calibration batches
  (a grid over fractions of the largest magnitude seen), frozen during the fine-tune.

Signedness is read from the calibration batches (the smallest value seen). The quantizer is a forward pre-hook,
so the model stays a plain ``nn.Module``; :meth:`sbs_activations.export` gives the ranges and signs for
``plan.meta``.

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

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hwloop.compress.extract import get_module
from hwloop.errors import CompressionError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["A_RANGES", "A_SIGNED", "fake_quant_mse", "mse_quant", "mse_range", "mse_weight_scale", "mse_weights",
           "quantize_act", "sbs_activations"]

A_SIGNED = ("symmetric", "auto")
A_RANGES = ("max", "mse")
_SAMPLES = 1 << 15   # values kept per layer and calibration batch for the range search


def quantize_act(x: torch.Tensor, amax: torch.Tensor | float, bits: int, signed: bool) -> torch.Tensor:
    """Fake quantization with a straight-through gradient: symmetric ``±(2^{b−1}−1)`` codes when ``signed``, else
    ``0 … 2^b − 1`` codes over ``[0, amax]``."""
    qmax = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    a = amax if isinstance(amax, torch.Tensor) else torch.tensor(float(amax))
    scale = (a / qmax).clamp_min(1e-12)
    q = torch.clamp(torch.round(x / scale), -qmax if signed else 0, qmax) * scale
    return x + (q - x).detach()


def mse_range(samples: torch.Tensor, bits: int, signed: bool, points: int = 64) -> float:
    """The clipping range among ``points`` fractions (1/points … 1) of ``samples``' largest magnitude whose
    quantization has the smallest mean squared error on ``samples``."""
    top = float(samples.abs().max()) if samples.numel() else 0.0
    if not top > 0:
        return top
    best, best_err = top, float("inf")
    for i in range(1, points + 1):
        c = top * i / points
        err = float(((quantize_act(samples, c, bits, signed) - samples) ** 2).mean())
        if err < best_err:
            best, best_err = c, err
    return best


class sbs_activations:
    """Context manager: fake-quantize the input of each layer of ``bits`` (layer → activation bits).

    Args:
        model: the network.
        bits: layer name → activation bits (2..16).
        signed: ``symmetric`` (every input signed) or ``auto`` (unsigned where calibration saw no negative value).
        mode: ``max`` (moving average of each training batch's largest magnitude) or ``mse`` (the range with the
            smallest error on the calibration batches, frozen afterwards).
        amax: known starting ranges (e.g. the search's), used until calibration or training replaces them.
        momentum: the moving average's weight of a new batch (``max``).

    Raises:
        CompressionError: a layer is not a module of ``model``, bits out of range or an unknown option.
    """

    def __init__(self, model: nn.Module, bits: Mapping[str, int], *, signed: str = "symmetric", mode: str = "max",
                 amax: Mapping[str, float] | None = None, momentum: float = 0.1) -> None:
        if signed not in A_SIGNED:
            raise CompressionError(f"a_signed={signed!r} is unknown; allowed: {', '.join(A_SIGNED)}")
        if mode not in A_RANGES:
            raise CompressionError(f"a_range={mode!r} is unknown; allowed: {', '.join(A_RANGES)}")
        bad = {n: b for n, b in bits.items() if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16}
        if bad:
            raise CompressionError(f"activation bits {bad} must be integers in [2, 16]")
        self.model, self.mode, self.signed_mode, self.momentum = model, mode, signed, momentum
        self.bits = dict(bits)
        for n in self.bits:
            get_module(model, n)   # a CompressionError naming the layer
        self.amax: dict[str, float] = {n: float(v) for n, v in (amax or {}).items() if n in self.bits and v >= 0}
        self.signed: dict[str, bool] = {n: True for n in self.bits}
        self._calib: dict[str, list[torch.Tensor]] | None = None
        self._min: dict[str, float] = {}
        self._gen = torch.Generator().manual_seed(0)
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            if self._calib is not None:          # calibration pass: record, do not quantize
                with torch.no_grad():
                    v = x.detach().reshape(-1)
                    self._min[name] = min(self._min.get(name, float("inf")), float(v.min()))
                    if v.numel() > _SAMPLES:
                        v = v[torch.randint(v.numel(), (_SAMPLES,), generator=self._gen)]
                    self._calib[name].append(v.float().clone())
                return args
            if mod.training and self.mode == "max":
                with torch.no_grad():
                    cur = float(x.detach().abs().max())
                    old = self.amax.get(name)
                    self.amax[name] = cur if old is None else (1 - self.momentum) * old + self.momentum * cur
            if name not in self.amax:
                return args
            return (quantize_act(x, self.amax[name], self.bits[name], self.signed[name]), *args[1:])
        return hook

    def __enter__(self) -> Self:
        for name in self.bits:
            self._handles.append(get_module(self.model, name).register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def calibrate(self, loader: Iterable[Any], batches: int, seed: int = 0) -> int:
        """Read every layer's input on ``batches`` batches (model in eval mode, batch-norm untouched): its sign
        (``auto``) and its range (``mse``: the least-error clip; ``max``: the mean of the batches' largest
        magnitudes). Needs the context to be entered; returns the batches used."""
        if batches <= 0 or not self.bits:
            return 0
        was = self.model.training
        self.model.eval()
        self._calib = {n: [] for n in self.bits}
        self._min = {}
        self._gen = torch.Generator().manual_seed(seed)
        n = 0
        try:
            for x, _ in loader:
                if n >= batches:
                    break
                self.model(x)
                n += 1
            for name, vals in self._calib.items():
                if not vals:
                    continue
                self.signed[name] = self.signed_mode == "symmetric" or self._min.get(name, -1.0) < 0
                if self.mode == "mse":
                    self.amax[name] = mse_range(torch.cat(vals), self.bits[name], self.signed[name])
                else:
                    self.amax[name] = float(torch.stack([v.abs().max() for v in vals]).mean())
        finally:
            self._calib = None
            self.model.train(was)
        return n

    def export(self) -> dict[str, dict[str, Any]]:
        """Per layer: ``bits``, ``amax`` (the range), ``signed`` (for ``plan.meta``)."""
        return {n: {"bits": self.bits[n], "amax": self.amax[n], "signed": self.signed[n]} for n in self.bits
                if n in self.amax}


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
