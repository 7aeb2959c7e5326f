"""Benchmark: how much compute does differentiable search need to reach TPE's best hypervolume?

Runs ``hwloop compare`` on a spec and prints the figure docs/compare.md quotes: the compute (training
images, epochs, wall seconds) the differentiable search needs to reach the hypervolume of TPE's best
front, as the ratio TPE / differentiable (> 1: differentiable needs less), plus each method's final
hypervolume and total compute.

Usage::

    python benchmarks/bench_compare.py search/compare-digits.toml --out runs/bench-compare-digits
    python benchmarks/bench_compare.py search/compare-cifar10-resnet20.toml --out runs/bench-compare-cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path, help="compare spec TOML")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default runs/bench-<name>)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from hwloop.errors import HwloopError
    from hwloop.search.compare import load_compare_spec, run_compare

    torch.set_num_threads(args.threads)
    try:
        spec = load_compare_spec(args.spec)
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"bench-{spec.name}"
    t0 = time.perf_counter()
    summary = run_compare(spec, out, progress=not args.no_progress, echo=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    rows = {m: {"hypervolume": round(r["hypervolume"], 4), f"total_{summary['unit']}": r["compute_total"],
                f"{summary['unit']}_to_{summary['baseline']}_best_hv": r["compute_to_baseline_hv"],
                "best_accuracy_at_target": r["best_accuracy_at_target"]}
            for m, r in summary["methods"].items()}
    report = {"spec": str(args.spec), "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads "
                                                 f"{args.threads}", "bench_wall_s": round(wall, 1),
              "latency": summary["latency"], "baseline_hv": round(summary["baseline_hv"], 4),
              "ratio_baseline_over_differentiable": summary["ratio_by_unit"], "methods": rows}
    print(json.dumps(report, indent=1, default=str))
    (Path(out) / "bench.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
