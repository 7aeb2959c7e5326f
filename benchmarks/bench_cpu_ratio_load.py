"""Is a whole-model latency RATIO on ``local-cpu`` trustworthy while the machine is busy? (issues 14, 16)

The evidence harness measures every compressed model against the original in one interleaved comparison
(``hwloop.search.report.compare_compressed``) and reports the ratio; it usually runs at ``nice 15`` beside
other jobs. This script measures the same kind of pairs (CIFAR ResNet-20 at uniform widths against the full
model, batch 1) through that same function, with the ``local-cpu`` profile at normal priority and with
``priority = "realtime"`` (SCHED_FIFO while measuring), ``--rounds`` times each, and writes every ratio with the
load average. Run it on a quiet machine and under load (same ``--nice``), then ``--compare QUIET LOADED``.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_ratio_load.py --nice 15 --out quiet.json
    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_ratio_load.py --nice 15 --out loaded.json
    python benchmarks/bench_cpu_ratio_load.py --compare quiet.json loaded.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

WIDTHS = (0.4, 0.55, 0.7, 0.85)


def measure(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from hwloop.devices.cpu import CpuDevice
    from hwloop.devices.profiles import load_profile
    from hwloop.models import ModelRef
    from hwloop.search.controls import uniform_config
    from hwloop.search.report import compare_compressed
    from hwloop.search.space import SearchSpace

    if args.nice:
        os.nice(args.nice)
    ref = ModelRef("resnet20", {}, input_shape=(3, 32, 32))
    model = ref.build().eval()
    space = SearchSpace.from_ref(ref, model=model)
    prof = load_profile("local-cpu")
    opts = dict(getattr(prof, "options", {}) or {})
    out: dict = {"nice": args.nice, "rounds": args.rounds, "widths": list(WIDTHS), "rows": [], "passes": args.passes,
                 "load_start": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    pairs = []
    for w in WIDTHS:
        net, plan = space.compress(uniform_config(space, w))
        pairs.append((w, net.eval(), plan))
    jobs = [(pr, w, net, plan) for _ in range(args.rounds) for pr in ("normal", "realtime") for (w, net, plan) in pairs]
    for pr, w, net, plan in tqdm(jobs, desc="ratios"):
        dev = CpuDevice("local-cpu", threads=int(opts.get("threads", 1)), clock="wall", preemption="retake",
                        priority=pr)
        load = os.getloadavg()[0]
        m = compare_compressed(dev, net, plan, model, example=ref.example_input(), passes=args.passes,
                               max_passes=max(args.passes, args.max_passes or args.passes))
        out["rows"].append({"priority": pr, "width": w, "ratio": m["ratio"], "ms": m["latency_ms"],
                            "orig_ms": m["original_ms"], "unstable": bool(m["unstable"]), "load": load,
                            "in_effect": dev.priority_in_effect, "pass_ratios": m.get("pass_ratios")})
    out["load_end"] = os.getloadavg()[0]
    return out


def summary(doc: dict) -> dict:
    s: dict = {}
    for r in doc["rows"]:
        s.setdefault((r["priority"], r["width"]), []).append(r["ratio"])
    return {k: (statistics.median(v), min(v), max(v), len(v)) for k, v in s.items()}


def compare(a: dict, b: dict) -> None:
    sa, sb = summary(a), summary(b)
    print(f"A: load {a['load_start']:.1f}->{a['load_end']:.1f} ({a['started']}); "
          f"B: load {b['load_start']:.1f}->{b['load_end']:.1f} ({b['started']})")
    print("priority  width   A median [min,max]        B median [min,max]        |B/A-1|  B spread")
    for k in sorted(sa):
        if k not in sb:
            continue
        (ma, lo_a, hi_a, _), (mb, lo_b, hi_b, n) = sa[k], sb[k]
        print(f"{k[0]:9s} {k[1]:5.2f}   {ma:.3f} [{lo_a:.3f},{hi_a:.3f}]   {mb:.3f} [{lo_b:.3f},{hi_b:.3f}]   "
              f"{abs(mb / ma - 1):6.1%}  {(hi_b - lo_b) / mb:6.1%}  (n={n})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nice", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=3, help="interleaved comparisons per ratio (median); 1 = the old way")
    ap.add_argument("--max-passes", type=int, default=None, help="extend to this many passes while the median pass "
                    "ratio has no two neighbours within 5%% (default: --passes, a fixed count)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        compare(*(json.loads(p.read_text()) for p in args.compare))
        return
    doc = measure(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for k, v in sorted(summary(doc).items()):
        print(k, v)


if __name__ == "__main__":
    main()
