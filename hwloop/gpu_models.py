"""Built-in models for GPU data sets: the H100 data's VGG-16 head and ImageNet ResNet-18.

Registered in :data:`hwloop.models.BUILTIN_MODELS` (names ``vgg16_gap`` and ``resnet18``), so a
:class:`~hwloop.models.ModelRef` builds them anywhere with torch alone (the GPU campaign machine
has no torchvision and no network).

* ``vgg16_gap`` — the CIFAR VGG-16 of ``../shared/data/h100`` (README there): 13 blocks
  conv3×3(pad 1, no bias) → BatchNorm2d → ReLU, MaxPool2d(2) after blocks 2, 4, 7 and 10 (none after
  block 13), then AdaptiveAvgPool2d(1) → Flatten → Linear(widths[12], 10). Module names match the
  built-in ``vgg16`` (``features.0`` is the first conv, ``features.3`` the second...). The built-in
  ``vgg16`` differs only at the end (a fifth MaxPool2d instead of the average pool).
* ``resnet18`` — ImageNet ResNet-18 (He et al. 2016; torchvision's layout: 7×7/2 stem, 3×3/2 max
  pool, four stages of two basic blocks, widths 64/128/256/512, average pool, linear), with
  ``widths`` per stage and ``mids`` per block (8) like the CIFAR ResNets.

The H100 data's ``resnet20`` is the built-in ``resnet20`` with ``mids`` = the data's nine widths.
:func:`h100_random_widths` draws widths the way that data set did.

Example:
    >>> from hwloop.models import ModelRef
    >>> ref = ModelRef("vgg16_gap", {"widths": [8] * 13})
    >>> ref.build().features[0].out_channels
    8
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hwloop.errors import ConfigError
from hwloop.models import VGG16_CFG, BasicBlock

__all__ = ["GAP_VGG16", "H100_FULL_WIDTHS", "ResNet18", "h100_model_ref_kwargs", "h100_random_widths"]

#: the full widths each data-set architecture draws random widths from (README of ../shared/data/h100)
H100_FULL_WIDTHS: dict[str, tuple[int, ...]] = {
    "vgg16": tuple(int(c) for c in VGG16_CFG if c != "M"),
    "resnet20": (16,) * 3 + (32,) * 3 + (64,) * 3,
    "resnet18": (64,) * 2 + (128,) * 2 + (256,) * 2 + (512,) * 2,
    "mobilenetv2": (),
}
_FLOORS = {"vgg16": 4, "resnet20": 2, "resnet18": 4}


class GAP_VGG16(nn.Module):
    """CIFAR VGG-16 with an average-pool head (see the module docstring); ``widths``: 13 conv widths."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] | None = None, in_channels: int = 3) -> None:
        super().__init__()
        full = H100_FULL_WIDTHS["vgg16"]
        ws = [int(w) for w in (widths if widths is not None else full)]
        if len(ws) != len(full) or min(ws) < 1:
            raise ConfigError(f"vgg16_gap widths {list(ws)} must be {len(full)} positive integers")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(ws):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if i in (1, 3, 6, 9):
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResNet18(nn.Module):
    """ImageNet ResNet-18 with width controls (``widths`` per stage, ``mids`` per block)."""

    def __init__(self, num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512),
                 mids: Sequence[int] | None = None, in_channels: int = 3) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        if len(w) != 4 or min(w) < 1:
            raise ConfigError(f"resnet18 widths {list(widths)} must be 4 positive integers")
        if mids is not None and (len(mids) != 8 or min(int(m) for m in mids) < 1):
            raise ConfigError(f"resnet18 mids {list(mids)} must be 8 positive integers (one per block)")
        self.conv1 = nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        cin = w[0]
        for s, cout in enumerate(w):
            for b in range(2):
                mid = int(mids[2 * s + b]) if mids is not None else cout
                blocks.append(BasicBlock(cin, mid, cout, 2 if (b == 0 and s > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def h100_random_widths(arch: str, rng: Any) -> list[int]:
    """Random widths as the H100 data set drew them: each full width ``c`` becomes
    ``max(floor, int(c · U(0.15, 1.0)))`` (floor 4 for VGG-16 and ResNet-18, 2 for ResNet-20).

    ``rng`` is a ``numpy.random.Generator``. ``mobilenetv2`` has no per-layer widths here: use
    :func:`hwloop.models.random_width_kwargs`.
    """
    if arch not in _FLOORS:
        raise ConfigError(f"no H100-style random widths for {arch!r}; allowed: {', '.join(_FLOORS)}")
    return [max(_FLOORS[arch], int(c * rng.uniform(0.15, 1.0))) for c in H100_FULL_WIDTHS[arch]]


def h100_model_ref_kwargs(arch: str, widths: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """The built-in model name and kwargs that build the data set's ``arch`` with ``widths``.

    Example:
        >>> h100_model_ref_kwargs("resnet20", [4] * 9)
        ('resnet20', {'mids': [4, 4, 4, 4, 4, 4, 4, 4, 4]})
    """
    ws = [int(w) for w in widths]
    if arch == "vgg16":
        return "vgg16_gap", {"widths": ws}
    if arch in ("resnet20", "resnet18"):
        return arch, {"mids": ws}
    raise ConfigError(f"architecture {arch!r} is not in the H100 data set; allowed: vgg16, resnet20, resnet18")
