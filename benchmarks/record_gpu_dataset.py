"""Record the local-GPU data set: random layers and random-width models, eager and CUDA-graph, fp32 and fp16.

What it measures (with the sweep/store API, so it is resumable and every result is
committed the moment it arrives):

* **layers** — ``--layers`` (default 1,000) distinct conv2d + linear layers drawn from a
  Sobol-sampled space (channels 8..512 log, kernels 1/3/5, stride 1/2, depthwise or dense,
  resolution 8..56, batch 1/8/32), each in float32 and float16, each timed in ``eager`` and
  ``cuda_graph`` mode → 4 measurements per layer;
* **models** — ``--models`` (default 50) random-width resnet20 / resnet56 / vgg16 /
  mobilenetv2 (seed 2), timed end to end with every layer also timed in context
  (``model_layers``), in both modes, float32 and float16.

Output in ``--out`` (default ``measurements/local-gpu``): ``measurements.db`` (the SQLite
store; point ``--store`` at PostgreSQL to share one), ``measurements.parquet`` (an export
other machines import with ``MeasurementStore.import_``), ``summary.json`` and
``eager_vs_graph.png`` (per-layer eager vs graph latency, per dtype).

Usage (on a machine with an NVIDIA GPU; ``--quick`` for a 2-minute smoke run)::

    python benchmarks/record_gpu_dataset.py [--device local-gpu] [--out measurements/local-gpu] [--quick]

The script also runs on the CPU backend for a smoke test of the pipeline itself
(``--device local-cpu --modes eager --dtypes float32 --quick``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from hwloop.devices import MeasureRequest, MeasureResult, TimingConfig, create_device  # noqa: E402
from hwloop.errors import HwloopError  # noqa: E402
from hwloop.store import MeasurementStore  # noqa: E402
from hwloop.sweep import SweepSpec, run_sweep  # noqa: E402
from hwloop.workload import WorkloadWarning  # noqa: E402

LAYER_SPACE: dict[str, Any] = {
    "name": "gpu-layers", "kind": "layers", "sampling": "sobol", "seed": 0,
    "space": {"op": ["conv2d", "linear"], "in_channels": {"min": 8, "max": 512, "log": True},
              "out_channels": {"min": 8, "max": 512, "log": True}, "kernel": [1, 3, 5], "stride": [1, 2],
              "groups": [1, "depthwise"], "resolution": [8, 14, 16, 28, 32, 56], "batch": [1, 8, 32],
              "dtype": ["float32"]},
}
FAMILIES = {"resnet20": 0.3, "resnet56": 0.2, "vgg16": 0.2, "mobilenetv2": 0.3}


def layer_requests(n: int, dtypes: list[str]) -> list[MeasureRequest]:
    specs = SweepSpec.from_dict({**LAYER_SPACE, "n": n}).layers()
    return [MeasureRequest.for_layer(s.replace(dtype=dt)) for dt in dtypes for s in specs]


def model_requests(n: int, dtypes: list[str], batch: int) -> list[MeasureRequest]:
    counts = {f: max(1, round(n * w)) for f, w in FAMILIES.items()}
    counts["resnet20"] += n - sum(counts.values())
    reqs: list[MeasureRequest] = []
    for dt in dtypes:
        spec = SweepSpec.from_dict({"name": "gpu-models", "kind": "models", "per_layer": True, "random_widths": [
            {"family": f, "n": k, "seed": 2 + i, "batch": batch, "dtype": dt} for i, (f, k) in enumerate(counts.items())
            if k > 0]})
        reqs += spec.requests()
    return reqs


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[tuple[str, str], dict[str, float]] = {}
    for p in points:
        if p["kind"] == "layer":
            by.setdefault((p["key"], p["dtype"]), {})[p["mode"]] = p["latency_ms"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for dt, color in (("float32", "tab:blue"), ("float16", "tab:orange")):
        xy = [(v["eager"], v["cuda_graph"]) for (_, d), v in by.items() if d == dt and len(v) == 2]
        if xy:
            ax.scatter(*zip(*xy), s=6, alpha=0.6, color=color, label=f"{dt} ({len(xy)})")
    lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lim, lim, "k--", lw=0.8, label="equal")
    ax.set(xscale="log", yscale="log", xlabel="eager latency (ms)", ylabel="cuda_graph latency (ms)",
           title="Layers: eager vs CUDA-graph replay")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="local-gpu")
    ap.add_argument("--out", type=Path, default=Path("measurements/local-gpu"))
    ap.add_argument("--store", help="store URL (default: OUT/measurements.db)")
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--model-batch", type=int, default=1)
    ap.add_argument("--modes", default="eager,cuda_graph")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--quick", action="store_true", help="20 layers and 4 models, fewer repeats")
    args = ap.parse_args()
    warnings.simplefilter("ignore", WorkloadWarning)
    modes = [m for m in args.modes.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    n_layers, n_models = (20, 4) if args.quick else (args.layers, args.models)
    try:
        device = create_device(args.device)
        args.out.mkdir(parents=True, exist_ok=True)
        store = MeasurementStore(args.store or args.out / "measurements.db")
        fp = device.fingerprint()
        print(f"device {fp.name}: {json.dumps(fp.identity)}")
        base: TimingConfig = getattr(device, "timing", TimingConfig())
        if args.quick:
            base = TimingConfig.from_dict({**base.to_dict(), "repeats": 5, "warmup": 2, "max_retries": 0})
        layers = layer_requests(n_layers, dtypes)
        models = model_requests(n_models, dtypes, args.model_batch)
        points: list[dict[str, Any]] = []

        def keep(req: MeasureRequest, res: MeasureResult, stored: bool) -> None:
            dt = req.layer.dtype if req.layer is not None else req.model.dtype if req.model is not None else ""
            points.append({"kind": "layer" if req.layer is not None else "model", "key": req.key, "dtype": dt,
                           "mode": res.timing.mode, "latency_ms": res.latency_ms, "ok": res.ok,
                           "unstable": res.unstable})

        t0 = time.time()
        summaries = {}
        for mode in modes:
            timing = TimingConfig.from_dict({**base.to_dict(), "mode": mode})
            for what, reqs in (("layers", layers), ("models", models)):
                s = run_sweep(reqs, device, store, timing, on_result=keep)
                summaries[f"{what}/{mode}"] = {"measured": s.measured, "skipped": s.skipped, "failed": s.failed,
                                               "wall_s": s.wall_s}
                print(f"{what:6s} {mode:10s}: {s.measured} measured, {s.skipped} already stored, "
                      f"{s.failed} failed, {s.wall_s:.0f} s")
        n_rows = store.export(args.out / "measurements.parquet")
        summary = {"fingerprint": fp.to_dict(), "layers": len(layers), "models": len(models), "modes": modes,
                   "dtypes": dtypes, "sweeps": summaries, "rows_exported": n_rows,
                   "unstable_this_run": sum(p["unstable"] for p in points), "wall_s": round(time.time() - t0, 1)}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        if {"eager", "cuda_graph"} <= set(modes) and points:
            plot(points, args.out / "eager_vs_graph.png")
        store.close()
        device.close()
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {n_rows} rows in {args.out} ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
