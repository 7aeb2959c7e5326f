"""Workloads: a model plus an example input becomes an ordered list of :class:`LayerSpec`.

A :class:`LayerSpec` describes one operator exactly as it executes (shapes, stride,
padding, groups, dtype, batch) plus the compression fields later stages fill in
(``rank`` for low-rank factorised layers, ``w_bits``/``a_bits`` for quantisation).
Pruned channels are simply the spec's ``in_channels``/``out_channels``: a spec always
describes the layer as it runs. Each spec has MACs, parameter count, bytes moved and a
stable content hash (:attr:`LayerSpec.key`) used as the store key.

Example:
    >>> import torch
    >>> from hwloop.workload import extract_layers
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    >>> [s.op for s in extract_layers(net, torch.randn(1, 3, 8, 8))]
    ['conv2d', 'activation']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from hwloop.errors import WorkloadError

__all__ = [
    "DTYPES",
    "LAYER_OP_KINDS",
    "NORM_KINDS",
    "OP_KINDS",
    "LayerSpec",
    "Workload",
    "WorkloadWarning",
    "build_layer",  # noqa: F822 (module __getattr__: hwloop.workload_build)
    "extract_layers",
    "extract_workload",
    "make_inputs",  # noqa: F822
]

#: op kinds whose index is a predictor's op code (stored in predictor files: never reorder or extend; the same
#: tuple as :data:`hwloop.opkinds.OP_KINDS`)
OP_KINDS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add", "other")
#: normalisations that compute their statistics at run time: ``groupnorm`` (``groups`` = its group count) and
#: ``instancenorm``; predictors code them as ``batchnorm`` rows with a variant code of their own
#: (:data:`hwloop.predict.features.NORM_CODES`), accelerators run them on the vector unit
NORM_KINDS = ("groupnorm", "instancenorm")
#: every op a :class:`LayerSpec` may have
LAYER_OP_KINDS = OP_KINDS + NORM_KINDS
DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
ACTIVATIONS = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid")
POOLS = ("max", "avg", "adaptive_avg")
SPEC_VERSION = 1


class WorkloadWarning(UserWarning):
    """Emitted when an op is unknown (becomes ``other``) or export falls back to hooks."""


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise WorkloadError(f"{name}={v!r} must be an int or a pair of ints")
    return (t[0], t[1])


@dataclass(frozen=True)
class LayerSpec:
    """One operator as it executes. Frozen; validated on construction.

    Attributes:
        op: one of :data:`LAYER_OP_KINDS` (:data:`OP_KINDS` plus the run-time norms :data:`NORM_KINDS`).
        in_shape: full input shape including batch (NCHW for conv/pool/bn, (N, ..., F) for linear).
        out_shape: full output shape (derived when left empty for conv2d/linear).
        in_channels / out_channels: channel (feature) counts; for matmul ``(M,K)x(K,N)`` they are K and N.
        kernel, stride, padding, dilation, groups, bias: conv/pool geometry.
        variant: activation function (``relu``...), pooling kind (``max``/``avg``/``adaptive_avg``).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        rank: low-rank factorisation rank (conv k×k→r then 1×1 r→out; linear in→r→out), None if dense.
        w_bits / a_bits: quantisation bit-widths, None for the native dtype.
        name: where the op sits in its model (not part of the key).
    """

    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...] = ()
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    variant: str = ""
    dtype: str = "float32"
    rank: int | None = None
    w_bits: int | None = None
    a_bits: int | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.op not in LAYER_OP_KINDS:
            raise WorkloadError(f"op {self.op!r} is unknown; allowed: {', '.join(LAYER_OP_KINDS)}")
        if self.dtype not in DTYPES:
            raise WorkloadError(f"dtype {self.dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
        set_(self, "in_shape", tuple(int(x) for x in self.in_shape))
        set_(self, "out_shape", tuple(int(x) for x in self.out_shape))
        for n in ("kernel", "stride", "padding", "dilation"):
            set_(self, n, _pair(getattr(self, n), n))
        if not self.in_shape or any(d <= 0 for d in self.in_shape):
            raise WorkloadError(f"in_shape {self.in_shape} must be non-empty with positive sizes")
        if any(d <= 0 for d in self.out_shape):
            raise WorkloadError(f"out_shape {self.out_shape} must have positive sizes")
        if min(self.kernel + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise WorkloadError(
                f"kernel/stride/dilation must be >= 1 and padding >= 0, got {self.kernel}/"
                f"{self.stride}/{self.dilation}/{self.padding}")
        for n in ("in_channels", "out_channels", "groups"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WorkloadError(f"{n}={v!r} must be an integer >= 0 (0: taken from the shapes)")
        if self.groups < 1:
            raise WorkloadError(f"groups={self.groups} must be >= 1")
        for n in ("rank", "w_bits", "a_bits"):
            v = getattr(self, n)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise WorkloadError(f"{n}={v!r} must be a positive int or None")
        if self.w_bits is not None and self.w_bits > 32 or self.a_bits is not None and self.a_bits > 32:
            raise WorkloadError(f"bits must be <= 32, got w_bits={self.w_bits} a_bits={self.a_bits}")
        if self.op == "conv2d":
            if len(self.in_shape) != 4:
                raise WorkloadError(f"conv2d needs an NCHW in_shape, got {self.in_shape}")
            if self.in_channels == 0:
                set_(self, "in_channels", self.in_shape[1])
            if self.in_channels != self.in_shape[1]:
                raise WorkloadError(
                    f"conv2d in_channels={self.in_channels} differs from in_shape[1]={self.in_shape[1]}")
            if self.out_channels < 1:
                raise WorkloadError("conv2d needs out_channels >= 1")
            if self.in_channels % self.groups or self.out_channels % self.groups:
                raise WorkloadError(
                    f"groups={self.groups} must divide in_channels={self.in_channels} "
                    f"and out_channels={self.out_channels}")
            h, w = self.in_shape[2:]
            oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
            ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
            if oh < 1 or ow < 1:
                raise WorkloadError(f"conv2d output would be empty for input {self.in_shape} kernel {self.kernel}")
            exp = (self.in_shape[0], self.out_channels, oh, ow)
            if not self.out_shape:
                set_(self, "out_shape", exp)
            elif self.out_shape != exp:
                raise WorkloadError(f"conv2d out_shape {self.out_shape} differs from computed {exp}")
        elif self.op in ("linear", "matmul"):
            if self.in_channels == 0:
                set_(self, "in_channels", self.in_shape[-1])
            if self.in_channels != self.in_shape[-1]:
                raise WorkloadError(
                    f"{self.op} in_channels={self.in_channels} differs from in_shape[-1]={self.in_shape[-1]}")
            if self.out_channels < 1:
                raise WorkloadError(f"{self.op} needs out_channels >= 1")
            exp_lin: tuple[int, ...] = self.in_shape[:-1] + (self.out_channels,)
            if not self.out_shape:
                set_(self, "out_shape", exp_lin)
        else:
            if self.in_channels == 0 and len(self.in_shape) >= 2:
                set_(self, "in_channels", self.in_shape[1])
            if self.op == "pooling" and self.variant in ("max", "avg"):
                if len(self.in_shape) != 4:
                    raise WorkloadError(f"{self.variant} pooling needs an NCHW in_shape, got {self.in_shape}")
                h, w = self.in_shape[2:]
                oh = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
                ow = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
                if oh < 1 or ow < 1 or 2 * max(self.padding) > max(self.kernel):
                    raise WorkloadError(f"{self.variant} pooling kernel {self.kernel} (padding {self.padding}) "
                                        f"does not fit input {self.in_shape}")
                if not self.out_shape:
                    set_(self, "out_shape", self.in_shape[:2] + (oh, ow))
            if not self.out_shape:
                set_(self, "out_shape", self.in_shape)
            if self.out_channels == 0 and len(self.out_shape) >= 2:
                set_(self, "out_channels", self.out_shape[1])
        if self.op == "groupnorm" and self.in_channels % self.groups:
            raise WorkloadError(f"groupnorm groups={self.groups} must divide its {self.in_channels} channels")
        if self.rank is not None and self.op not in ("conv2d", "linear"):
            raise WorkloadError(f"rank is only meaningful for conv2d/linear, not {self.op}")

    # ------------------------------------------------------------------ derived
    @property
    def batch(self) -> int:
        return self.in_shape[0]

    @property
    def out_elements(self) -> int:
        return math.prod(self.out_shape)

    @property
    def in_elements(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_spatial(self) -> int:
        """Output positions per channel (H*W for conv, product of middle dims for linear)."""
        if self.op == "conv2d" or (self.op in ("pooling", "batchnorm", *NORM_KINDS) and len(self.out_shape) == 4):
            return self.out_shape[2] * self.out_shape[3]
        if self.op in ("linear", "matmul"):
            return math.prod(self.out_shape[1:-1]) if len(self.out_shape) > 2 else 1
        return 1

    @property
    def params(self) -> int:
        """Number of weights (+bias) of the op as executed (low-rank counts both factors)."""
        b = self.out_channels if self.bias else 0
        if self.op == "conv2d":
            kk = self.kernel[0] * self.kernel[1]
            if self.rank is not None:
                return kk * self.in_channels * self.rank // self.groups + self.rank * self.out_channels + b
            return kk * self.in_channels * self.out_channels // self.groups + b
        if self.op == "linear":
            if self.rank is not None:
                return self.rank * (self.in_channels + self.out_channels) + b
            return self.in_channels * self.out_channels + b
        if self.op in ("batchnorm", *NORM_KINDS):
            return 2 * self.in_channels
        return 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the op (elementwise ops count one per output element)."""
        if self.op == "conv2d":
            kk = self.kernel[0] * self.kernel[1]
            n_pos = self.batch * self.out_spatial
            if self.rank is not None:
                return n_pos * (kk * self.in_channels * self.rank // self.groups + self.rank * self.out_channels)
            return n_pos * kk * self.in_channels * self.out_channels // self.groups
        if self.op in ("linear", "matmul"):
            rows = math.prod(self.in_shape[:-1])
            if self.rank is not None:
                return rows * self.rank * (self.in_channels + self.out_channels)
            return rows * self.in_channels * self.out_channels
        if self.op == "pooling":
            return self.out_elements * self.kernel[0] * self.kernel[1]
        return self.out_elements

    @property
    def bytes_moved(self) -> int:
        """Bytes read and written once: inputs + outputs + weights (at ``w_bits``/``a_bits`` if set)."""
        eb = DTYPES[self.dtype]
        a_b = self.a_bits / 8 if self.a_bits else eb
        w_b = self.w_bits / 8 if self.w_bits else eb
        n_in = self.in_elements * (2 if self.op == "add" else 1)
        if self.op == "matmul":
            n_in += self.in_channels * self.out_channels * (self.batch if len(self.in_shape) > 2 else 1)
            return int(n_in * a_b + self.out_elements * eb)
        return int(n_in * a_b + self.out_elements * eb + self.params * w_b)

    @property
    def arithmetic_intensity(self) -> float:
        return self.macs / max(1, self.bytes_moved)

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self, *, with_name: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "name" and not with_name:
                continue
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise WorkloadError(f"unknown LayerSpec field(s) {sorted(extra)}; allowed: {sorted(known)}")
        try:
            kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
            return cls(**kw)
        except TypeError as e:
            raise WorkloadError(f"malformed LayerSpec {dict(d)!r}: {e}") from e

    @property
    def key(self) -> str:
        """Stable content hash (hex, 16 chars) over every field but ``name``."""
        blob = json.dumps({"v": SPEC_VERSION, **self.to_dict(with_name=False)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> LayerSpec:
        """A copy with fields changed; derived shapes are recomputed unless given."""
        if "out_shape" not in changes and self.op in ("conv2d", "linear", "matmul", "activation",
                                                       "batchnorm", "add", *NORM_KINDS):
            changes["out_shape"] = ()
        if "in_shape" in changes and "in_channels" not in changes and self.op in ("conv2d", "linear",
                                                                                   "matmul"):
            changes["in_channels"] = 0
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Workload:
    """A whole model's ordered layers plus the example input it was traced with."""

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    dtype: str = "float32"
    method: str = "export"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(x) for x in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.layers)

    @property
    def params(self) -> int:
        return sum(s.params for s in self.layers)

    @property
    def key(self) -> str:
        blob = json.dumps({"input": list(self.input_shape), "dtype": self.dtype,
                           "layers": [s.key for s in self.layers]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "dtype": self.dtype,
                "method": self.method, "layers": [s.to_dict() for s in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workload:
        return cls(name=d["name"], input_shape=tuple(d["input_shape"]), dtype=d.get("dtype", "float32"),
                   method=d.get("method", "export"),
                   layers=tuple(LayerSpec.from_dict(x) for x in d["layers"]))


def extract_workload(model: torch.nn.Module, example: torch.Tensor, *, name: str = "model",
                     method: str = "auto") -> Workload:
    """Trace ``model`` on ``example`` into a :class:`Workload`.

    Args:
        model: any ``torch.nn.Module``; it is put in eval mode for tracing and restored after.
        example: one example input tensor (its batch size and dtype are recorded).
        name: a label stored with the workload.
        method: ``"export"`` (torch.export), ``"hooks"`` (forward hooks on leaf modules) or
            ``"auto"`` (export, falling back to hooks with a :class:`WorkloadWarning`).
    """
    if method not in ("auto", "export", "hooks"):
        raise WorkloadError(f"method {method!r} is unknown; allowed: auto, export, hooks")
    if not isinstance(model, torch.nn.Module):
        raise WorkloadError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise WorkloadError(f"example input must be a torch.Tensor, got {type(example).__name__}")
    from hwloop._workload_extract import _dtype_name, _extract_export, _extract_hooks

    was_training = model.training
    model.eval()
    try:
        _check_runs(model, example, name)
        used = method
        if method == "hooks":
            layers = _extract_hooks(model, example)
        else:
            try:
                layers = _extract_export(model, example)
                used = "export"
            except WorkloadError:
                raise
            except Exception as e:  # export fails on data-dependent control flow and more
                if method == "export":
                    raise WorkloadError(f"torch.export failed on {name}: {str(e).splitlines()[0]}") from e
                warnings.warn(f"torch.export failed on {name} ({type(e).__name__}); "
                              "falling back to forward hooks (functional ops such as adds are not seen)",
                              WorkloadWarning, stacklevel=2)
                layers = _extract_hooks(model, example)
                used = "hooks"
    finally:
        model.train(was_training)
    return Workload(name=name, input_shape=tuple(example.shape), layers=tuple(layers),
                    dtype=_dtype_name(example.dtype), method=used)


def _check_runs(model: torch.nn.Module, example: torch.Tensor, name: str) -> None:
    """One forward pass: an input the model cannot take is a one-line WorkloadError, not a trace traceback."""
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WorkloadError(f"model {name} does not accept an input of shape {tuple(example.shape)} "
                            f"(batch, *input shape): {first}; allowed: the input shape it was built for "
                            "(--input-shape / input_shape)") from e


def extract_layers(model: torch.nn.Module, example: torch.Tensor, *, method: str = "auto") -> list[LayerSpec]:
    """The ordered :class:`LayerSpec` list of ``model`` run on ``example`` (see :func:`extract_workload`)."""
    return list(extract_workload(model, example, method=method).layers)


def __getattr__(name: str) -> Any:
    """``build_layer`` and ``make_inputs`` live in :mod:`hwloop.workload_build` (imported on first use)."""
    if name in ("build_layer", "make_inputs"):
        from hwloop import workload_build

        return getattr(workload_build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
