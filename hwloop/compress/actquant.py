"""Fake-quantized activations: the inputs of a plan's quantized layers rounded to their ``a_bits``.

A quantized layer on an integer device reads its input activations at ``a_bits`` with one static scale per
tensor. :class:`ActivationQuantizer` models one such input (a straight-through gradient); :class:`quantized_activations`
attaches one to the input of every listed layer with forward pre-hooks and removes them on exit, so the model stays
a plain ``nn.Module`` (what the device and the workload extraction see). This is the one activation quantizer of
hwloop: the l1l2 search's fine-tune (:mod:`hwloop.search.differentiable`), SBS (:mod:`hwloop.methods.sbs`) and
the plans' replay (:meth:`quantized_activations.from_plan`) all use it.

Two choices decide what a low bit-width costs in accuracy (issue 19, session 5):

* **signedness** (``signed``): ``symmetric`` codes ``−(2^{b−1}−1) … 2^{b−1}−1`` on every input; ``auto`` (default)
  codes ``0 … 2^b − 1`` on an input never seen negative (the output of a ReLU or of an average pool over one: every
  conv input of a ResNet but the first). A 4-bit post-ReLU input gets 16 levels, not 8: symmetric codes spend their
  negative half on values that never occur, so their "A4" has 3 bits of resolution.
* **range** (``mode``): ``mse`` (default) the clip with the smallest squared quantization error on the calibration
  batches (64 fractions of the largest magnitude), then frozen; ``max`` the moving average of each training batch's
  largest magnitude (at 4 bits it puts most post-ReLU activations in the lowest two or three codes).

``symmetric`` + ``max`` was the only quantizer before session 6 (plans whose ``meta`` has ``a_amax`` but no
``a_quant`` were made with it and replay with it). Signs and least-error ranges are read by
:meth:`quantized_activations.calibrate` (model in eval mode); a layer never calibrated takes them from the first
training batch it sees. :meth:`quantized_activations.export` gives ``plan.meta["a_quant"]`` (per layer ``bits``,
``amax``, ``signed``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> data = [(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))] * 2
    >>> with quantized_activations(net, ["2"], bits=4) as aq:
    ...     n = aq.calibrate(data, 2)
    ...     y = net.eval()(torch.randn(3, 4))
    >>> aq.export()["2"]["signed"], aq.export()["2"]["amax"] > 0
    (False, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is Python >= 3.11; hwloop supports 3.10
    from typing_extensions import Self

import torch
from torch import nn

from hwloop.compress.extract import get_module
from hwloop.errors import CompressionError

__all__ = ["A_RANGES", "A_SIGNED", "ActivationQuantizer", "mse_range", "quantize_act", "quantized_activations"]

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


def _is_range(v: Any) -> bool:
    """Whether ``v`` is a usable stored activation range: a finite real number >= 0 (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        f = float(v)
    except OverflowError:   # a JSON integer too large for a float
        return False
    return math.isfinite(f) and f >= 0


def _check_bits(bits: Any, what: str = "activation bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise CompressionError(f"{what}={bits!r} must be an int in [2, 16]")
    return bits


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantization of activations to ``bits`` with a static range (:func:`quantize_act`).

    Args:
        bits: activation bit-width (2..16).
        momentum: weight of a new batch's range in the moving average (training mode, unless ``frozen``).
        amax: a known range (e.g. from a plan); None observes it from the first training batch.
        signed: symmetric signed codes (True) or unsigned ``0 … 2^b − 1`` codes (False).
        frozen: training batches do not move the range (a calibrated or replayed one).
    """

    amax: torch.Tensor  # a registered buffer; -1 until observed

    def __init__(self, bits: int, momentum: float = 0.1, amax: float | None = None, signed: bool = True,
                 frozen: bool = False) -> None:
        super().__init__()
        _check_bits(bits)
        if not 0.0 < momentum <= 1.0:
            raise CompressionError(f"momentum={momentum} must be in (0, 1]")
        if amax is not None and not (amax >= 0 and math.isfinite(amax)):
            raise CompressionError(f"amax={amax} must be a finite number >= 0")
        self.bits, self.momentum, self.signed, self.frozen = bits, momentum, bool(signed), frozen
        self.register_buffer("amax", torch.tensor(float(amax) if amax is not None else -1.0))

    @property
    def observed(self) -> bool:
        return bool(self.amax >= 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.frozen:
            with torch.no_grad():
                cur = x.detach().abs().amax().to(self.amax.dtype)
                self.amax.copy_(cur if not self.observed else (1 - self.momentum) * self.amax + self.momentum * cur)
        if not self.observed:
            return x  # nothing observed yet (eval before any training batch): leave the input as it is
        return quantize_act(x, self.amax, self.bits, self.signed)


def _sample(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    v = x.detach().reshape(-1)
    if v.numel() > _SAMPLES:
        v = v[torch.randint(v.numel(), (_SAMPLES,), generator=gen)]
    return v.float().clone()


class quantized_activations:
    """Context manager: fake-quantize the input of each listed layer (see the module docstring).

    Args:
        model: the network.
        layers: module names whose inputs are quantized (all at ``bits``), or a mapping layer → its bits.
        bits: activation bits of every layer (needed when ``layers`` is not a mapping).
        amax: known ranges per layer (``plan.meta["a_amax"]``, a search's); the others are observed.
        signed: ``auto`` (default: unsigned where no negative input was seen) or ``symmetric`` (signed everywhere).
        mode: ``mse`` (default: least-error range, frozen) or ``max`` (moving average of the batches' maxima).
        momentum: the moving average's weight of a new batch (``max``).
        signs: known signedness per layer (a plan's ``a_quant``); read again by :meth:`calibrate`.

    Raises:
        CompressionError: a layer name is not a module of ``model``, bits out of range or an unknown option.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | Mapping[str, int], bits: int | None = None,
                 amax: Mapping[str, float] | None = None, *, signed: str = "auto", mode: str = "mse",
                 momentum: float = 0.1, signs: Mapping[str, bool] | None = None) -> None:
        if signed not in A_SIGNED:
            raise CompressionError(f"a_signed={signed!r} is unknown; allowed: {', '.join(A_SIGNED)}")
        if mode not in A_RANGES:
            raise CompressionError(f"a_range={mode!r} is unknown; allowed: {', '.join(A_RANGES)}")
        if isinstance(layers, Mapping):
            per = {str(n): _check_bits(b, f"activation bits of {n!r}") for n, b in layers.items()}
        else:
            names = list(layers)
            per = {n: _check_bits(bits) for n in names} if names else {}
        self.model, self.mode, self.signed_mode = model, mode, signed
        known = {n: float(v) for n, v in (amax or {}).items() if n in per and v >= 0}
        sg = dict(signs or {})
        self.quantizers: dict[str, ActivationQuantizer] = {}
        for name, b in per.items():
            get_module(model, name)  # fails with a CompressionError naming the layer
            self.quantizers[name] = ActivationQuantizer(
                b, momentum, amax=known.get(name), signed=bool(sg.get(name, True)) if signed == "auto" else True,
                frozen=mode == "mse")
        self._sign_known = set(sg) & set(per) if signed == "auto" else set(per)
        self._calib: dict[str, list[torch.Tensor]] | None = None
        self._min: dict[str, float] = {}
        self._gen = torch.Generator().manual_seed(0)
        self._handles: list[Any] = []
        self._observing = False

    # ------------------------------------------------------------------ hooks
    def _first_batch(self, name: str, x: torch.Tensor) -> None:
        """A training batch reaches a layer not yet calibrated: its sign (``auto``) and range (``mse``) from it."""
        q = self.quantizers[name]
        with torch.no_grad():
            if name not in self._sign_known:
                q.signed = self.signed_mode == "symmetric" or float(x.detach().min()) < 0
                self._sign_known.add(name)
            if self.mode == "mse" and not q.observed:
                q.amax.fill_(mse_range(_sample(x, self._gen), q.bits, q.signed))

    def _hook(self, name: str) -> Any:
        q = self.quantizers[name]

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            if self._calib is not None:          # calibration pass: record, do not quantize
                with torch.no_grad():
                    self._min[name] = min(self._min.get(name, float("inf")), float(x.detach().min()))
                    self._calib[name].append(_sample(x, self._gen))
                return args
            q.train(mod.training or self._observing)
            if q.training and (name not in self._sign_known or (self.mode == "mse" and not q.observed)):
                self._first_batch(name, x)
            return (q(x), *args[1:])
        return hook

    def __enter__(self) -> Self:
        for name, q in self.quantizers.items():
            q.train(self.model.training)
            self._handles.append(get_module(self.model, name).register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ ranges
    @torch.no_grad()
    def calibrate(self, loader: Iterable[Any], batches: int, seed: int = 0) -> int:
        """Read every layer's input on ``batches`` batches of ``(x, y)`` (model in eval mode, batch-norm untouched):
        its sign (``auto``) and its range (``mse``: the least-error clip, frozen; ``max``: the mean of the batches'
        largest magnitudes). Needs the context to be entered; returns the batches used."""
        if batches <= 0 or not self.quantizers:
            return 0
        self._calib = {n: [] for n in self.quantizers}
        self._min = {}
        self._gen = torch.Generator().manual_seed(seed)
        try:
            n = self._forward_eval(loader, batches)
            for name, vals in self._calib.items():
                if not vals:
                    continue
                q = self.quantizers[name]
                q.signed = self.signed_mode == "symmetric" or self._min.get(name, -1.0) < 0
                self._sign_known.add(name)
                if self.mode == "mse":
                    q.amax.fill_(mse_range(torch.cat(vals), q.bits, q.signed))
                else:
                    q.amax.fill_(float(torch.stack([v.abs().max() for v in vals]).mean()))
        finally:
            self._calib = None
        return n

    def _forward_eval(self, loader: Iterable[Any], batches: int) -> int:
        """Run the model in eval mode (batch-norm untouched) on up to ``batches`` batches; the batches run."""
        was = self.model.training
        self.model.eval()
        n = 0
        try:
            for x, _ in loader:
                if n >= batches:
                    break
                self.model(x)
                n += 1
        finally:
            self.model.train(was)
        return n

    @torch.no_grad()
    def observe(self, loader: Iterable[Any], batches: int) -> int:
        """``mse``: :meth:`calibrate`. ``max``: observe the moving-average ranges on ``batches`` batches with the
        model in eval mode (batch-norm statistics untouched). Returns the batches used."""
        if self.mode == "mse":
            return self.calibrate(loader, batches)
        if not self.quantizers or batches <= 0:
            return 0
        self._observing = True
        try:
            return self._forward_eval(loader, batches)
        finally:
            self._observing = False

    def amax(self) -> dict[str, float]:
        """The range of every quantizer that has one."""
        return {n: float(q.amax) for n, q in self.quantizers.items() if q.observed}

    def export(self) -> dict[str, dict[str, Any]]:
        """Per layer with a range: ``bits``, ``amax``, ``signed`` (``plan.meta["a_quant"]``)."""
        return {n: {"bits": q.bits, "amax": float(q.amax), "signed": q.signed} for n, q in self.quantizers.items()
                if q.observed}

    @classmethod
    def from_plan(cls, model: nn.Module, plan: Any) -> Self:
        """The activation quantization a plan describes: ``meta["a_quant"]`` (per layer bits, range, sign; ranges
        frozen), else the plan's ``a_bits`` on the layers of ``meta["a_amax"]`` with the symmetric quantizer those
        plans were made with; a no-op when the plan has neither. A malformed entry is a one-line CompressionError."""
        aq = plan.meta.get("a_quant")
        if aq:
            if not isinstance(aq, Mapping):
                raise CompressionError(f"plan meta a_quant must be a mapping layer -> {{bits, amax, signed}}, "
                                       f"not {type(aq).__name__}")
            bits: dict[str, int] = {}
            amax: dict[str, float] = {}
            signs: dict[str, bool] = {}
            for n, v in aq.items():
                ok = (isinstance(v, Mapping) and isinstance(v.get("signed"), bool) and _is_range(v.get("amax")))
                if not ok:
                    raise CompressionError(f"plan meta a_quant[{n!r}]={v!r} must be {{bits: 2..16, amax: >= 0, "
                                           f"signed: true|false}}")
                bits[n] = _check_bits(v.get("bits"), f"a_quant[{n!r}] bits")
                amax[n], signs[n] = float(v["amax"]), v["signed"]
            return cls(model, bits, amax=amax, signs=signs, signed="auto", mode="mse")
        b = plan.a_bits
        raw = plan.meta.get("a_amax", {}) if b is not None and 2 <= b <= 16 else {}
        if not isinstance(raw, Mapping) or not all(isinstance(n, str) and _is_range(v) for n, v in raw.items()):
            raise CompressionError(f"plan meta a_amax={raw!r} must be a mapping layer -> a finite range >= 0")
        ranges = {n: float(v) for n, v in raw.items()}
        return cls(model, list(ranges), int(b) if ranges else 8, ranges, signed="symmetric", mode="max")
