"""Record a predictor data set: the local CPU (default) or any device profile (``--device``).

Layers (isolated): every unique op of random-width built-in models (seed 1) plus random
layers from a broad grid. Whole models (seed 2, so their widths differ from the layer
set): random-width resnet20 / vgg16 / mobilenetv2 / small_cnn at batch 1 and 2, each
timed end to end with every leaf module also timed in context (``model_layers``).
A random subset is measured a second time at the end to show the measurement noise floor.

Results go into the measurement store (:class:`hwloop.store.MeasurementStore`, through
:func:`hwloop.sweep.run_sweep`): ``--store`` (default ``RAW/measurements.db``; ``RAW`` is ``--raw``,
default ``$HWLOOP_HOME/record-local-cpu``), each result committed as it arrives, so an interrupted run
resumes where it stopped (what is stored is skipped; a stored failure is measured again). The second
measurement of the subset goes to ``RAW/repeat.db`` (a store holds one row per request and timing). A
JSON-lines log of the earlier recorder in ``RAW`` (``layers.jsonl``, ``models.jsonl``, ``repeat.jsonl``)
is imported into these stores once. At the end the device's rows are written to ``--out`` as store
exports: ``measurements.parquet`` (import with ``hwloop data import``) and ``repeat.parquet``, plus
``workloads.jsonl.gz`` (the traced workload of every measured model, gzipped, so fitting needs no
torch.export).

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
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from tqdm import tqdm

from hwloop.devices.base import MeasureRequest, TimingConfig
from hwloop.devices.cpu import CpuDevice
from hwloop.devices.profiles import create_device
from hwloop.errors import HwloopError
from hwloop.paths import hwloop_home
from hwloop.predict.sampling import random_layer_specs, random_model_refs, unique_specs
from hwloop.store import MeasurementStore
from hwloop.sweep import run_sweep
from hwloop.workload import WorkloadWarning, extract_workload

LAYER_TIMING = TimingConfig(warmup=3, repeats=25, min_repeat_ms=1.0, max_cv=0.08, max_retries=1, timeout_s=60)
MODEL_TIMING = TimingConfig(warmup=3, repeats=40, min_repeat_ms=0.5, max_cv=0.08, max_retries=1, timeout_s=120)


def _import_jsonl_log(raw: Path, main: MeasurementStore, repeat: MeasurementStore) -> None:
    """Import the earlier recorder's JSON-lines log (``{"fingerprint", "request", "result"}`` per line) once."""
    from hwloop.devices.base import DeviceFingerprint, MeasureResult

    marker = raw / "jsonl-imported"
    logs = [(name, st) for name, st in (("layers.jsonl", main), ("models.jsonl", main), ("repeat.jsonl", repeat))
            if (raw / name).is_file()]
    if not logs or marker.exists():
        return
    for name, st in logs:
        with MeasurementStore("sqlite://") as mem:  # dedup in memory, then one transaction into the store
            for line in (raw / name).read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line is tolerated
                mem.add(DeviceFingerprint.from_dict(rec["fingerprint"]), MeasureRequest.from_dict(rec["request"]),
                        MeasureResult.from_dict(rec["result"]))
            tmp = raw / f"{name}.parquet"
            mem.export(tmp)
        print(f"imported {st.import_(tmp)} rows of {raw / name} into {st.url}")
        tmp.unlink()
    marker.write_text("the JSON-lines log here was imported into measurements.db / repeat.db\n", encoding="utf-8")


def _measure(dev: Any, reqs: list[MeasureRequest], store: MeasurementStore, timing: TimingConfig,
             what: str) -> None:
    """Measure what ``store`` lacks of ``reqs``, one request per device call, each result committed as it arrives."""
    print(f"{what}:")
    s = run_sweep(reqs, dev, store, timing, batch_size=1)
    print(f"{what}: {s.measured} measured, {s.skipped} already stored, {s.failed} failed (a failure is stored "
          f"and measured again on the next run)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="measurements/local-cpu")
    ap.add_argument("--export-only", action="store_true", help="only export the stores (no measuring)")
    ap.add_argument("--device", default="local-cpu", help="device profile name")
    ap.add_argument("--clock", default="thread", choices=("thread", "wall"),
                    help="local-cpu only: thread CPU time (default; robust on a shared machine) or wall clock")
    ap.add_argument("--random-layers", type=int, default=1500, help="layers drawn from the random grid")
    ap.add_argument("--models", type=int, default=16, help="whole models per family at batch 1")
    ap.add_argument("--models-b2", type=int, default=6, help="whole models per family at batch 2")
    ap.add_argument("--raw", default=None, help="working folder: the resumable stores (measurements.db, "
                                                "repeat.db) and the traced workloads")
    ap.add_argument("--store", default=None, help="measurement store URL (default: RAW/measurements.db)")
    ap.add_argument("--quick", action="store_true", help="a tiny data set (for a smoke test)")
    args = ap.parse_args()
    home = hwloop_home()
    tag = f"{args.device}-wallclock" if args.device == "local-cpu" and args.clock == "wall" else args.device
    raw = Path(args.raw) if args.raw else home / (f"record-{tag}" + ("-quick" if args.quick else ""))
    raw.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", WorkloadWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        if args.device == "local-cpu":
            clock = "thread_cpu" if args.clock == "thread" else "wall"
            dev: Any = CpuDevice(name="local-cpu", threads=1, clock=clock)
            layer_t, model_t = LAYER_TIMING, MODEL_TIMING
        else:
            dev = create_device(args.device)
            layer_t = model_t = dev.timing
        with MeasurementStore(args.store or raw / "measurements.db") as main, \
                MeasurementStore(raw / "repeat.db") as repeat:
            _import_jsonl_log(raw, main, repeat)
            if not args.export_only:
                record(args, dev, layer_t, model_t, raw, main, repeat)
            export(dev.fingerprint().key, main, repeat, raw, out)
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - t0:.0f} s")
    return 0


def record(args: argparse.Namespace, dev: Any, layer_t: TimingConfig, model_t: TimingConfig, raw: Path,
           main: MeasurementStore, repeat: MeasurementStore) -> None:
    """Trace the models, draw the layers and measure what the stores lack."""
    scale = 0.1 if args.quick else 1.0

    # whole models (seed 2) and their workloads
    rng2 = np.random.default_rng(2)
    models = random_model_refs(max(2, int(args.models * scale)), rng2, batch=1)
    models += random_model_refs(max(1, int(args.models_b2 * scale)), rng2, batch=2, include_default=False)
    wpath = raw / "workloads.jsonl"
    have = set()
    if wpath.exists():
        for line in wpath.read_text(encoding="utf-8").splitlines():
            try:
                have.add(json.loads(line)["model_key"])
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line is traced again
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
    bits = ((None, None), (8, 8), (4, 8), (2, 8), (4, 4)) if dev.fingerprint().backend == "asic" else ((None, None),)
    specs += random_layer_specs(int(args.random_layers * scale), rng1, bits=bits)
    specs = unique_specs(specs)
    order = rng1.permutation(len(specs))
    specs = [specs[i] for i in order]
    print(f"{len(specs)} unique layers, {len(models)} models")

    _measure(dev, [MeasureRequest.for_layer(s) for s in specs], main, layer_t, "layers")
    _measure(dev, [MeasureRequest.for_model(m, per_layer=True) for m in models], main, model_t, "models")
    rep = [MeasureRequest.for_layer(specs[i]) for i in rng1.choice(len(specs), min(300, len(specs)), replace=False)]
    _measure(dev, rep, repeat, layer_t, "repeat layers")
    rep = [MeasureRequest.for_model(models[i], per_layer=True) for i in range(0, len(models), 4)]
    _measure(dev, rep, repeat, model_t, "repeat models")


def export(device_key: str, main: MeasurementStore, repeat: MeasurementStore, raw: Path, out: Path) -> None:
    """Write the device's stored rows as store exports (``measurements.parquet``, ``repeat.parquet``, every row
    of the device, failures included, oldest first) and the traced workloads (``workloads.jsonl.gz``)."""
    import gzip
    import shutil

    from hwloop.store._frame import write_frame

    for st, target in ((main, "measurements.parquet"), (repeat, "repeat.parquet")):
        n = write_frame(st.to_dataframe(device_key, ok_only=False), out / target)
        print(f"wrote {n} rows to {out / target}")

    if not (raw / "workloads.jsonl").is_file():
        print(f"no traced workloads in {raw}: {out / 'workloads.jsonl.gz'} not written")
        return
    with open(raw / "workloads.jsonl", "rb") as src, open(out / "workloads.jsonl.gz", "wb") as f, \
            gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    sys.exit(main())
