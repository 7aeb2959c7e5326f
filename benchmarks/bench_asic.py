"""Benchmark the ``asic`` device: lowering and costing speed, ResNet-18/20 breakdowns, a plot.

1. Lowering ImageNet ResNet-18 through the TVM front end: cold (first call in the process,
   TVM import included), warm (another architecture) and cached (the same architecture again).
2. Costing the lowered ResNet-18: median of ``cost_graph(...).total()`` and of a whole
   ``AsicDevice.measure`` model request (cached graph), per accelerator.
3. The cross-check of the op graph's MACs against TVM's TIR FLOP estimate / 2.
4. ResNet-18 and ResNet-20 summaries on both accelerators at 8 and 4 bits, and a per-layer
   breakdown plot of ResNet-20 (``--plot``): which layers are compute- and which memory-bound.

Usage::

    python benchmarks/bench_asic.py [--plot measurements/asic/resnet20_breakdown.png] [--repeats 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch

from hwloop.devices.asic import AsicDevice, OpGraph, cost_graph
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.profiles import load_profile
from hwloop.models import ModelRef

DEVICES = ("asic-tpu32", "asic-eyeriss")


def _device(name: str, **kw: object) -> AsicDevice:
    prof = load_profile(name)
    return AsicDevice(name, timing=prof.timing, spec=prof.spec, **kw)  # type: ignore[arg-type]


def _median_ms(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def bench_lowering() -> OpGraph:
    from hwloop.devices.asic.frontend import lower_model
    from hwloop.devices.asic.reference import resnet18_ref

    ref = resnet18_ref()
    dev = _device("asic-tpu32")
    t = time.perf_counter()
    g = dev.lower(ref)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    dev.lower(ref)
    cached = time.perf_counter() - t
    t = time.perf_counter()
    lower_model(ModelRef(ref.name, {"width_mult": 0.75}, input_shape=ref.input_shape))
    warm = time.perf_counter() - t
    print("## Lowering ImageNet ResNet-18 (torch.export -> Relax -> FuseOpsByPattern -> op graph)")
    print(f"cold (first call, TVM import included): {cold:.2f} s")
    print(f"warm (another architecture, width 0.75): {warm:.2f} s")
    print(f"cached (same ModelRef again):           {cached * 1e3:.3f} ms")
    kinds: dict[str, int] = {}
    for op in g.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    print(f"op graph: {len(g.ops)} ops {kinds}, {g.macs / 1e9:.3f} GMACs, host ops: {len(g.host_ops)}")
    return g


def bench_costing(g: OpGraph, repeats: int) -> None:
    from hwloop.devices.asic.reference import resnet18_ref

    print(f"\n## Costing the lowered ResNet-18 (median of {repeats})")
    print("| device | cost_graph(...).total() | AsicDevice.measure (model request) |")
    print("|---|---|---|")
    ref = resnet18_ref()
    for name in DEVICES:
        dev = _device(name)
        dev._graphs[ref.key] = g  # the graph lowered above (lowering is per architecture, not per device)
        req = [MeasureRequest.for_model(ref)]
        timing = TimingConfig(warmup=0, repeats=1, mode="asic")
        t_cost = _median_ms(lambda acc=dev.accel: cost_graph(g, acc).total(), repeats)
        t_dev = _median_ms(lambda d=dev, r=req, t=timing: d.measure(r, t), repeats)
        print(f"| {name} | {t_cost:.3f} ms | {t_dev:.3f} ms |")


def bench_crosscheck() -> None:
    from hwloop.devices.asic.frontend import graph_from_relax, import_model, partition, tir_gemm_macs
    from hwloop.devices.asic.reference import resnet18_ref

    print("\n## MACs: op graph vs TVM TIR FLOP estimate / 2 (legalized module)")
    for ref in (resnet18_ref(), ModelRef("resnet20"), ModelRef("mobilenetv2")):
        mod, names = import_model(ref)
        g = graph_from_relax(partition(mod), names)
        tir = tir_gemm_macs(mod)
        mine = [op.macs for op in g.array_ops]
        # the unfused partition keeps TVM's call order (a conv that absorbs a residual add moves to the add)
        ordered = [op.macs for op in graph_from_relax(partition(mod, epilogue=False), names).array_ops]
        print(f"{ref.label}: {len(mine)} conv/linear ops, op graph {sum(mine):,} MACs, TIR {sum(tir):,} MACs, "
              f"per-op equal: {tir == ordered and sorted(tir) == sorted(mine)}")


def summaries(graphs: dict[str, OpGraph]) -> None:
    print("\n## Whole-network summaries")
    print("| model | device | bits w/a | latency ms | GMAC/s | utilisation | DRAM MB | energy uJ | "
          "compute-bound ops | memory-bound ops |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, g in graphs.items():
        for name in DEVICES:
            dev = _device(name)
            for bits in (8, 4):
                gc = cost_graph(g.with_bits(bits, 8 if bits == 8 else 4), dev.accel)
                t = gc.total()
                ops = [c for c in gc.ops() if c.kind in ("conv2d", "depthwise", "dense", "matmul")]
                nc = sum(c.bound == "compute" for c in ops)
                print(f"| {label} | {name} | {bits}/{8 if bits == 8 else 4} | {t.latency_ms:.3f} | "
                      f"{t.macs / t.latency_ms / 1e6:.1f} | {t.utilisation:.2f} | {t.dram_bytes / 1e6:.2f} | "
                      f"{t.energy_pj / 1e6:.1f} | {nc} | {len(ops) - nc} |")


def plot_breakdown(g: OpGraph, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2, 2, figsize=(15, 8), sharex=True)
    ops = [i for i, op in enumerate(g.ops) if op.kind != "view"]
    labels = [g.ops[i].name.replace("layers.", "L") for i in ops]
    for row, name in enumerate(DEVICES):
        dev = _device(name)
        for col, (wb, ab) in enumerate(((8, 8), (4, 4))):
            ax = axes[row][col]
            gc = cost_graph(g.with_bits(wb, ab), dev.accel)
            costs = gc.ops()
            us = [costs[i].latency_ms * 1e3 for i in ops]
            colors = ["tab:blue" if costs[i].bound == "compute" else "tab:orange" for i in ops]
            hatches = ["" if g.ops[i].unit == "array" else "//" for i in ops]
            bars = ax.bar(range(len(ops)), us, color=colors, edgecolor="black", linewidth=0.3)
            for b, h in zip(bars, hatches):
                b.set_hatch(h)
            tot = gc.total()
            ax.set_title(f"{name}, w{wb}/a{ab}: {tot.latency_ms * 1e3:.0f} us total, "
                         f"utilisation {tot.utilisation:.2f}", fontsize=10)
            ax.set_ylabel("latency (us)")
            ax.grid(axis="y", alpha=0.3)
    for ax in axes[1]:
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
    fig.legend(handles=[Patch(color="tab:blue", label="compute-bound"), Patch(color="tab:orange", label="memory-bound"),
                        Patch(facecolor="white", edgecolor="black", hatch="//", label="vector unit (add/pool)")],
               loc="upper right", ncol=3)
    fig.suptitle("ResNet-20 (CIFAR, batch 1) per-layer latency on the simulated accelerators", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", default="measurements/asic/resnet20_breakdown.png")
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--skip-crosscheck", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    g18 = bench_lowering()
    bench_costing(g18, args.repeats)
    if not args.skip_crosscheck:
        bench_crosscheck()
    g20 = _device("asic-tpu32").lower(ModelRef("resnet20"))
    summaries({"ResNet-18 (224)": g18, "ResNet-20 (32)": g20})
    plot_breakdown(g20, Path(args.plot))


if __name__ == "__main__":
    main()
