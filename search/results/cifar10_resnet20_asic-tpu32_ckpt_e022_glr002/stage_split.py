"""Where ResNet-20's latency on asic-tpu32 is: measured per layer, summed by stage, plus what-if widths.

Quoted in docs/search.md (CIFAR checkpoint section). Seconds on one CPU thread; no training. Example::

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
    from hwloop.compress.extract import load_compressed
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.models import ModelRef
    from hwloop.search.report import layer_specs_with_bits
    from hwloop.search.space import SearchSpace, SpaceOptions

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ref = ModelRef("resnet20")
    ex, dev = ref.example_input(), create_device("asic-tpu32")

    def stage(name: str) -> str:
        if name.startswith("layers."):
            return f"stage{int(name.split('.')[1]) // 3 + 1}"
        return "head" if name.startswith(("fc", "pool", "linear")) else "stem"

    def split(model: torch.nn.Module, plan=None) -> dict[str, dict[str, float]]:
        specs = [s for s in layer_specs_with_bits(model, ex, plan) if s.op != "other"]
        out: dict[str, dict[str, float]] = {}
        for s, r in zip(specs, dev.measure([MeasureRequest.for_layer(s) for s in specs])):
            d = out.setdefault(stage(s.name), {})
            d[s.op] = d.get(s.op, 0.0) + r.latency_ms
            d["total"] = d.get("total", 0.0) + r.latency_ms
        return out

    base = split(ref.build().eval())
    t0 = sum(d["total"] for d in base.values())
    report: dict = {"original_ms": t0, "stages": base}
    print(f"original {t0:.4f} ms")
    for k, d in base.items():
        print(f"  {k:7s} {d['total']:.4f} ms {d['total'] / t0:6.1%}  conv {d.get('conv2d', 0.0) / t0:6.1%}")
    if FILL.is_dir():
        fm, fplan = load_compressed(FILL)
        fs = split(fm, fplan)
        report["fill_plan_vs_own"] = {k: fs[k]["total"] / base[k]["total"] for k in base}
        print("fill plan vs each stage's own cost:", {k: round(v, 2) for k, v in report["fill_plan_vs_own"].items()})
        sp = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8, tile=32, bit_levels=(4, 8)))
        groups = {g.key: g.channels for g in sp.graph.groups}

        def ratio(widths: dict[str, int], bits: dict[str, int]) -> float:
            cfg = {f"width:{k}": widths.get(k, c) / c for k, c in groups.items()}
            cfg.update({f"bits:{n}": b for n, b in bits.items()})
            m, p = sp.compress(cfg)
            return sum(d["total"] for d in split(m, p).values()) / t0

        lo = {k: sp.min_keep(c) for k, c in groups.items()}
        w, b = dict(fplan.widths), dict(fplan.w_bits)
        s1 = ("conv1", "layers.0.conv1", "layers.1.conv1", "layers.2.conv1")
        cases = {
            "every group at its minimum": (lo, b),
            "conv1 group 16, every other group at its minimum": ({**lo, "conv1": 16}, b),
            "fill plan": (w, b),
            **{f"fill plan, conv1 group {c}": ({**w, "conv1": c}, b) for c in (4, 8, 16)},
            "fill plan, stage-1 internal groups 8": ({**w, **{k: 8 for k in s1[1:]}}, b),
            "fill plan, all four stage-1 groups 8": ({**w, **{k: 8 for k in s1}}, b),
            "full widths, 4-bit weights": ({}, {n: 4 for n in sp.bit_layers}),
            **{f"every group >= {r:.0%} (min_keep_ratio {r})": ({k: max(lo[k], -(-int(r * 100) * c // 100))
                                                                 for k, c in groups.items()}, b) for r in (0.25, 0.5)},
        }
        report["what_if"] = {name: ratio(*args) for name, args in cases.items()}
        for name, v in report["what_if"].items():
            print(f"  {name:52s} {v:.3f} x original")
    out = Path(__file__).with_name("stage_split.json")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
