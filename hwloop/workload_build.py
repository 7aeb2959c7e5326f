"""Building one layer as a runnable module: :func:`build_layer` and :func:`make_inputs` (re-exported by
:mod:`hwloop.workload`).

Example:
    >>> from hwloop.workload import LayerSpec, build_layer, make_inputs
    >>> spec = LayerSpec("groupnorm", (1, 8, 4, 4), groups=2)
    >>> tuple(build_layer(spec)(*make_inputs(spec)).shape)
    (1, 8, 4, 4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hwloop.workload import LayerSpec

__all__ = ["build_layer", "make_inputs"]


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
    elif spec.op == "groupnorm":
        m = nn.GroupNorm(spec.groups, spec.in_shape[1])
    elif spec.op == "instancenorm":
        m = nn.InstanceNorm2d(spec.in_shape[1], affine=True) if len(spec.in_shape) == 4 else \
            nn.InstanceNorm1d(spec.in_shape[1], affine=True)
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
