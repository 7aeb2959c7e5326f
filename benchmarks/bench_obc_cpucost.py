"""Does the joint DP's cost land on the CPU? OBC's architecture answers (no stitching, no accuracy) on a CPU profile:
the DP on the plain op sum vs the DP on the op sum calibrated with the dense model's fixed share (``calibrate``),
each answer's predicted ratio next to its measured one (interleaved comparisons against the dense model).

Uses a level database of ``bench_obc.py`` (its units and level errors; channels only on the CPU)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_obc_cpucost.py \
        --database search/results/obc/cpu_wall_quiet2/database-channels-1024.safetensors \
        --device local-cpu --out search/results/obc/cpucost_local-cpu/results.json

Per cost source (``--sources``: ``predictor`` = the device's shipped predictor through its whole-model
aggregation, ``measure`` = the per-op cost table measured live), ``--probes`` whole-model probes fit the fixed
share; for each target the plain and the calibrated DP's answer is measured ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", required=True)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--targets", default="0.7,0.6,0.5")
    ap.add_argument("--sources", default="predictor")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=10000)
    ap.add_argument("--calibrate-by", default="whole", help="comma list: whole (one fixed share, the 'calibrated' "
                    "rows), resolution (one scale per feature-map resolution, one deep-cut probe per resolution added; "
                    "the 'resolution' rows), dp (one fixed share fitted on the DP's own answers at the uniform probes' op-sum "
                    "budgets; the 'dp-calibrated' rows)")
    ap.add_argument("--predictor", default=None, help="predictor file for the 'predictor' source (default: the one "
                    "shipped for --device)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from hwloop.compress import from_plan
    from hwloop.compress.actions import ChannelPrune
    from hwloop.compress.plan import CompressionPlan
    from hwloop.methods.obc.database import load_database
    from hwloop.methods.obc.joint import op_costs, solve_joint
    from hwloop.methods.obc.overhead import (
        RatioMap,
        budget_of,
        calibrate_dp,
        calibrate_overhead,
        calibrate_segments,
        ratio_of,
    )
    from hwloop.models import ModelRef
    from hwloop.search.report import compare_compressed
    from hwloop.search.space import SearchSpace, SpaceOptions

    ref = ModelRef("resnet20")
    model = ref.build().eval()
    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
    db = load_database(args.database)
    units = db.units
    groups = [i for i, u in enumerate(units) if u.kind == "group"]
    errors = [u.errors for u in units]
    ex = ref.example_input()

    def plan_of(ch: list[int]) -> CompressionPlan:
        acts = [ChannelPrune(units[i].name, int(units[i].levels[ch[i]])) for i in groups
                if units[i].levels[ch[i]] < units[i].full]
        return CompressionPlan(base=ref.to_dict(), actions=acts, meta={"method": "obc"})

    def measure(ch: list[int]) -> tuple[float, dict[str, Any]]:
        plan = plan_of(ch)       # the exported model (a device that does not interleave measures this one)
        m = compare_compressed(args.device, from_plan(plan.to_dict()).eval(), plan, model, example=ex)
        return float(m["ratio"]), {"ratio_ci": m["ratio_ci"], "unstable": bool(m["unstable"]),
                                   "load1": m.get("load", {}).get("load1")}

    out: dict[str, Any] = {"device": args.device, "database": args.database, "probes": args.probes,
                           "repeats": args.repeats, "sources": {}}
    for src in args.sources.split(","):
        t0 = time.perf_counter()
        cost, tab = op_costs(space, units, args.device, source=src, progress=True,
                             predictor=args.predictor if src == "predictor" else None)
        t_cost = time.perf_counter() - t0
        say(f"{src}: {len(cost.terms)} terms, dense op sum {cost.full():.4f} {tab.unit} ({t_cost:.1f} s)")
        t0 = time.perf_counter()
        seen: dict[tuple[int, ...], tuple[float, dict[str, Any]]] = {}

        def once(ch: list[int], seen: dict[tuple[int, ...], tuple[float, dict[str, Any]]] = seen
                 ) -> tuple[float, dict[str, Any]]:   # a uniform probe measured once for both fits
            if tuple(ch) not in seen:
                seen[tuple(ch)] = measure(ch)
            return seen[tuple(ch)]

        by = args.calibrate_by.split(",")
        alpha, info = calibrate_overhead(cost, groups, args.probes, once, say)
        costs: list[tuple[str, float | RatioMap, Any]] = [("op sum", 0.0, cost), ("calibrated", alpha, cost)]
        seg_info = None
        if "resolution" in by:
            seg_cost, seg_info = calibrate_segments(cost, groups, args.probes, once, say)
            costs.append(("resolution", 0.0, seg_cost))
        dp_info = None
        if "dp" in by:
            def solve(budget: float, cost: Any = cost) -> list[int] | None:
                got = solve_joint(errors, cost, budget, args.buckets, candidates=groups)
                return None if got is None else got[0]

            alpha_dp, dp_info = calibrate_dp(cost, groups, args.probes, solve, once, say)
            costs.append(("dp-calibrated", alpha_dp, cost))
        t_probe = time.perf_counter() - t0
        rows = []
        for target in [float(t) for t in args.targets.split(",")]:
            for name, a, c in costs:
                t0 = time.perf_counter()
                got = solve_joint(errors, c, c.full() * budget_of(a, target), args.buckets,
                                  candidates=groups)
                t_dp = time.perf_counter() - t0
                if got is None:
                    say(f"{src} {name} target {target}: nothing fits")
                    rows.append({"target": target, "cost": name, "feasible": False})
                    continue
                ch = got[0]
                pred = ratio_of(a, c.total(ch) / c.full())
                ms = [measure(ch) for _ in range(args.repeats)]
                r = statistics.median(m[0] for m in ms)
                rows.append({"target": target, "cost": name, "feasible": True, "choice": ch, "dp_error": got[1],
                             "predicted_ratio": pred, "measured_ratio": r, "measured": [m[0] for m in ms],
                             "details": [m[1] for m in ms], "dp_s": t_dp,
                             "channels_kept": sum(int(units[i].levels[ch[i]]) for i in groups)})
                say(f"{src} {name} target {target}: predicted {pred:.3f}, measured {r:.3f} "
                    f"({[round(m[0], 3) for m in ms]}; {r / target - 1:+.1%} vs target), DP {t_dp:.1f} s")
                out["sources"][src] = {"alpha": alpha, "calibration": info, "cost_s": t_cost, "probe_s": t_probe,
                                       "rows": rows, **({"resolution": seg_info} if seg_info else {}),
                                       **({"dp": dp_info} if dp_info else {})}
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
