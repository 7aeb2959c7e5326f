"""What uniform-rank factorisation can reach on a device (issue 18): the measured latency ratio of uniform-rank
ResNet-20 over a ladder of ranks, and which shared targets (0.5 / 0.6 / 0.7) lie inside it.

Every factorisable conv (``eligible_layers``: the 18 3×3 convs after the stem) becomes a Tucker-2 triple at equal
ranks ``r_l = max(1, round(f · r_max,l))`` (``r_max`` = 16 / 32 / 64 for the three stages), for each rank fraction
``f`` of the ladder; each such model is measured whole against the dense model on the device
(:func:`hwloop.search.report.compare_compressed`). The latency does not depend on the weights (HOSVD of the
checkpoint's kernels is used anyway). Also from the shared cost table (source ``measure`` on ``asic-tpu32``): every
distinct uniform assignment over ``f = k/64`` (:func:`hwloop.methods.haloc.uniform.uniform_ladder`), the floor when
each layer takes its cheapest level (any rank or dense), and the floor of HALOC's own candidate space
(``max_candidates = 8``, steps from the staircase). A target is *reachable by factorisation* when a measured uniform
point is at or below it.

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc_reach.py --device asic-tpu32 \\
        --out search/results/haloc/reachable_asic-tpu32.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONVERGED = ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"
#: measured ladder: k/64 for the smallest ranks, then k/16
MEASURED = sorted({*(k / 64 for k in (1, 2, 3, 4, 6)), *(k / 16 for k in range(1, 17))})


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(CONVERGED))
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--source", default="measure", help="cost table source (measure / predictor / surrogate)")
    ap.add_argument("--targets", default="0.5,0.6,0.7")
    ap.add_argument("--out", default=None, help="JSON output (default search/results/haloc/reachable_<device>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.compress.actions import LowRank
    from hwloop.compress.extract import compress_, get_module, output_layers
    from hwloop.compress.plan import CompressionPlan
    from hwloop.methods.haloc.costs import layer_specs, probe_steps, rank_ladder, table_levels
    from hwloop.methods.haloc.mixed import DENSE, eligible_layers, max_equal_rank, rank_level
    from hwloop.methods.haloc.uniform import uniform_ladder, uniform_ranks
    from hwloop.models import ModelRef
    from hwloop.search.costtable import build_cost_table
    from hwloop.search.report import compare_compressed
    from hwloop.workload import extract_layers

    out = Path(args.out or ROOT / f"search/results/haloc/reachable_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    ref = ModelRef("resnet20", {}, input_shape=(3, 32, 32))
    base = ref.build()
    base.load_state_dict(load_file(args.checkpoint))
    base.eval()
    example = ref.example_input()
    names = eligible_layers(base, output_layers(base, example))
    tops = {n: max_equal_rank(get_module(base, n)) for n in names}
    specs = layer_specs(base, example)

    def macs(m: torch.nn.Module) -> int:
        return int(sum(s.macs for s in extract_layers(copy.deepcopy(m).eval(), example) if s.op in ("conv2d", "linear")))

    macs0 = macs(base)
    doc.update(device=args.device, checkpoint=args.checkpoint, layers=len(names), r_max=sorted(set(tops.values())))
    pts = doc.setdefault("measured", {})
    for f in MEASURED:
        key = f"{f:.6f}"
        if key in pts:
            continue
        ranks = uniform_ranks(tops, f)
        plan = CompressionPlan(base=ref.to_dict(), actions=[LowRank(n, "tucker2", (r, r)) for n, r in ranks.items()],
                               meta={"uniform_frac": f})
        net = compress_(copy.deepcopy(base), plan, example).eval()
        m = compare_compressed(args.device, net, plan, base, example=example)
        pts[key] = {"frac": f, "ranks_by_width": {str(t): uniform_ranks({"x": t}, f)["x"] for t in sorted(set(tops.values()))},
                    "ratio": m["ratio"], "ratio_ci": m.get("ratio_ci"), "latency_ms": m["latency_ms"],
                    "original_ms": m["original_ms"], "macs_ratio": macs(net) / macs0}
        out.write_text(json.dumps(doc, indent=1, default=float))
        say(f"uniform f={f:.4f} ranks {pts[key]['ranks_by_width']}: measured {m['ratio']:.3f}x, "
            f"MACs {pts[key]['macs_ratio']:.3f}x")

    # the cost table: every distinct uniform point over k/64, the per-layer floor, HALOC's candidate floor
    t0 = time.perf_counter()
    lv = {n: [DENSE] + [rank_level(r) for r in range(1, tops[n] + 1)] for n in names}
    levels, passive = table_levels(specs, lv)
    table = build_cost_table(levels, device=args.device, source=args.source, progress=False, passive=passive)
    dense = table.model_cost({n: DENSE for n in names})
    ladder = [{"frac": f, "ranks_by_width": {str(t): uniform_ranks({"x": t}, f)["x"] for t in sorted(set(tops.values()))},
               "ratio": table.model_cost({n: rank_level(r[n]) for n in names}) / dense}
              for f, r in uniform_ladder(tops, 64)]
    best = {n: min(table.levels(n), key=lambda x, n=n: table.cost(n, x)) for n in names}

    def build(lvs: Any, pas: Any) -> Any:   # the probe's table builder
        return build_cost_table(lvs, device=args.device, source=args.source, progress=False, passive=pas)

    steps = probe_steps(base, specs, names, build)
    cand = {n: [DENSE] + [rank_level(r) for r in rank_ladder(tops[n], steps[n], 8)] for n in names}
    haloc_floor = {n: min(cand[n], key=lambda x, n=n: table.cost(n, x)) for n in names}
    doc["table"] = {"source": table.source, "unit": table.unit, "build_s": time.perf_counter() - t0,
                    "uniform_ladder_k64": ladder, "uniform_min_ratio": min(p["ratio"] for p in ladder),
                    "per_layer_floor_ratio": table.model_cost(best) / dense,
                    "per_layer_floor_dense_layers": [n for n in names if best[n] == DENSE],
                    "haloc_candidate_floor_ratio": table.model_cost(haloc_floor) / dense,
                    "haloc_steps": steps}
    meas_min = min(p["ratio"] for p in pts.values())
    targets = [float(t) for t in args.targets.split(",")]
    doc["reachable"] = {
        str(t): {"uniform_measured": meas_min <= t,
                 "best_uniform_at_or_below": max((p for p in pts.values() if p["ratio"] <= t),
                                                 key=lambda p: p["ratio"], default=None),
                 "per_layer_floor": doc["table"]["per_layer_floor_ratio"] <= t,
                 "haloc_candidates": doc["table"]["haloc_candidate_floor_ratio"] <= t} for t in targets}
    doc["uniform_measured_min_ratio"] = meas_min
    out.write_text(json.dumps(doc, indent=1, default=float))
    say(f"uniform measured min {meas_min:.3f}x (table k/64 min {doc['table']['uniform_min_ratio']:.3f}x); per-layer "
        f"floor {doc['table']['per_layer_floor_ratio']:.3f}x; HALOC candidates' floor "
        f"{doc['table']['haloc_candidate_floor_ratio']:.3f}x")
    for t, v in doc["reachable"].items():
        say(f"target {t}: uniform {'reachable' if v['uniform_measured'] else 'NOT reachable'}; HALOC's candidates "
            f"{'reach' if v['haloc_candidates'] else 'do NOT reach'} it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
