"""Record a predictor data set: the local CPU (default) or any device profile (``--device``).

Layers (isolated): every unique op of random-width built-in models (seed 1) plus random
layers from a broad grid. Whole models (seed 2, so their widths differ from the layer
set): random-width resnet20 / vgg16 / mobilenetv2 / small_cnn at batch 1 and 2, each
timed end to end with every leaf module also timed in context (``model_layers``).
A random subset is measured a second time at the end to show the measurement noise floor.

Raw results are appended as JSON lines (one ``{"fingerprint", "request", "result"}`` per line,
the arguments of ``MeasurementStore.add``) to ``--raw`` (default ``$HWLOOP_HOME/record-local-cpu``),
so an interrupted run resumes where it stopped. At the end they are written to ``--out`` as
store exports: ``measurements.parquet`` (import with ``hwloop data import``) and
``repeat.parquet`` (the second measurement of the subset), plus ``workloads.jsonl.gz`` (the
traced workload of every measured model, gzipped, so fitting needs no torch.export).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/record_cpu_dataset.py [--out measurements/local-cpu] [--quick]
    python benchmarks/record_cpu_dataset.py --device asic-tpu32 --out measurements/asic-tpu32

``local-cpu`` is measured with one thread and the thread CPU clock
(``CpuDevice(threads=1, clock="thread_cpu")``, the ``local-cpu-threadclock`` profile; ``--clock wall``
for the wall clock) and the timings below;
other devices use their profile's timing, and accelerators (backend ``asic``) also get
quantised layer variants (``w_bits``/``a_bits`` in 2–8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from tqdm import tqdm

from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.cpu import CpuDevice
from hwloop.devices.profiles import create_device
from hwloop.predict.sampling import random_layer_specs, random_model_refs, unique_specs
from hwloop.workload import WorkloadWarning, extract_workload

LAYER_TIMING = TimingConfig(warmup=3, repeats=25, min_repeat_ms=1.0, max_cv=0.08, max_retries=1, timeout_s=60)
MODEL_TIMING = TimingConfig(warmup=3, repeats=40, min_repeat_ms=0.5, max_cv=0.08, max_retries=1, timeout_s=120)


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                keys.add(json.loads(line)["request_key"])
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line is tolerated
    return keys


def _append(f, fp: dict, req: MeasureRequest, res) -> None:
    f.write(json.dumps({"request_key": req.key, "fingerprint": fp, "request": req.to_dict(),
                        "result": res.to_dict()}) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _measure(dev: CpuDevice, reqs: list[MeasureRequest], path: Path, timing: TimingConfig, desc: str) -> None:
    fp = dev.fingerprint().to_dict()
    done = _done(path)
    todo = [r for r in reqs if r.key not in done]
    with open(path, "a", encoding="utf-8") as f:
        for req in tqdm(todo, desc=desc, unit="req"):
            res = dev.measure([req], timing)[0]
            _append(f, fp, req, res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="measurements/local-cpu")
    ap.add_argument("--export-only", action="store_true", help="only convert the raw log to store exports")
    ap.add_argument("--device", default="local-cpu", help="device profile name")
    ap.add_argument("--clock", default="thread", choices=("thread", "wall"),
                    help="local-cpu only: thread CPU time (default; robust on a shared machine) or wall clock")
    ap.add_argument("--random-layers", type=int, default=1500, help="layers drawn from the random grid")
    ap.add_argument("--models", type=int, default=16, help="whole models per family at batch 1")
    ap.add_argument("--models-b2", type=int, default=6, help="whole models per family at batch 2")
    ap.add_argument("--raw", default=None, help="folder of the resumable JSON-lines log")
    ap.add_argument("--quick", action="store_true", help="a tiny data set (for a smoke test)")
    args = ap.parse_args()
    home = Path(os.environ.get("HWLOOP_HOME") or Path.home() / ".hwloop").expanduser()
    tag = f"{args.device}-wallclock" if args.device == "local-cpu" and args.clock == "wall" else args.device
    raw = Path(args.raw) if args.raw else home / (f"record-{tag}" + ("-quick" if args.quick else ""))
    raw.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", WorkloadWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = 0.1 if args.quick else 1.0
    t0 = time.time()
    if args.export_only:
        export(raw, out)
        return

    # whole models (seed 2) and their workloads
    rng2 = np.random.default_rng(2)
    models = random_model_refs(max(2, int(args.models * scale)), rng2, batch=1)
    models += random_model_refs(max(1, int(args.models_b2 * scale)), rng2, batch=2, include_default=False)
    wpath = raw / "workloads.jsonl"
    have = set()
    if wpath.exists():
        have = {json.loads(line)["model_key"] for line in wpath.read_text().splitlines() if line.strip()}
    with open(wpath, "a", encoding="utf-8") as f:
        for ref in tqdm([m for m in models if m.key not in have], desc="trace models", unit="model"):
            wl = extract_workload(ref.build(), ref.example_input(), name=ref.label)
            f.write(json.dumps({"model_key": ref.key, "model": ref.to_dict(), "workload": wl.to_dict()}) + "\n")

    # layer pool (seed 1): ops of other random models + a random grid
    rng1 = np.random.default_rng(1)
    pool_models = random_model_refs(max(1, int(10 * scale)), rng1, batch=1, include_default=False)
    pool_models += random_model_refs(max(1, int(3 * scale)), rng1, batch=2, include_default=False)
    specs = []
    for ref in tqdm(pool_models, desc="trace layer pool", unit="model"):
        specs += [s for s in extract_workload(ref.build(), ref.example_input()).layers if s.op != "other"]
    if args.device == "local-cpu":
        clock = "thread_cpu" if args.clock == "thread" else "wall"
        dev = CpuDevice(name="local-cpu", threads=1, clock=clock)
        layer_t, model_t = LAYER_TIMING, MODEL_TIMING
    else:
        dev = create_device(args.device)
        layer_t = model_t = dev.timing  # type: ignore[attr-defined]
    bits = ((None, None), (8, 8), (4, 8), (2, 8), (4, 4)) if dev.fingerprint().backend == "asic" else ((None, None),)
    specs += random_layer_specs(int(args.random_layers * scale), rng1, bits=bits)
    specs = unique_specs(specs)
    order = rng1.permutation(len(specs))
    specs = [specs[i] for i in order]
    print(f"{len(specs)} unique layers, {len(models)} models")

    _measure(dev, [MeasureRequest.for_layer(s) for s in specs], raw / "layers.jsonl", layer_t, "layers")
    _measure(dev, [MeasureRequest.for_model(m, per_layer=True) for m in models], raw / "models.jsonl",
             model_t, "models")
    rep = [MeasureRequest.for_layer(specs[i]) for i in rng1.choice(len(specs), min(300, len(specs)), replace=False)]
    _measure(dev, rep, raw / "repeat.jsonl", layer_t, "repeat layers")
    rep = [MeasureRequest.for_model(models[i], per_layer=True) for i in range(0, len(models), 4)]
    _measure(dev, rep, raw / "repeat.jsonl", model_t, "repeat models")
    export(raw, out)
    print(f"done in {time.time() - t0:.0f} s")


def export(raw: Path, out: Path) -> None:
    """Write the raw JSON lines as store exports (``measurements.parquet``, ``repeat.parquet``)."""
    import shutil

    from hwloop.devices.base import DeviceFingerprint, MeasureResult
    from hwloop.store import MeasurementStore

    for names, target in ((("layers.jsonl", "models.jsonl"), "measurements.parquet"),
                          (("repeat.jsonl",), "repeat.parquet")):
        with MeasurementStore("sqlite://") as st:
            for name in names:
                if not (raw / name).exists():
                    continue
                for line in (raw / name).read_text(encoding="utf-8").splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    st.add(DeviceFingerprint.from_dict(rec["fingerprint"]), MeasureRequest.from_dict(rec["request"]),
                           MeasureResult.from_dict(rec["result"]))
            n = st.export(out / target)
        print(f"wrote {n} rows to {out / target}")
    import gzip

    with open(raw / "workloads.jsonl", "rb") as src, open(out / "workloads.jsonl.gz", "wb") as f, \
            gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    main()
