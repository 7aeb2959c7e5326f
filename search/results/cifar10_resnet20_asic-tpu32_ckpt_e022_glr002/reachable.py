"""What a 50% measured-latency cut of ResNet-20 on asic-tpu32 requires: uniform widths × bit-widths.

Every prunable channel group of CIFAR ResNet-20 kept at the same fraction ``r`` of its channels
(stage widths 16/32/64 × r, rounded), every conv/linear at 8 or 4-bit weights, activations of the
quantized layers at 8 or 4 bits (the plan's ``a_bits``; batch norm, ReLU and add run on the vector
unit at 8 bits, as the extracted model does). Latency is measured on the simulated device layer by
layer (the search's own measurement path) and divided by the unpruned 8-bit model's. Seconds on one
CPU thread, no training. Quoted in docs/search.md (CIFAR checkpoint section). The study is
:func:`hwloop.search.studies.uniform_width_study`. Example::

    PYTHONPATH=. python search/results/cifar10_resnet20_asic-tpu32_ckpt_e022_glr002/reachable.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["main"]

WIDTHS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)


def main() -> int:
    from hwloop.models import ModelRef
    from hwloop.search.studies import uniform_width_study

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    report = uniform_width_study(ModelRef("resnet20"), "asic-tpu32", WIDTHS)
    out = Path(__file__).with_name("reachable.json")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
