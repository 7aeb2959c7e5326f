"""Fake-quantized activations: the inputs of a plan's quantized layers rounded to its ``a_bits``.

A quantized layer on an integer device reads its input activations at ``a_bits`` with one static
scale per tensor. :class:`ActivationQuantizer` models that: a symmetric uniform quantizer whose range
(``amax``, the largest magnitude seen) is observed in training mode (first batch, then an exponential
moving average) and frozen in eval mode, with a straight-through gradient. :class:`quantized_activations`
attaches one to the input of every listed layer with forward pre-hooks and removes them on exit, so the
model stays a plain ``nn.Module`` (what the device and the workload extraction see); the observed ranges
go into the plan (``meta["a_amax"]``) and re-create the same quantization anywhere.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with quantized_activations(net, ["2"], bits=2) as aq:
    ...     _ = net.train()(torch.randn(8, 4))       # observe the range
    ...     y = net.eval()(torch.randn(3, 4))
    >>> sorted(aq.amax()) == ["2"] and aq.amax()["2"] > 0
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is Python >= 3.11; hwloop supports 3.10
    from typing_extensions import Self

import torch
from torch import nn

from hwloop.compress.extract import get_module
from hwloop.errors import CompressionError

__all__ = ["ActivationQuantizer", "quantized_activations"]


class ActivationQuantizer(nn.Module):
    """Symmetric per-tensor fake quantization of activations to ``bits`` with an observed static range.

    Args:
        bits: activation bit-width (2..16).
        momentum: weight of a new batch's range in the moving average (training mode).
        amax: a known range (e.g. from a plan); None observes it from the first training batch.
    """

    amax: torch.Tensor  # a registered buffer; -1 until observed

    def __init__(self, bits: int, momentum: float = 0.1, amax: float | None = None) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise CompressionError(f"activation bits={bits!r} must be an int in [2, 16]")
        if not 0.0 < momentum <= 1.0:
            raise CompressionError(f"momentum={momentum} must be in (0, 1]")
        if amax is not None and not amax >= 0:
            raise CompressionError(f"amax={amax} must be >= 0")
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("amax", torch.tensor(float(amax) if amax is not None else -1.0))

    @property
    def observed(self) -> bool:
        return bool(self.amax >= 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                cur = x.detach().abs().amax().to(self.amax.dtype)
                self.amax.copy_(cur if not self.observed else (1 - self.momentum) * self.amax + self.momentum * cur)
        if not self.observed:
            return x  # nothing observed yet (eval before any training batch): leave the input as it is
        qmax = 2 ** (self.bits - 1) - 1
        scale = (self.amax / qmax).clamp_min(1e-12)
        q = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
        return x + (q - x).detach()


class quantized_activations:
    """Context manager: fake-quantize the input of each of ``layers`` to ``bits`` (see the module docstring).

    Args:
        model: the network.
        layers: module names whose inputs are quantized (a plan's ``w_bits`` keys).
        bits: activation bits.
        amax: known ranges per layer (``plan.meta["a_amax"]``); missing ones are observed in training mode.

    Raises:
        CompressionError: a layer name is not a module of ``model`` or ``bits`` is out of range.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], bits: int,
                 amax: Mapping[str, float] | None = None) -> None:
        self.model = model
        self.quantizers: dict[str, ActivationQuantizer] = {}
        known = dict(amax or {})
        for name in layers:
            get_module(model, name)  # fails with a CompressionError naming the layer
            self.quantizers[name] = ActivationQuantizer(bits, amax=known.get(name))
        self._handles: list[Any] = []
        self._observing = False

    def __enter__(self) -> Self:
        for name, q in self.quantizers.items():
            q.train(self.model.training)

            def hook(mod: nn.Module, args: tuple[Any, ...], q: ActivationQuantizer = q) -> tuple[Any, ...]:
                q.train(mod.training or self._observing)
                return (q(args[0]), *args[1:])

            self._handles.append(get_module(self.model, name).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def observe(self, loader: Iterable[Any], batches: int) -> int:
        """Observe the ranges on ``batches`` batches of ``(x, y)`` with the model in eval mode (batch-norm
        statistics untouched); returns the number of batches used. Needs the context to be entered."""
        if not self.quantizers or batches <= 0:
            return 0
        was = self.model.training
        self.model.eval()
        self._observing = True
        n = 0
        try:
            for x, _ in loader:
                if n >= batches:
                    break
                self.model(x)
                n += 1
        finally:
            self._observing = False
            self.model.train(was)
        return n

    def amax(self) -> dict[str, float]:
        """The observed range of every quantizer that has seen a training batch."""
        return {n: float(q.amax) for n, q in self.quantizers.items() if q.observed}

    @classmethod
    def from_plan(cls, model: nn.Module, plan: Any) -> Self:
        """The activation quantization a plan describes (its ``a_bits`` on the inputs of its ``w_bits``
        layers, ranges from ``meta["a_amax"]``); a no-op when the plan has no ``a_bits`` or no ranges."""
        bits = plan.a_bits
        amax = dict(plan.meta.get("a_amax", {})) if bits is not None and 2 <= bits <= 16 else {}
        return cls(model, list(amax), int(bits) if amax else 8, amax)
