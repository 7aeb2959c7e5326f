"""Reference networks for the asic benchmarks (torchvision is not a dependency).

:func:`resnet18` is ImageNet ResNet-18 (He et al. 2016) exactly as torchvision builds it
(7×7/2 stem, 3×3/2 max pool, four stages of two basic blocks with 64/128/256/512 channels,
global average pool, 1000-way linear), so it can be referenced by a
:class:`~hwloop.models.ModelRef` (:func:`resnet18_ref`). :func:`resnet18_conv_layers` lists its 20 conv/linear
layers as :class:`~hwloop.workload.LayerSpec` without tracing.

Example:
    >>> from hwloop.devices.asic.reference import resnet18_conv_layers
    >>> layers = resnet18_conv_layers()
    >>> len(layers), sum(s.macs for s in layers)
    (21, 1814073344)
"""

from __future__ import annotations

import torch
from torch import nn

from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

__all__ = ["resnet18", "resnet18_conv_layers", "resnet18_ref"]


def resnet18_ref(batch: int = 1) -> ModelRef:
    """The :class:`ModelRef` of ImageNet ResNet-18 (224×224 inputs)."""
    return ModelRef("hwloop.devices.asic.reference:resnet18", input_shape=(3, 224, 224), batch=batch)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + idt)


class ResNet18(nn.Module):
    """ImageNet ResNet-18 (torchvision layout and module names)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        w = [max(8, round(c * width_mult)) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = w[0]
        for i, c in enumerate(w):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_Block(cin, c, stride), _Block(c, c, 1)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """ImageNet ResNet-18 (a ``ModelRef`` factory; see :func:`resnet18_ref`)."""
    return ResNet18(num_classes=num_classes, width_mult=width_mult)


def resnet18_conv_layers(batch: int = 1, w_bits: int | None = None, a_bits: int | None = None) -> list[LayerSpec]:
    """ResNet-18's 20 convolutions and its linear layer at 224×224, in execution order."""
    out: list[LayerSpec] = []

    def conv(name: str, cin: int, cout: int, hw: int, k: int, s: int) -> int:
        out.append(LayerSpec("conv2d", (batch, cin, hw, hw), out_channels=cout, kernel=(k, k), stride=(s, s),
                             padding=(k // 2, k // 2), w_bits=w_bits, a_bits=a_bits, name=name))
        return out[-1].out_shape[2]

    hw = conv("conv1", 3, 64, 224, 7, 2)
    hw = (hw + 2 - 3) // 2 + 1  # max pool 3x3/2, padding 1
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        for b in range(2):
            s = 2 if (i > 0 and b == 0) else 1
            p = f"layer{i + 1}.{b}"
            h1 = conv(f"{p}.conv1", cin, c, hw, 3, s)
            conv(f"{p}.conv2", c, c, h1, 3, 1)
            if s != 1 or cin != c:
                conv(f"{p}.downsample.0", cin, c, hw, 1, s)
            hw, cin = h1, c
    out.append(LayerSpec("linear", (batch, 512), out_channels=1000, bias=True, w_bits=w_bits, a_bits=a_bits,
                         name="fc"))
    return out
