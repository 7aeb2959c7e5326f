"""Tracing a model into :class:`~hwloop.workload.LayerSpec` s: ``torch.export`` nodes or forward hooks on leaf modules.

Private helpers of :func:`hwloop.workload.extract_workload` (moved here to keep that module short).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from hwloop.workload import DTYPES, LayerSpec, WorkloadWarning, _pair


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
        return LayerSpec("conv2d", ins, out, ins[1], w[0], kernel=(w[2], w[3]), stride=_pair(stride, "stride"),
                         padding=_pair(pad, "padding"), dilation=_pair(dil, "dilation"), groups=int(groups), bias=bias, dtype=dtype, name=name)
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
    if base == "group_norm":
        return LayerSpec("groupnorm", ins, out, groups=int(args[1]), dtype=dtype, name=name)
    if base == "instance_norm":
        return LayerSpec("instancenorm", ins, out, dtype=dtype, name=name)
    if base in _ACT_TARGETS:
        return LayerSpec("activation", ins, out, variant=_ACT_TARGETS[base], dtype=dtype, name=name)
    if base in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        if len(ins) != 4:
            return base
        k = args[1]
        stride = args[2] if len(args) > 2 and args[2] else k
        pad = args[3] if len(args) > 3 else 0
        return LayerSpec("pooling", ins, out, kernel=_pair(k, "kernel"), stride=_pair(stride, "stride"),
                         padding=_pair(pad, "padding"),
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
            s = LayerSpec("conv2d", ins, outs, mod.in_channels, mod.out_channels, kernel=_pair(mod.kernel_size, "kernel"),
                          stride=_pair(mod.stride, "stride"), padding=_pair(mod.padding, "padding"),
                          dilation=_pair(mod.dilation, "dilation"), groups=mod.groups,
                          bias=mod.bias is not None, dtype=dtype, name=name)
        elif isinstance(mod, nn.Linear):
            s = LayerSpec("linear", ins, outs, mod.in_features, mod.out_features,
                          bias=mod.bias is not None, dtype=dtype, name=name)
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            s = LayerSpec("batchnorm", ins, outs, dtype=dtype, name=name)
        elif isinstance(mod, nn.GroupNorm):
            s = LayerSpec("groupnorm", ins, outs, groups=mod.num_groups, dtype=dtype, name=name)
        elif isinstance(mod, nn.modules.instancenorm._InstanceNorm):
            s = LayerSpec("instancenorm", ins, outs, dtype=dtype, name=name)
        elif type(mod).__name__.lower() in _ACT_TARGETS:
            s = LayerSpec("activation", ins, outs, variant=_ACT_TARGETS[type(mod).__name__.lower()],
                          dtype=dtype, name=name)
        elif isinstance(mod, nn.ReLU6):
            s = LayerSpec("activation", ins, outs, variant="relu6", dtype=dtype, name=name)
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            s = LayerSpec("pooling", ins, outs, kernel=_pair(mod.kernel_size, "kernel"),
                          stride=_pair(mod.stride or mod.kernel_size, "stride"), padding=_pair(mod.padding, "padding"), variant="max" if isinstance(mod, nn.MaxPool2d) else "avg",
                          dtype=dtype, name=name)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            s = LayerSpec("pooling", ins, outs, variant="adaptive_avg", dtype=dtype, name=name)
        elif isinstance(mod, (nn.Flatten, nn.Dropout, nn.Identity)):
            return
        else:
            unknown.add(type(mod).__name__)
            s = LayerSpec("other", ins, outs, variant=type(mod).__name__, dtype=dtype, name=name)
        specs.append(s)

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
