"""Where ResNet-20's latency on asic-tpu32 is: measured per layer, summed by stage, plus what-if widths.

Quoted in docs/search.md (CIFAR checkpoint section). Seconds on one CPU thread; no training. The study is
:func:`hwloop.search.studies.stage_split_study`. Example::

    PYTHONPATH=. python search/results/cifar10_resnet20_asic-tpu32_ckpt_e022_glr002/stage_split.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["main"]

FILL = Path("search/results/cifar10_resnet20_asic-tpu32_ckpt_fill/predictor")


def main() -> int:
    from hwloop.models import ModelRef
    from hwloop.search.studies import stage_split_study

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    report = stage_split_study(ModelRef("resnet20"), "asic-tpu32", FILL)
    out = Path(__file__).with_name("stage_split.json")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
