"""Record the tuned-TVM CPU data set: random conv/linear layers (and ResNet-20) on three devices.

Each layer is timed on

* ``torch-cpu``   — PyTorch eager, one thread (``CpuDevice(threads=1)``),
* ``tvm-untuned`` — TVM Relax → llvm (host CPU), no schedule (``TvmDevice(tune_trials=0)``),
* ``tvm-tuned``   — the same, every fused function tuned by MetaSchedule for ``--trials`` trials,

all with the same :class:`TimingConfig` (wall clock; TVM via ``time_evaluator``), and written through
``hwloop.store`` (``MeasurementStore.add``), so the three rows of a layer share its workload key and
differ by device fingerprint. The store (``--store``, default ``$HWLOOP_HOME/record-tvm-llvm.db``)
makes an interrupted run resume; the MetaSchedule database (``--work-dir``) makes re-tuning free.
At the end the store is exported to ``--out/layers.parquet`` and a summary (ratios per op kind,
ResNet-20) is printed and written to ``--out/summary.json``, with a scatter plot ``--out/tvm_vs_torch.png``.

ResNet-20 goes first, then the layers; a smaller ``--layers`` draws a prefix of a larger run's layers,
so ``--layers K`` on a partly recorded store exports the first K without measuring them again.
Layers are drawn by ``hwloop.predict.sampling.random_layer_specs`` (seed ``--seed``), keeping conv2d and
linear specs of at most ``--max-mmac`` million MACs (untuned TVM is slow on big layers).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/record_tvm_dataset.py --layers 100 --trials 4 --out measurements/tvm-llvm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from tqdm import tqdm

from hwloop.devices._tvm_import import hwloop_home
from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.cpu import CpuDevice
from hwloop.devices.tvm import TvmDevice
from hwloop.models import ModelRef
from hwloop.predict.sampling import random_layer_specs
from hwloop.store import MeasurementStore
from hwloop.workload import LayerSpec

TIMING = TimingConfig(warmup=2, repeats=15, min_repeat_ms=2.0, max_cv=0.1, max_retries=1, timeout_s=120)
TARGET = {"kind": "llvm", "mcpu": "native"}


def draw_layers(n: int, seed: int, max_mmac: float) -> list[LayerSpec]:
    rng = np.random.default_rng(seed)
    out: list[LayerSpec] = []
    seen: set[str] = set()
    while len(out) < n:
        for s in random_layer_specs(64, rng, batches=(1, 2)):  # fixed chunks: a smaller n draws a prefix
            if s.op in ("conv2d", "linear") and s.macs <= max_mmac * 1e6 and s.key not in seen:
                seen.add(s.key)
                out.append(s)
                if len(out) == n:
                    break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--trials", type=int, default=4, help="MetaSchedule trials per fused function")
    ap.add_argument("--population", type=int, default=32, help="evolutionary-search population")
    ap.add_argument("--max-mmac", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-model", action="store_true", help="skip ResNet-20")
    ap.add_argument("--out", type=Path, default=Path("measurements/tvm-llvm"))
    ap.add_argument("--store", default=None, help="store URL (default $HWLOOP_HOME/record-tvm-llvm.db)")
    ap.add_argument("--work-dir", type=Path, default=None, help="MetaSchedule database folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    store_url = args.store or f"sqlite:///{hwloop_home() / 'record-tvm-llvm.db'}"
    work_dir = args.work_dir or hwloop_home() / "tvm" / f"dataset-{args.trials}x{args.population}"
    devices = {
        "torch-cpu": CpuDevice(name="torch-cpu", threads=1),
        "tvm-untuned": TvmDevice(name="tvm-untuned", target=TARGET, tune_trials=0),
        "tvm-tuned": TvmDevice(name="tvm-tuned", target=TARGET, tune_trials=args.trials,
                               tune_population=args.population, work_dir=work_dir),
    }
    specs = draw_layers(args.layers, args.seed, args.max_mmac)
    reqs = [MeasureRequest.for_layer(s) for s in specs]
    if not args.no_model:
        reqs.insert(0, MeasureRequest.for_model(ModelRef("resnet20")))
    t0 = time.time()
    with MeasurementStore(store_url) as st:
        fps = {k: d.fingerprint() for k, d in devices.items()}
        timings = {k: TIMING if k == "torch-cpu" else dataclasses.replace(TIMING, mode="tvm") for k in devices}
        for req in tqdm(reqs, desc="torch / tvm / tvm-tuned", unit="workload"):
            for k, dev in devices.items():
                if not st.missing(fps[k], [req], timings[k]):
                    continue
                (res,) = dev.measure([req], timings[k])
                st.add(fps[k], req, res)
                if k.startswith("tvm"):
                    dev._compiled.clear()
        args.out.mkdir(parents=True, exist_ok=True)
        n = st.export(args.out / "layers.parquet")
        df = st.to_dataframe(ok_only=False)
    for d in devices.values():
        d.close()
    summary = summarize_frame(df, fps)
    complete = int((_pivot(df, fps).reset_index()["kind"] == "layer").sum())
    summary.update({"rows": n, "layers_requested": len(specs), "layers_on_all_three": complete,
                    "trials_per_function": args.trials,
                    "population": args.population, "this_run_s": round(time.time() - t0, 1)})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    plot(df, fps, args.out / "tvm_vs_torch.png")


def _pivot(df, fps):
    keymap = {fp.key: name for name, fp in fps.items()}
    df = df[df["device_key"].isin(keymap)].copy()
    df["dev"] = df["device_key"].map(keymap)
    ok = df[df["error"].isna()]
    return ok.pivot_table(index=["workload_key", "op", "kind"], columns="dev", values="latency_ms").dropna()


def summarize_frame(df, fps) -> dict:
    p = _pivot(df, fps).reset_index()
    out: dict = {"failures": {k: int(((df["device_key"] == fp.key) & df["error"].notna()).sum())
                              for k, fp in fps.items()}}
    for label, sub in (("conv2d", p[p["op"] == "conv2d"]), ("linear", p[p["op"] == "linear"]),
                       ("resnet20", p[p["kind"] == "model"])):
        if len(sub) == 0:
            continue
        r_unt = sub["tvm-untuned"] / sub["torch-cpu"]
        r_tun = sub["tvm-tuned"] / sub["torch-cpu"]
        out[label] = {"n": len(sub),
                      "median_ms": {c: round(float(sub[c].median()), 4) for c in ("torch-cpu", "tvm-untuned", "tvm-tuned")},
                      "untuned_over_torch_median": round(float(statistics.median(r_unt)), 2),
                      "tuned_over_torch_median": round(float(statistics.median(r_tun)), 2),
                      "untuned_over_tuned_median": round(float(statistics.median(sub["tvm-untuned"] / sub["tvm-tuned"])), 2),
                      "tuned_faster_than_torch": int((r_tun < 1).sum())}
    return out


def plot(df, fps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = _pivot(df, fps).reset_index()
    p = p[p["kind"] == "layer"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for col, mk in (("tvm-untuned", "x"), ("tvm-tuned", "o")):
        for op, c in (("conv2d", "tab:blue"), ("linear", "tab:orange")):
            s = p[p["op"] == op]
            ax.scatter(s["torch-cpu"], s[col], s=14, marker=mk, c=c, alpha=0.7, label=f"{col} · {op}")
    lo, hi = float(p[["torch-cpu", "tvm-tuned", "tvm-untuned"]].min().min()), float(p.max(numeric_only=True).max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="same as torch")
    ax.set(xscale="log", yscale="log", xlabel="PyTorch eager, 1 thread (ms)", ylabel="TVM llvm (ms)",
           title="TVM vs PyTorch on random conv/linear layers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
