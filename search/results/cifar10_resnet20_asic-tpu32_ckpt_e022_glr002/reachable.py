"""What a 50% measured-latency cut of ResNet-20 on asic-tpu32 requires: uniform widths × bit-widths.

Every prunable channel group of CIFAR ResNet-20 kept at the same fraction ``r`` of its channels
(stage widths 16/32/64 × r, rounded), every conv/linear at 8 or 4-bit weights, activations of the
quantized layers at 8 or 4 bits (the plan's ``a_bits``; batch norm, ReLU and add run on the vector
unit at 8 bits, as the extracted model does). Latency is measured on the simulated device layer by
layer (the search's own measurement path) and divided by the unpruned 8-bit model's. Seconds on one
CPU thread, no training. Quoted in docs/search.md (CIFAR checkpoint section). Example::

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
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.models import ModelRef
    from hwloop.search.report import layer_specs_with_bits
    from hwloop.search.space import SearchSpace, SpaceOptions

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ref = ModelRef("resnet20")
    ex, dev = ref.example_input(), create_device("asic-tpu32")

    def latency_ms(model: torch.nn.Module, plan=None) -> float:
        specs = [s for s in layer_specs_with_bits(model, ex, plan) if s.op != "other"]
        return sum(r.latency_ms for r in dev.measure([MeasureRequest.for_layer(s) for s in specs]))

    t0 = latency_ms(ref.build().eval())
    rows = []
    print(f"unpruned 8-bit ResNet-20 on asic-tpu32: {t0:.4f} ms; latency / unpruned at uniform width r:")
    print(f"  {'r':>6s} " + " ".join(f"{f'W{w}A{a}':>7s}" for a in (8, 4) for w in (8, 4)))
    for r in WIDTHS:
        row = {"width": r}
        for a_bits in (8, 4):
            space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=a_bits, tile=32, bit_levels=(4, 8)))
            cfg = {f"width:{g.key}": max(1, round(r * g.channels)) / g.channels for g in space.graph.groups}
            for w_bits in (8, 4):
                model, plan = space.compress({**cfg, **{f"bits:{n}": w_bits for n in space.bit_layers}})
                row[f"W{w_bits}A{a_bits}"] = latency_ms(model, plan) / t0
        rows.append(row)
        print(f"  {r:6.3f} " + " ".join(f"{row[f'W{w}A{a}']:7.3f}" for a in (8, 4) for w in (8, 4)))
    out = Path(__file__).with_name("reachable.json")
    out.write_text(json.dumps({"original_ms": t0, "uniform_width": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
