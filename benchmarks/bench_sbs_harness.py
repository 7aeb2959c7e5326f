"""Issue 19's harness table: SBS and its controls from the three evidence-harness specs, with BOPs.

Reads the finished cells of

* ``search/results/bench-methods-sbs-cifar10-resnet20`` (SBS; the harness's uniform / magnitude channel-pruning
  controls at W8A8, matched to SBS's measured latency, fine-tuned and scored in float),
* ``search/results/bench-methods-sbs-controls-cifar10-resnet20`` (uniform W4A4 and prune-then-quantize W8A8 through
  SBS's extraction + QAT path: ``sbs`` with ``uniform = [w, a]``),
* ``search/results/bench-methods-sbs-l1l2bits-cifar10-resnet20`` (the l1l2 method's bit gates),

and writes one markdown table (mean ± sample std over the seeds each entry has; test = the 10,000 CIFAR-10 test
images, val = 2,000 held-out training images): measured latency ratio on asic-tpu32, BOPs as a fraction of uniform
W8A8 (Σ MACs · w_bits · a_bits over every conv / linear of the plan's model; a layer without a ``quantize`` action is
counted at 8 × 8, what asic-tpu32 runs it at), MAC-weighted mean weight / activation bits, and SBS's margin over each
entry against their seed spread.

    .venv/bin/python benchmarks/bench_sbs_harness.py > search/results/sbs/harness/table.md
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [ROOT / "search/results" / n for n in ("bench-methods-sbs-cifar10-resnet20",
                                                 "bench-methods-sbs-controls-cifar10-resnet20",
                                                 "bench-methods-sbs-l1l2bits-cifar10-resnet20")]
ORDER = ["sbs", "w4a4-uniform", "prune-then-w8a8", "l1l2-bits", "uniform", "magnitude"]
WHAT = {"sbs": "SBS (w_levels 4,8)", "w4a4-uniform": "uniform W4A4 QAT", "prune-then-w8a8":
        "prune-then-quantize (W8A8 QAT)", "l1l2-bits": "l1l2 bit gates (w 2/4/8, a 8)",
        "uniform": "harness uniform control (W8A8 latency, float)",
        "magnitude": "harness magnitude control (W8A8 latency, float)"}



def _nums(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The numeric values of ``key`` (a missed or unmeasured cell has None: left out, not a crash)."""
    return [float(c[key]) for c in rows if isinstance(c.get(key), (int, float))]

def bops_of(plan_dict: dict[str, Any]) -> tuple[float, float | None, float | None]:
    """(BOPs / uniform-W8A8 BOPs of the dense model, MAC-weighted mean w bits, mean a bits) of a plan."""
    import torch

    from hwloop.compress import CompressionPlan, from_plan
    from hwloop.models import ModelRef
    from hwloop.search.report import layer_specs_with_bits

    plan = CompressionPlan.from_dict(plan_dict)
    assert plan.base is not None, "a harness plan names its base model"
    ref = ModelRef.from_dict(plan.base)
    example = torch.zeros(1, *ref.input_shape)
    dense = [s for s in layer_specs_with_bits(ref.build().eval(), example, None) if s.op in ("conv2d", "linear")]
    specs = [s for s in layer_specs_with_bits(from_plan(plan_dict).eval(), example, plan)
             if s.op in ("conv2d", "linear")]
    b0 = sum(s.macs * 64 for s in dense)
    b = sum(s.macs * (s.w_bits or 8) * (s.a_bits or 8) for s in specs)
    macs = sum(s.macs for s in specs) or 1.0
    mw = sum(s.macs * (s.w_bits or 8) for s in specs) / macs
    ma = sum(s.macs * (s.a_bits or 8) for s in specs) / macs
    return b / b0, mw, ma


def _ms(vals: list[float], nd: int = 2) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{statistics.fmean(vals):.{nd}f} ± {statistics.stdev(vals):.{nd}f}"


def main() -> int:
    cells: list[dict[str, Any]] = []
    for f in FOLDERS:
        for p in sorted((f / "cells").glob("*.json")):
            try:
                cells.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
    by: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((float(c["target"]), c["entry"]), []).append(c)
    print("| target | entry | seeds | test % | val % | measured on asic-tpu32 | BOPs vs W8A8 | mean w/a bits | "
          "status | SBS − entry, test (val) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in sorted({k[0] for k in by}, reverse=True):
        sbs = {int(c["seed"]): c for c in by.get((t, "sbs"), [])}
        for e in sorted({k[1] for k in by if k[0] == t}, key=lambda x: ORDER.index(x) if x in ORDER else 99):
            rs = sorted(by[(t, e)], key=lambda c: int(c["seed"]))
            bops = [bops_of(c["plan"]) for c in rs if c.get("plan")]
            diff = ""
            if e != "sbs":
                cs = {int(c["seed"]): c for c in rs}
                both = [s for s in cs if s in sbs and all(isinstance(x[s].get(k), (int, float)) for x in (sbs, cs)
                                                           for k in ("test_accuracy", "val_accuracy"))]
                dt = [float(sbs[s]["test_accuracy"]) - float(cs[s]["test_accuracy"]) for s in both]
                dv = [float(sbs[s]["val_accuracy"]) - float(cs[s]["val_accuracy"]) for s in both]
                diff = f"{_ms(dt)} ({_ms(dv)}), seeds {both}" if both else "–"
            st = sorted({str(c.get("status")) for c in rs})
            print(f"| {t:g} | {WHAT.get(e, e)} | {','.join(str(c['seed']) for c in rs)} | "
                  f"{_ms(_nums(rs, 'test_accuracy'))} | {_ms(_nums(rs, 'val_accuracy'))} | "
                  f"{_ms(_nums(rs, 'measured_ratio'), 3)}× | {_ms([b[0] for b in bops], 3)} | "
                  f"{_ms([b[1] for b in bops if b[1] is not None], 2)}/{_ms([b[2] for b in bops if b[2] is not None], 2)}"
                  f" | {'/'.join(st)} | {diff} |")
    if not by:
        print("(no finished cells)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
