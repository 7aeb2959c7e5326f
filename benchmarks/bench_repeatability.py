"""Repeatability on CPU: the same sweep of 50 layers measured twice; median |difference| <= 5%.

Each pass runs :func:`hwloop.sweep.run_sweep` into its own fresh SQLite store (so both passes
really measure), then the two stores' frames are joined by workload key. Reported: the median,
90th percentile and max of ``|a - b| / mean(a, b)``, the share of layers within 5%, and the
Spearman rank correlation (plus the median difference of ``min_ms`` and the machine's load
average, since other processes sharing the cores dominate the noise). Writes ``report.json`` and
``repeatability.png`` (pass 1 vs pass 2, log-log) to ``--out``; exits 1 when the median exceeds
``--threshold``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_repeatability.py [--device local-cpu] [--threads 1]
        [--spec measurements/specs/repeatability-50.toml] [--out runs/bench_repeatability]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

REPO = Path(__file__).resolve().parents[1]


def measure_pass(spec_path: Path, device_name: str, threads: int | None, db: Path) -> tuple[object, object]:
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.store import MeasurementStore
    from hwloop.sweep import SweepSpec, run_sweep

    spec = SweepSpec.from_toml(spec_path)
    prof = load_profile(device_name)
    if threads is not None:
        prof = dataclasses.replace(prof, options={**dict(prof.options), "threads": threads})
    dev = create_device(prof)
    timing = spec.timing_for(prof.timing)
    try:
        with MeasurementStore(db) as st:
            summary = run_sweep(spec.requests(), dev, st, timing, progress=True)
            df = st.to_dataframe(kind="layer")
        return summary, df
    finally:
        dev.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="local-cpu", help="device name or profile path")
    ap.add_argument("--threads", type=int, default=None, help="override the cpu backend's thread count")
    ap.add_argument("--spec", type=Path, default=REPO / "measurements" / "specs" / "repeatability-50.toml")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_repeatability")
    ap.add_argument("--threshold", type=float, default=0.05, help="allowed median relative difference")
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    s1, a = measure_pass(args.spec, args.device, args.threads, out / "pass1.db")
    s2, b = measure_pass(args.spec, args.device, args.threads, out / "pass2.db")
    wall = time.perf_counter() - t0
    j = pd.merge(a[["workload_key", "op", "macs", "latency_ms", "min_ms"]], b[["workload_key", "latency_ms", "min_ms"]],
                 on="workload_key", suffixes=("_1", "_2"))

    def reldiff(col: str) -> pd.Series:
        return (j[f"{col}_1"] - j[f"{col}_2"]).abs() / ((j[f"{col}_1"] + j[f"{col}_2"]) / 2)

    rel, rel_min = reldiff("latency_ms"), reldiff("min_ms")
    report = {
        "spec": str(args.spec.relative_to(REPO) if args.spec.is_relative_to(REPO) else args.spec),
        "device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "layers": int(len(j)), "failed": int(s1.failed + s2.failed),  # type: ignore[attr-defined]
        "median_rel_diff": float(np.median(rel)), "p90_rel_diff": float(np.quantile(rel, 0.9)),
        "max_rel_diff": float(rel.max()), "share_within_5pct": float((rel <= 0.05).mean()),
        "spearman": float(spearmanr(j["latency_ms_1"], j["latency_ms_2"]).statistic),
        "latency_ms_range": [float(j["latency_ms_1"].min()), float(j["latency_ms_1"].max())],
        "median_rel_diff_of_min_ms": float(np.median(rel_min)),
        "loadavg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)], "cores": os.cpu_count(),
        "wall_s": round(wall, 1), "threshold": args.threshold,
    }
    report["pass"] = report["median_rel_diff"] <= args.threshold
    (out / "report.json").write_text(json.dumps(report, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for op, g in j.groupby("op"):
        ax.scatter(g["latency_ms_1"], g["latency_ms_2"], s=14, label=op)
    lo, hi = j[["latency_ms_1", "latency_ms_2"]].min().min(), j[["latency_ms_1", "latency_ms_2"]].max().max()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="pass 1 latency (ms)", ylabel="pass 2 latency (ms)",
           title=f"{len(j)} layers, median |diff| {100 * report['median_rel_diff']:.1f}%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "repeatability.png", dpi=120)

    print(f"layers={report['layers']} median|diff|={100 * report['median_rel_diff']:.2f}% "
          f"p90={100 * report['p90_rel_diff']:.2f}% max={100 * report['max_rel_diff']:.2f}% "
          f"within5%={100 * report['share_within_5pct']:.0f}% spearman={report['spearman']:.4f} "
          f"(min_ms: median|diff|={100 * report['median_rel_diff_of_min_ms']:.2f}%) "
          f"load={report['loadavg_1min_before_after']} on {report['cores']} cores wall={report['wall_s']}s "
          f"-> {'PASS' if report['pass'] else 'FAIL'} (threshold "
          f"{100 * args.threshold:.0f}%)")
    print(f"wrote {out / 'report.json'} and {out / 'repeatability.png'}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
