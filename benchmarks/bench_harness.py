"""Harness overhead: a conv layer timed through the Device API vs a bare loop in the same process.

For each layer and backend, every round times the layer twice with the same warm-up,
repeats and inner iterations: once with a hand-written loop (``perf_counter_ns`` on CPU,
two CUDA events on GPU; a hand-captured CUDA graph for ``cuda_graph``) and once through
``device.measure([MeasureRequest.for_layer(spec)], timing)``. The order alternates between
rounds. The table shows the median over rounds of each side's median latency, the median
of the per-round ratios harness/bare (target: within 1 ± 0.05) and, as a load-robust
cross-check, the median of the per-round ratios of the fastest samples ("min ratio").
On a shared, loaded machine preemption dominates the spread; the 1-minute load average is
printed with the table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_harness.py [--rounds 15] [--min-sample-ms 0.5] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402

from hwloop.devices.base import MeasureRequest, TimingConfig  # noqa: E402
from hwloop.devices.cpu import CpuDevice  # noqa: E402
from hwloop.workload import LayerSpec, build_layer, make_inputs  # noqa: E402

LAYERS = {
    "conv 32->32 3x3 @32x32": LayerSpec("conv2d", (1, 32, 32, 32), out_channels=32, kernel=3, padding=1),
    "conv 8->8 3x3 @8x8 (tiny)": LayerSpec("conv2d", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1),
}


def _bare_samples(call: Callable[[], object], timing: TimingConfig, clock: str) -> list[float]:
    """The loop a careful person writes by hand: warm up, then ``repeats`` samples of ``number`` calls."""
    for _ in range(timing.warmup):
        call()
    out = []
    if clock == "cpu":
        for _ in range(timing.repeats):
            t0 = time.perf_counter_ns()
            for _ in range(timing.number):
                call()
            out.append((time.perf_counter_ns() - t0) / 1e6 / timing.number)
        return out
    for _ in range(timing.repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(timing.number):
            call()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / timing.number)
    return out


def bare(spec: LayerSpec, timing: TimingConfig, backend: str) -> tuple[float, float]:
    """(median, min) of the bare loop's samples, in ms per call."""
    dev = "cpu" if backend == "cpu" else "cuda"
    mod = build_layer(spec).to(dev)
    inputs = make_inputs(spec, device=dev)
    with torch.inference_mode():
        if backend != "cuda_graph":
            xs = _bare_samples(lambda: mod(*inputs), timing, "cpu" if dev == "cpu" else "cuda")
            return statistics.median(xs), min(xs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                mod(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(timing.number):
                mod(*inputs)
        one = TimingConfig(**{**timing.to_dict(), "number": 1})
        xs = [x / timing.number for x in _bare_samples(g.replay, one, "cuda")]
        return statistics.median(xs), min(xs)


def calibrate(spec: LayerSpec, backend: str, min_sample_ms: float) -> int:
    dev = "cpu" if backend == "cpu" else "cuda"
    mod = build_layer(spec).to(dev)
    inputs = make_inputs(spec, device=dev)
    t = TimingConfig(warmup=5, repeats=5, number=10)
    with torch.inference_mode():
        per_call = statistics.median(_bare_samples(lambda: mod(*inputs), t, "cpu" if dev == "cpu" else "cuda"))
    return max(1, int(min_sample_ms / per_call) + 1)


def run(rounds: int, min_sample_ms: float) -> list[dict[str, Any]]:
    devices: dict[str, Any] = {"cpu": CpuDevice(threads=1)}
    if torch.cuda.is_available():
        from hwloop.devices.cuda import CudaDevice

        devices["cuda"] = CudaDevice()
        devices["cuda_graph"] = devices["cuda"]
    rows = []
    for backend, device in devices.items():
        for label, spec in LAYERS.items():
            number = calibrate(spec, backend, min_sample_ms)
            mode = "cuda_graph" if backend == "cuda_graph" else "eager"
            timing = TimingConfig(warmup=10, repeats=30, number=number, mode=mode, max_cv=1.0, max_retries=0,
                                  timeout_s=300)
            b_ms, h_ms, ratios, min_ratios, walls = [], [], [], [], []
            req = MeasureRequest.for_layer(spec.replace(name=label))
            for r in range(rounds):
                order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")
                for side in order:
                    if side == "bare":
                        b, b_min = bare(spec, timing, backend)
                    else:
                        t0 = time.perf_counter()
                        (res,) = device.measure([req], timing)
                        walls.append(time.perf_counter() - t0)
                        if not res.ok:
                            raise SystemExit(f"harness failed on {label}: {res.error}")
                        h, h_min = res.latency_ms, res.min_ms
                b_ms.append(b)
                h_ms.append(h)
                ratios.append(h / b)
                min_ratios.append(h_min / b_min)
            rows.append({"backend": backend, "layer": label, "number": number, "rounds": rounds,
                         "bare_ms": statistics.median(b_ms), "harness_ms": statistics.median(h_ms),
                         "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "min_ratio": statistics.median(min_ratios), "harness_wall_s": statistics.median(walls),
                         "ratios": ratios, "min_ratios": min_ratios})
    return rows


def show(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title="Harness vs bare loop (median over rounds; ratio = harness / bare)",
                  caption=f"torch {torch.__version__}, 1 thread, 1-min load average {load:.2f} on "
                          f"{os.cpu_count()} cores when printed")
    for col in ("backend", "layer", "number", "rounds", "bare ms", "harness ms", "ratio", "ratio range",
                "min ratio", "within 5%"):
        table.add_column(col, justify="left" if col in ("backend", "layer") else "right")
    for r in rows:
        table.add_row(r["backend"], r["layer"], str(r["number"]), str(r["rounds"]), f"{r['bare_ms']:.4f}",
                      f"{r['harness_ms']:.4f}", f"{r['ratio']:.3f}", f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
                      f"{r['min_ratio']:.3f}",
                      "yes" if abs(r["ratio"] - 1) <= 0.05 else "NO")
    Console(width=140).print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{r['backend']}\n{r['layer']}" for r in rows]
    ax.boxplot([r["ratios"] for r in rows], tick_labels=labels)
    ax.axhspan(0.95, 1.05, color="tab:green", alpha=0.15, label="±5 %")
    ax.set_ylabel("harness / bare latency")
    ax.legend(loc="upper right")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="rounds per layer (>= 5)")
    ap.add_argument("--min-sample-ms", type=float, default=0.5, help="length of one sample")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--plot", type=Path, help="write a PNG of the per-round ratios here")
    args = ap.parse_args()
    if args.rounds < 5:
        ap.error(f"--rounds {args.rounds}: need at least 5")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = run(args.rounds, args.min_sample_ms)
    show(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
