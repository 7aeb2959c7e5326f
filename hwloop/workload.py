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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwloop.errors import WorkloadError

__all__ = [
    "OP_KINDS",
    "DTYPES",
    "LayerSpec",
    "Workload",
    "extract_layers",
    "extract_workload",
    "build_layer",
    "make_inputs",
    "WorkloadWarning",
]

OP_KINDS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add", "other")
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
        op: one of :data:`OP_KINDS`.
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
        if self.op not in OP_KINDS:
            raise WorkloadError(f"op {self.op!r} is unknown; allowed: {', '.join(OP_KINDS)}")
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
            exp = self.in_shape[:-1] + (self.out_channels,)
            if not self.out_shape:
                set_(self, "out_shape", exp)
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
        if self.op == "conv2d" or (self.op in ("pooling", "batchnorm") and len(self.out_shape) == 4):
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
        if self.op == "batchnorm":
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
            kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
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
                                                       "batchnorm", "add"):
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


# --------------------------------------------------------------------------- export path
def _dtype_name(dt: Any) -> str:
    s = str(dt).replace("torch.", "")
    return s if s in DTYPES else "float32"


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if val is None or not hasattr(val, "shape"):
        return None
    try:
        return tuple(int(d) for d in val.shape)
    except (TypeError, ValueError):
        return None


def _module_name(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return str(node.name)
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "") or str(node.name)


_ACT_TARGETS = {"relu": "relu", "relu_": "relu", "hardtanh": "relu6", "hardtanh_": "relu6",
                "gelu": "gelu", "silu": "silu", "silu_": "silu", "sigmoid": "sigmoid", "tanh": "tanh",
                "hardswish": "hardswish", "hardswish_": "hardswish", "hardsigmoid": "hardsigmoid"}
_IGNORED = {"view", "reshape", "flatten", "t", "permute", "transpose", "contiguous", "clone",
            "_assert_tensor_metadata", "getitem", "dropout", "alias", "detach", "expand", "unsqueeze",
            "squeeze", "size", "sym_size", "_to_copy", "to", "slice", "select", "lift_fresh_copy",
            "identity", "cat", "flatten.using_ints", "unflatten"}


def _node_spec(node: Any, dtype: str) -> LayerSpec | None | str:
    """Spec for one exported aten node; ``None`` to skip it, or the op name if unknown."""
    tname = getattr(node.target, "__name__", str(node.target))
    base = tname.split(".")[0]
    out = _shape(node)
    args = node.args
    name = _module_name(node)
    if base in _IGNORED or out is None:
        return None
    ins = _shape(args[0]) if args and hasattr(args[0], "meta") else None
    if ins is None:
        return None
    if base in ("conv2d", "convolution", "_convolution"):
        w = _shape(args[1])
        if w is None or len(w) != 4 or len(ins) != 4:
            return "conv_non2d"
        if base == "conv2d":
            bias = len(args) > 2 and args[2] is not None
            stride = args[3] if len(args) > 3 else 1
            pad = args[4] if len(args) > 4 else 0
            dil = args[5] if len(args) > 5 else 1
            groups = args[6] if len(args) > 6 else 1
        else:
            bias = args[2] is not None
            stride, pad, dil = args[3], args[4], args[5]
            if args[6]:
                return "conv_transpose"
            groups = args[8]
        if isinstance(pad, str):
            return "conv_string_padding"
        return LayerSpec("conv2d", ins, out, ins[1], w[0], kernel=(w[2], w[3]), stride=stride,
                         padding=pad, dilation=dil, groups=int(groups), bias=bias, dtype=dtype, name=name)
    if base == "linear":
        w = _shape(args[1])
        if w is None:
            return "linear"
        return LayerSpec("linear", ins, out, w[1], w[0], bias=len(args) > 2 and args[2] is not None,
                         dtype=dtype, name=name)
    if base == "addmm":
        x = _shape(args[1])
        w = _shape(args[2])
        if x is None or w is None:
            return "addmm"
        return LayerSpec("linear", x, out, w[0], w[1], bias=True, dtype=dtype, name=name)
    if base in ("mm", "bmm", "matmul"):
        b = _shape(args[1])
        if b is None:
            return base
        return LayerSpec("matmul", ins, out, ins[-1], b[-1], dtype=dtype, name=name)
    if "batch_norm" in base:
        return LayerSpec("batchnorm", ins, out, dtype=dtype, name=name)
    if base in _ACT_TARGETS:
        return LayerSpec("activation", ins, out, variant=_ACT_TARGETS[base], dtype=dtype, name=name)
    if base in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        if len(ins) != 4:
            return base
        k = args[1]
        stride = args[2] if len(args) > 2 and args[2] else k
        pad = args[3] if len(args) > 3 else 0
        return LayerSpec("pooling", ins, out, kernel=k, stride=stride, padding=pad,
                         variant="max" if base.startswith("max") else "avg", dtype=dtype, name=name)
    if base in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "mean"):
        if len(ins) != 4:
            return base
        return LayerSpec("pooling", ins, out, kernel=(1, 1), variant="adaptive_avg", dtype=dtype, name=name)
    if base in ("add", "add_"):
        other = _shape(args[1]) if len(args) > 1 and hasattr(args[1], "meta") else None
        if other is None:
            return LayerSpec("other", ins, out, variant="add_scalar", dtype=dtype, name=name)
        return LayerSpec("add", ins, out, dtype=dtype, name=name)
    return LayerSpec("other", ins, out, variant=base, dtype=dtype, name=name)


def _extract_export(model: torch.nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    ep = torch.export.export(model, (example,))
    dtype = _dtype_name(example.dtype)
    specs: list[LayerSpec] = []
    unknown: set[str] = set()
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        s = _node_spec(node, dtype)
        if s is None:
            continue
        if isinstance(s, str):
            unknown.add(s)
            ins = _shape(node.args[0]) if node.args and hasattr(node.args[0], "meta") else None
            out = _shape(node)
            if ins and out:
                specs.append(LayerSpec("other", ins, out, variant=s, dtype=dtype, name=_module_name(node)))
            continue
        if s.op == "other":
            unknown.add(s.variant)
        specs.append(s)
    if unknown:
        warnings.warn(f"ops {sorted(unknown)} have no dedicated kind and were recorded as 'other'",
                      WorkloadWarning, stacklevel=3)
    return specs


def _extract_hooks(model: torch.nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    """Fallback: forward hooks on leaf modules. Functional ops (adds) are not seen."""
    dtype = _dtype_name(example.dtype)
    specs: list[LayerSpec] = []
    unknown: set[str] = set()
    handles = []

    def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any, *, name: str) -> None:
        if not inp or not isinstance(inp[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            return
        ins, outs = tuple(inp[0].shape), tuple(out.shape)
        s: LayerSpec
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, tuple):
            s = LayerSpec("conv2d", ins, outs, mod.in_channels, mod.out_channels, kernel=mod.kernel_size,
                          stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                          bias=mod.bias is not None, dtype=dtype, name=name)
        elif isinstance(mod, nn.Linear):
            s = LayerSpec("linear", ins, outs, mod.in_features, mod.out_features,
                          bias=mod.bias is not None, dtype=dtype, name=name)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            s = LayerSpec("batchnorm", ins, outs, dtype=dtype, name=name)
        elif type(mod).__name__.lower() in _ACT_TARGETS:
            s = LayerSpec("activation", ins, outs, variant=_ACT_TARGETS[type(mod).__name__.lower()],
                          dtype=dtype, name=name)
        elif isinstance(mod, nn.ReLU6):
            s = LayerSpec("activation", ins, outs, variant="relu6", dtype=dtype, name=name)
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            s = LayerSpec("pooling", ins, outs, kernel=mod.kernel_size, stride=mod.stride or mod.kernel_size,
                          padding=mod.padding, variant="max" if isinstance(mod, nn.MaxPool2d) else "avg",
                          dtype=dtype, name=name)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            s = LayerSpec("pooling", ins, outs, variant="adaptive_avg", dtype=dtype, name=name)
        elif isinstance(mod, (nn.Flatten, nn.Dropout, nn.Identity)):
            return
        else:
            unknown.add(type(mod).__name__)
            s = LayerSpec("other", ins, outs, variant=type(mod).__name__, dtype=dtype, name=name)
        specs.append(s)

    import functools

    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0:
            handles.append(mod.register_forward_hook(functools.partial(hook, name=name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if unknown:
        warnings.warn(f"modules {sorted(unknown)} have no dedicated kind and were recorded as 'other'",
                      WorkloadWarning, stacklevel=3)
    return specs


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


# --------------------------------------------------------------------------- building
def build_layer(spec: LayerSpec) -> torch.nn.Module:
    """A fresh ``nn.Module`` (eval mode, spec's dtype, on CPU) that executes ``spec``.

    ``add`` and ``matmul`` modules take two inputs; see :func:`make_inputs`. Quantisation
    bits are recorded but not emulated (the op runs in its float dtype); ``other`` ops
    run as an identity-shaped elementwise op.
    """
    dt = getattr(torch, spec.dtype)
    m: nn.Module
    if spec.op == "conv2d":
        if spec.rank is not None:
            m = nn.Sequential(
                nn.Conv2d(spec.in_channels, spec.rank, spec.kernel, spec.stride, spec.padding, spec.dilation,
                          groups=1, bias=False),
                nn.Conv2d(spec.rank, spec.out_channels, 1, bias=spec.bias))
        else:
            m = nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding,
                          spec.dilation, groups=spec.groups, bias=spec.bias)
    elif spec.op == "linear":
        if spec.rank is not None:
            m = nn.Sequential(nn.Linear(spec.in_channels, spec.rank, bias=False),
                              nn.Linear(spec.rank, spec.out_channels, bias=spec.bias))
        else:
            m = nn.Linear(spec.in_channels, spec.out_channels, bias=spec.bias)
    elif spec.op == "matmul":
        m = _MatMul()
    elif spec.op == "batchnorm":
        m = nn.BatchNorm2d(spec.in_shape[1]) if len(spec.in_shape) == 4 else nn.BatchNorm1d(spec.in_shape[1])
    elif spec.op == "activation":
        acts: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "silu": nn.SiLU,
                                            "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardswish": nn.Hardswish,
                                            "hardsigmoid": nn.Hardsigmoid}
        m = acts.get(spec.variant, nn.ReLU)()
    elif spec.op == "pooling":
        if spec.variant == "adaptive_avg":
            m = nn.AdaptiveAvgPool2d(spec.out_shape[2:] if len(spec.out_shape) == 4 else 1)
        elif spec.variant == "avg":
            m = nn.AvgPool2d(spec.kernel, spec.stride, spec.padding)
        else:
            m = nn.MaxPool2d(spec.kernel, spec.stride, spec.padding)
    elif spec.op == "add":
        m = _Add()
    else:
        m = _Other(spec.out_shape)
    return m.to(dt).eval()


def make_inputs(spec: LayerSpec, *, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs for :func:`build_layer` of ``spec`` (two tensors for add/matmul)."""
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, spec.dtype)
    x = torch.randn(spec.in_shape, generator=g).to(dt).to(device)
    if spec.op == "add":
        return (x, torch.randn(spec.in_shape, generator=g).to(dt).to(device))
    if spec.op == "matmul":
        bshape = (spec.in_shape[:-2] if len(spec.in_shape) > 2 else ()) + (spec.in_channels, spec.out_channels)
        return (x, torch.randn(bshape, generator=g).to(dt).to(device))
    return (x,)


class _MatMul(nn.Module):
    def forward(self, a: Any, b: Any) -> Any:
        return a @ b


class _Add(nn.Module):
    def forward(self, a: Any, b: Any) -> Any:
        return a + b


class _Other(nn.Module):
    def __init__(self, out_shape: Sequence[int]) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)

    def forward(self, x: Any) -> Any:
        n = math.prod(self.out_shape)
        flat = x.reshape(-1)
        if flat.numel() >= n:
            return (flat[:n] * 1.0).reshape(self.out_shape)
        return torch.nn.functional.pad(flat, (0, n - flat.numel())).reshape(self.out_shape)
