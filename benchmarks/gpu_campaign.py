"""One-command GPU campaign: check every CUDA code path, then record graph-mode data into a folder.

Needs only Python, torch and numpy (plus this checkout): no network, no other package, no tqdm.
Run it first thing on a machine with an NVIDIA GPU::

    python benchmarks/gpu_campaign.py --out campaign-h100        # <= 8 minutes on one H100
    python benchmarks/gpu_campaign.py --out campaign-h100        # again: resumes, skips what is done
    python benchmarks/gpu_campaign.py --out /tmp/dry --dry-run   # CPU: the same pipeline, tiny, eager

What it does, in order (each phase resumes; ``--budget-s`` stops starting new requests in time):

1. **checks** (``checks.json``): the ``cuda`` backend in every code path — ``layer``, ``model`` and
   ``model_layers`` requests in ``eager`` and ``cuda_graph`` mode (graph-mode per-layer times: each
   layer captured alone, ``per_layer_mode == "cuda_graph"``), and an out-of-memory request that must
   come back as data (``error`` "out of memory", ``extra.oom``) with the next request still fine.
2. **nets** (``models.jsonl``): random-width whole nets in both modes, fp32 and fp16 — ResNet-18 at
   224×224 batch 1 and 32; ResNet-20, VGG-16 (the H100 data's ``vgg16_gap``) and MobileNetV2 at 32×32
   batch 1 and 256. The first ``--per-layer-nets`` nets of every graph-mode group are ``model_layers``
   requests: graph-mode per-layer data of whole nets.
3. **staircases** (``layers.jsonl``): two conv channel staircases (every 4th output width 4..512) of the
   H100 data set, now in ``cuda_graph`` mode, fp32 and fp16.

Every line of ``layers.jsonl``/``models.jsonl`` is ``{"fingerprint", "request", "result"}`` — the form
``hwloop.predict.load_training_data(DIR, mode=...)`` reads — written and flushed as each result
arrives. ``summary.json`` counts what is done and what the budget left out; ``plan.json`` lists the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np

from hwloop.devices.base import MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import HwloopError
from hwloop.gpu_models import h100_random_widths
from hwloop.models import ModelRef, random_width_kwargs
from hwloop.workload import LayerSpec

#: (arch, input resolution, batches) of the whole nets
NET_GROUPS = (("resnet18", 224, (1, 32)), ("resnet20", 32, (1, 256)), ("vgg16", 32, (1, 256)),
              ("mobilenetv2", 32, (1, 256)))
DTYPES = ("float32", "float16")
MODES = ("cuda_graph", "eager")
#: (in channels, kernel, resolution, batch) of the staircases (two of the H100 data's four)
STAIRCASES = ((256, 3, 14, 1), (128, 3, 28, 32))


def timing_for(mode: str, dry: bool) -> TimingConfig:
    """The campaign's timing: 7 samples of >= 2 ms each (dry run: 3 of >= 0.2 ms)."""
    if dry:
        return TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, mode="eager", max_retries=0, timeout_s=60)
    return TimingConfig(warmup=5, repeats=7, min_repeat_ms=2.0, mode=mode, max_retries=1, timeout_s=60)


def net_ref(arch: str, res: int, batch: int, dtype: str, rng: np.random.Generator, dry: bool) -> ModelRef:
    if arch == "mobilenetv2":
        kw = random_width_kwargs("mobilenetv2", rng)
        if dry:
            kw["width_mult"] = 0.35
        return ModelRef("mobilenetv2", kw, input_shape=(3, res, res), batch=batch, dtype=dtype)
    widths = h100_random_widths(arch, rng)
    if dry:
        widths = [max(2, w // 8) for w in widths]
    if arch == "vgg16":
        return ModelRef("vgg16_gap", {"widths": widths}, input_shape=(3, res, res), batch=batch, dtype=dtype)
    kw: dict[str, Any] = {"mids": widths}
    if arch == "resnet18" and dry:
        kw["widths"] = [8, 16, 32, 64]
    return ModelRef(arch, kw, input_shape=(3, res, res), batch=batch, dtype=dtype)


def plan(nets: int, per_layer_nets: int, dry: bool, seed: int) -> list[tuple[str, MeasureRequest, str]]:
    """``(phase, request, mode)`` in the order they run: nets interleaved across groups, then staircases."""
    out: list[tuple[str, MeasureRequest, str]] = []
    dtypes = DTYPES[:1] if dry else DTYPES
    groups = []
    for arch, res, batches in NET_GROUPS:
        for b in batches:
            for dt in dtypes:
                groups.append((arch, 64 if (dry and arch == "resnet18") else res, 2 if (dry and b > 1) else b, dt))
    refs: dict[tuple, list[ModelRef]] = {}
    for gi, g in enumerate(groups):  # one random stream per group, so a group's nets do not depend on the others
        rng = np.random.default_rng([seed, gi])
        refs[g] = [net_ref(g[0], g[1], g[2], g[3], rng, dry) for _ in range(nets)]
    for i in range(nets):
        for mode in MODES:
            for g in groups:
                req = MeasureRequest.for_model(refs[g][i], per_layer=(mode == "cuda_graph" and i < per_layer_nets))
                out.append(("nets", req, mode))
    couts = (8, 60, 64) if dry else tuple(range(4, 513, 4))
    for dt in dtypes:
        for cin, k, hw, b in STAIRCASES:
            for c in couts:
                spec = LayerSpec("conv2d", (b if not dry else 1, cin if not dry else 16, hw, hw), out_channels=c,
                                 kernel=k, padding=k // 2, dtype=dt)
                out.append(("staircases", MeasureRequest.for_layer(spec), "cuda_graph"))
    return out


def _jsonl_keys(path: Path) -> set[tuple[str, str, str]]:
    done: set[tuple[str, str, str]] = set()
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                done.add((rec["fingerprint"]["key"], rec["result"]["request_key"], rec["result"]["timing"]["mode"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from an interrupted run
    return done


def _write(path: Path, fp: Any, req: MeasureRequest, res: MeasureResult) -> None:
    line = json.dumps({"fingerprint": fp.to_dict(), "request": req.to_dict(), "result": res.to_dict()},
                      default=float, allow_nan=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def checks(dev: Any, dry: bool) -> list[dict[str, Any]]:
    """Every CUDA code path once, each recorded as passed / failed / skipped with a detail line."""
    out: list[dict[str, Any]] = []
    conv = LayerSpec("conv2d", (8, 64, 32, 32), out_channels=64, kernel=3, padding=1, dtype="float16")
    ref = ModelRef("resnet20", {"width_mult": 0.5}, batch=4)
    convs = {n for n, m in ref.build().named_modules() if type(m).__name__ == "Conv2d"}

    def run(name: str, req: MeasureRequest, mode: str, test: Any) -> None:
        if dry and mode == "cuda_graph":
            out.append({"check": name, "status": "skipped", "detail": "dry run: no GPU"})
            return
        t0 = time.perf_counter()
        try:
            (res,) = dev.measure([req], timing_for(mode, dry))
            detail = test(res)
            status = "passed" if detail is None else "failed"
        except Exception as e:  # noqa: BLE001 - a check that crashes is a failed check, the campaign goes on
            status, detail = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out.append({"check": name, "status": status, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)})
        print(f"check {name}: {status}" + (f" ({detail})" if detail else ""), file=sys.stderr, flush=True)

    def ok(res: MeasureResult) -> str | None:
        return None if res.ok and 0 < res.latency_ms < 1e4 else f"error={res.error!r} latency={res.latency_ms}"

    def layers_ok(mode: str) -> Any:
        def test(res: MeasureResult) -> str | None:
            if not res.ok:
                return f"error={res.error!r}"
            if res.extra.get("per_layer_mode") != mode and not dry:
                return f"per_layer_mode={res.extra.get('per_layer_mode')!r}, expected {mode!r}"
            missing = convs - set(res.per_layer_ms)
            bad = [n for n, v in res.per_layer_ms.items() if not v > 0]
            return f"convs without a time: {sorted(missing)[:3]}, non-positive: {bad[:3]}" if missing or bad else None
        return test

    for mode in ("eager", "cuda_graph"):
        run(f"layer/{mode}", MeasureRequest.for_layer(conv if not dry else conv.replace(dtype="float32")), mode, ok)
        run(f"model/{mode}", MeasureRequest.for_model(ref), mode, ok)
        run(f"model_layers/{mode}", MeasureRequest.for_model(ref, per_layer=True), mode, layers_ok(mode))
    if dry:
        out.append({"check": "oom_as_data", "status": "skipped", "detail": "dry run: no GPU"})
    else:
        huge = LayerSpec("conv2d", (1, 1, 4096, 4096), out_channels=65536, kernel=3, padding=1)  # ~4 TB output
        t0 = time.perf_counter()
        try:
            reqs = [MeasureRequest.for_layer(huge), MeasureRequest.for_layer(conv)]
            res = dev.measure(reqs, timing_for("eager", dry))
            good = (res[0].error or "").startswith("out of memory") and res[0].extra.get("oom") is True and res[1].ok
            detail = None if good else f"first={res[0].error!r} oom={res[0].extra.get('oom')!r} next_ok={res[1].ok}"
        except Exception as e:  # noqa: BLE001
            good, detail = False, f"{type(e).__name__}: {e}"
        out.append({"check": "oom_as_data", "status": "passed" if good else "failed", "detail": detail,
                    "seconds": round(time.perf_counter() - t0, 2)})
        print(f"check oom_as_data: {'passed' if good else 'failed'}", file=sys.stderr, flush=True)
    return out


def _device(dry: bool) -> Any:
    if dry:
        from hwloop.devices.cpu import CpuDevice

        return CpuDevice("dry-run-cpu", threads=1)
    from hwloop.devices.cuda import CudaDevice

    return CudaDevice("local-gpu")


def run(out: Path, *, dry: bool, budget_s: float, nets: int, per_layer_nets: int, seed: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(dry)
    fp = dev.fingerprint()
    full = plan(nets, per_layer_nets, dry, seed)
    (out / "plan.json").write_text(json.dumps([{"phase": ph, "mode": m, "kind": r.kind, "key": r.key,
                                                "model": r.model.to_dict() if r.model else None,
                                                "layer": r.layer.to_dict() if r.layer else None}
                                               for ph, r, m in full], indent=0) + "\n", encoding="utf-8")
    chk_path = out / "checks.json"
    prev = json.loads(chk_path.read_text()) if chk_path.exists() else None
    if prev and prev.get("fingerprint_key") == fp.key and all(c["status"] != "failed" for c in prev["checks"]):
        chk = prev["checks"]
    else:
        chk = checks(dev, dry)
        chk_path.write_text(json.dumps({"fingerprint_key": fp.key, "checks": chk}, indent=1) + "\n", encoding="utf-8")
    files = {"nets": out / "models.jsonl", "staircases": out / "layers.jsonl"}
    done = _jsonl_keys(files["nets"]) | _jsonl_keys(files["staircases"])
    todo = [(ph, r, m) for ph, r, m in full if (fp.key, r.key, m if not dry else "eager") not in done]
    counts = {"planned": len(full), "already_done": len(full) - len(todo), "measured": 0, "errors": 0,
              "left_by_budget": 0}
    for i, (ph, req, mode) in enumerate(_progress(todo)):
        if time.perf_counter() - t_start > budget_s:
            counts["left_by_budget"] = len(todo) - i
            print(f"budget of {budget_s:.0f} s reached: {len(todo) - i} request(s) left for the next run",
                  file=sys.stderr, flush=True)
            break
        (res,) = dev.measure([req], timing_for(mode, dry))
        if dry:
            res = dataclasses.replace(res, extra={**res.extra, "planned_mode": mode})
        _write(files[ph], fp, req, res)
        counts["measured"] += 1
        counts["errors"] += 0 if res.ok else 1
    dev.close()
    summary = {"dry_run": dry, "device": fp.to_dict(), "budget_s": budget_s,
               "seconds": round(time.perf_counter() - t_start, 1),
               "checks": {c["check"]: c["status"] for c in chk}, **counts,
               "complete": counts["left_by_budget"] == 0}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def _progress(items: list) -> Iterator:
    """Yield ``items`` with a progress line on stderr every 5% (no tqdm on the GPU machine)."""
    n, t0, step = len(items), time.perf_counter(), max(1, len(items) // 20)
    for i, x in enumerate(items):
        if i % step == 0 and n:
            print(f"[{i}/{n}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        yield x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created; an existing one is resumed)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, eager, tiny nets: test the pipeline without a GPU")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new requests after this many seconds")
    ap.add_argument("--nets", type=int, default=None, help="random nets per group (default 6; dry run 1)")
    ap.add_argument("--per-layer-nets", type=int, default=1, help="graph-mode nets per group with per-layer data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    nets = args.nets if args.nets is not None else (1 if args.dry_run else 6)
    if nets < 1 or args.per_layer_nets < 0 or args.budget_s <= 0:
        print(f"error: --nets={nets} must be >= 1, --per-layer-nets >= 0, --budget-s > 0", file=sys.stderr)
        return 2
    try:
        summary = run(Path(args.out), dry=args.dry_run, budget_s=args.budget_s, nets=nets,
                      per_layer_nets=args.per_layer_nets, seed=args.seed)
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "device"}, indent=1))
    return 0 if all(s != "failed" for s in summary["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
