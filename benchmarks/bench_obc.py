"""OBC on CIFAR-10 ResNet-20, post-training (no retraining): OBQ vs round-to-nearest, latency targets vs controls.

Run (nice, one thread; the database is cached in ``--out``, finished phases are kept in ``results.json`` so a
rerun resumes)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc.py \
        --checkpoint ../shared/checkpoints/resnet20_cifar10_e35.safetensors --out search/results/obc \
        > /tmp/bench_obc.log 2>&1

Phases:

* ``quant`` — every conv/linear but the first conv and the classifier quantized at 4/3/2 bits (symmetric
  per-channel grid, MSE clipping), OBQ vs round-to-nearest on the *same* grid; test accuracy without and with
  batch-norm re-estimation on the calibration images; the summed layer output errors.
* ``latency`` — the ``obc`` method (10 channel levels per coupled group × {float, 8, 4} bits per layer, error =
  calibration loss of 256 images, costs from the shared layer cost table measured on the device, whole-model
  corrections measured on the device) for each target, measured on the device; the controls of the evidence
  harness (:mod:`hwloop.search.controls`: uniform width scaling and global magnitude pruning, each bisected
  onto OBC's *measured* latency ratio, batch-norm statistics re-estimated on the same calibration images).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONVERGED = ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"
E35 = ROOT.parent / "shared/checkpoints/resnet20_cifar10_e35.safetensors"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, k: str) -> Any:
        return self.doc.get(k)

    def put(self, k: str, v: Any) -> None:
        self.doc[k] = v
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=float))
        os.replace(tmp, self.path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="ResNet-20 safetensors state_dict (default: the converged "
                    "checkpoint if it exists, else ../shared/checkpoints/resnet20_cifar10_e35.safetensors)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--out", default=str(ROOT / "search/results/obc"))
    ap.add_argument("--devices", default="asic-tpu32")
    ap.add_argument("--targets", default="0.7,0.6,0.5")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--eval-limit", type=int, default=10000, help="test images scored (see --eval-subset)")
    ap.add_argument("--eval-subset", default="random", choices=["random", "first"], help="which --eval-limit test "
                    "images (and --val-limit held-out images) are scored: a seeded random subset (test seed 2, held-out "
                    "seed 1), or the first N (before 2026-12-07; both splits come sorted by class, so the first 1,000 "
                    "test images are all airplanes)")
    ap.add_argument("--phases", default="quant,latency")
    ap.add_argument("--ladder-bits", default="4", help="OBQ bit-widths per layer in the latency database "
                    "(besides float; 8 bits costs as float on asic-tpu32, whose default is int8)")
    ap.add_argument("--error-images", type=int, default=256, help="calibration images a level's loss is measured on")
    ap.add_argument("--bn-variants", action="store_true", help="quant phase: also score with BN re-estimation")
    ap.add_argument("--bisect-steps", type=int, default=8)
    ap.add_argument("--bn-mode", default="reset", help="batch-norm re-estimation of OBC and the controls: reset "
                    "(cumulative average over the calibration images) or blend (momentum from the trained statistics)")
    ap.add_argument("--bn-data", default="train", help="images of the batch-norm re-estimation: train (as many "
                    "images from the training loader with its crop + flip augmentation) or calib (the calibration images)")
    ap.add_argument("--holdout", type=int, default=0, help="calibration from the training images less this many "
                    "held out (seed 0, the converged checkpoint's validation split), which are scored too")
    ap.add_argument("--val-limit", type=int, default=2500, help="held-out images scored (with --holdout)")
    ap.add_argument("--dp", default="additive", choices=["additive", "joint"], help="the DP's cost (obc key dp)")
    ap.add_argument("--joint-source", default="measure", choices=["measure", "predictor"],
                    help="dp joint: the per-op costs measured live or from the device's shipped predictor")
    ap.add_argument("--joint-predictor", default=None,
                    help="dp joint with --joint-source predictor: this predictor file instead of the device's shipped one")
    ap.add_argument("--calibrate", type=int, default=0, help="dp joint: whole-model probes measured before the DP "
                    "to fit the dense model's fixed share (obc key calibrate; 0: none)")
    ap.add_argument("--calibrate-by", default="whole", choices=["whole", "resolution", "dp"], help="with --calibrate: "
                    "'whole' one fixed share; 'resolution' one scale per feature-map resolution, with one deep-cut "
                    "probe per resolution added; 'dp' one fixed share fitted on the DP's own answers at the uniform probes' op-sum "
                    "budgets (obc key calibrate_by)")
    ap.add_argument("--rerank", type=int, default=0, help="dp joint: stitch this many best answers, keep the lowest "
                    "calibration loss")
    ap.add_argument("--margin", type=float, default=0.0, help="the DP's first answer aims at target x (1 - margin) "
                    "(obc key margin; for a noisy cost such as the CPU's)")
    ap.add_argument("--corrections", type=int, default=8, help="DP re-solves against the whole model after its "
                    "first answer (obc key corrections; 0: the first answer is the result)")
    ap.add_argument("--database", default=None, help="a level database file to load (default: "
                    "OUT/database-<kinds>-<calib>.safetensors, built there when missing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.compress.extract import get_module
    from hwloop.data import make_loaders
    from hwloop.methods.base import MethodContext
    from hwloop.methods.measure import measure_candidates
    from hwloop.methods.obc.database import load_database, save_database
    from hwloop.methods.obc.exactobs import collect_hessians, mse_scales, obq_quantize, quantize_rtn
    from hwloop.methods.obc.method import ObcConfig, ObcMethod
    from hwloop.methods.obc.structured import reestimate_bn
    from hwloop.models import ModelRef
    from hwloop.search.controls import bisect_measured, channel_scores, magnitude_config, uniform_config
    from hwloop.search.costtable import shipped_predictor
    from hwloop.search.latency import select_latency_model
    from hwloop.search.report import compare_compressed
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import evaluate

    def obc_interleaves(meth: Any, ctx: Any) -> bool:
        return bool(meth.interleaved(ctx))

    ckpt = Path(args.checkpoint) if args.checkpoint else (CONVERGED if CONVERGED.exists() else E35)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out / "results.json")
    if res.get("checkpoint") not in (None, str(ckpt)):
        say(f"results.json was made from {res.get('checkpoint')}; start a new --out for {ckpt}")
        return 2
    res.put("checkpoint", str(ckpt))
    say(f"checkpoint {ckpt}")
    t_all = time.perf_counter()
    ref = ModelRef("resnet20")
    model = ref.build()
    model.load_state_dict(load_file(str(ckpt)))
    model.eval()
    train, val = make_loaders("cifar10", 128, root=args.data_root, augment=False, seed=0, holdout=args.holdout)
    train_aug, _ = make_loaders("cifar10", 128, root=args.data_root, augment=True, seed=0, holdout=args.holdout)
    _, test = make_loaders("cifar10", 500, root=args.data_root, augment=False, seed=0)
    calib: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in train:
        calib.append((x, y))
        if sum(int(b.shape[0]) for b, _ in calib) >= args.calib:
            break
    n_calib = sum(int(b.shape[0]) for b, _ in calib)
    xs = [x for x, _ in calib]

    if args.eval_subset == "random":
        from hwloop.search.train import random_subset

        test, val = random_subset(test, args.eval_limit, 2, batch_size=500), random_subset(val, args.val_limit, 1,
                                                                                         batch_size=500)

    def acc(net: torch.nn.Module) -> float:
        net.eval()
        return evaluate(net, test, args.eval_limit)

    def vacc(net: torch.nn.Module) -> float | None:
        if not args.holdout:
            return None
        net.eval()
        return evaluate(net, val, args.val_limit)

    res.put("eval_subset", args.eval_subset)
    res.put("bn_mode", args.bn_mode)
    res.put("bn_data", args.bn_data)
    res.put("holdout", args.holdout)
    if res.get("dense") is None:
        res.put("dense", {"test_accuracy": acc(model), "eval_images": args.eval_limit, "val_accuracy": vacc(model)})
    dense = res.get("dense")["test_accuracy"]
    say(f"dense {dense:.2f}% ({args.eval_limit} test images), {n_calib} calibration images")
    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
    phases = set(args.phases.split(","))

    # ------------------------------------------------------------------ OBQ vs RTN
    if "quant" in phases and res.get("quant") is None:
        layers = list(space.bit_layers)
        t0 = time.perf_counter()
        c0 = time.process_time()
        H = collect_hessians(model, layers, xs)
        t_h = time.perf_counter() - t0
        c_h = time.process_time() - c0
        rows = []
        for b in [int(v) for v in args.bits.split(",")]:
            row: dict[str, Any] = {"bits": b, "layers": len(layers)}
            for kind in ("obq", "rtn"):
                net = copy.deepcopy(model)
                err = 0.0
                t1 = time.perf_counter()
                c1 = time.process_time()
                for n in layers:
                    w = get_module(net, n).weight
                    W = w.detach().reshape(w.shape[0], -1)
                    s = mse_scales(W.double(), b)
                    if kind == "obq":
                        q, e = obq_quantize(w, H[n], b, scale=s, dtype=torch.float32)
                    else:
                        q = quantize_rtn(W.double(), s, b).reshape(w.shape).float()
                        d = (W.double() - q.reshape(W.shape).double())
                        e = float(torch.einsum("ri,ij,rj->", d, H[n], d) / 2)
                    err += e
                    with torch.no_grad():
                        w.copy_(q)
                row[f"{kind}_seconds"] = time.perf_counter() - t1
                row[f"{kind}_cpu_seconds"] = time.process_time() - c1
                row[f"{kind}_layer_error"] = err
                row[f"{kind}_acc"] = acc(net)
                if args.bn_variants:
                    reestimate_bn(net, xs, mode=args.bn_mode)
                    row[f"{kind}_acc_bn"] = acc(net)
                say(f"w{b} {kind}: {row[f'{kind}_acc']:.2f}% ({row.get(f'{kind}_acc_bn')} with BN re-estimation), "
                    f"summed layer output error {err:.4g}, {row[f'{kind}_seconds']:.1f} s "
                    f"({row[f'{kind}_cpu_seconds']:.1f} s CPU)")
                res.put("quant_partial", rows + [row])
            rows.append(row)
        res.put("quant", {"hessian_seconds": t_h, "hessian_cpu_seconds": c_h, "rows": rows, "first_last_float": True,
                          "grid": "symmetric per output channel, qmax = 2^(b-1)-1, MSE-clipped scale (norm 2.4)"})

    # ------------------------------------------------------------------ latency targets
    targets = [float(t) for t in args.targets.split(",")]
    for device in args.devices.split(","):
        key = f"latency:{device}"
        if "latency" not in phases or res.get(key) is not None:
            continue
        t0 = time.perf_counter()
        pred = shipped_predictor(device)
        lat = select_latency_model(space, predictor_path=str(pred) if pred else None, device=device, log=say)
        c0 = time.process_time()
        kinds = ["channels", "bits"] if not device.startswith("local-cpu") else ["channels"]   # no low-bit CPU kernels
        cfg = ObcConfig(calib=args.calib, kinds=kinds, targets=targets, cost_source="table", check="device",
                        bits=[int(b) for b in args.ladder_bits.split(",")], error_images=args.error_images,
                        bn_mode=args.bn_mode, bn_data=args.bn_data, dp=args.dp, joint_source=args.joint_source, joint_predictor=args.joint_predictor,
                        calibrate=args.calibrate, calibrate_by=args.calibrate_by, rerank=args.rerank, corrections=args.corrections, margin=args.margin)
        meth = ObcMethod(cfg)
        ctx = MethodContext(model=model, ref=ref, space=space, train=train, eval_fn=acc, latency=lat,
                            target=None, device=device, seed=0, base_accuracy=dense, log=say, progress=True)
        dbp = Path(args.database) if args.database else out / f"database-{'-'.join(kinds)}-{args.calib}.safetensors"
        if dbp.exists():
            db = load_database(str(dbp))
            say(f"database loaded from {dbp} (built in {db.seconds})")
        else:
            db, _ = meth.database(ctx, copy.deepcopy(model))
            db.seconds["cpu"] = time.process_time() - c0
            save_database(db, str(dbp))
            say(f"database built: {db.seconds}")
        ctx = dataclasses.replace(ctx, train=train_aug)   # the database from the plain calibration images above;
        xs_bn = meth.bn_batches(ctx, calib)                # batch norm from the training loader (augmented) or them
        result = meth.run_with(ctx, copy.deepcopy(model), db, calib, t0=t0)
        t_method = time.perf_counter() - t0
        cpu_method = time.process_time() - c0
        measure_candidates(result, ctx)
        scores = channel_scores(space)
        rows = []
        for c in result.candidates:
            row = {"target": c.target, "accuracy": c.accuracy, "val_accuracy": vacc(c.model),
                   "measured_ratio": c.measured_ratio,
                   "measured_ms": c.measured_ms, "original_measured_ms": c.original_measured_ms,
                   "predicted_ratio": c.predicted_ratio, "search_ratio": c.search_ratio, "status": c.status,
                   "status_reason": c.status_reason, "sizes": c.sizes, "extra": c.extra,
                   "plan": c.plan.to_dict(), "seconds": c.seconds}
            if ctx.device is not None and obc_interleaves(meth, ctx):   # the CPU: the interleaved ratio, as the DP checked
                cmp = compare_compressed(device, c.model, c.plan, model, example=ref.example_input())
                row["interleaved"] = {"ratio": cmp["ratio"], "ratio_ci": cmp["ratio_ci"], "unstable": cmp["unstable"],
                                      "load": cmp["load"], "latency_ms": cmp["latency_ms"],
                                      "original_ms": cmp["original_ms"]}
                say(f"{device} target {c.target}: interleaved ratio {cmp['ratio']:.3f} "
                    f"(95% {cmp['ratio_ci'][0]:.3f}-{cmp['ratio_ci'][1]:.3f}), load {cmp['load']}")
            goal = float(row["interleaved"]["ratio"] if "interleaved" in row else (c.measured_ratio or 0.0))
            row["goal_ratio"] = goal
            for ctl in ("uniform", "magnitude"):
                make = (lambda x: uniform_config(space, x)) if ctl == "uniform" else \
                    (lambda x: magnitude_config(space, x, scores))
                seen: dict[str, float] = {}

                def measure(x: float, make: Any = make, seen: dict[str, float] = seen) -> float:
                    plan = space.plan_from_config(make(x))
                    k = repr(sorted(plan.widths.items()))
                    if k not in seen:
                        net, plan = space.compress(make(x))
                        seen[k] = float(compare_compressed(device, net, plan, model, example=ref.example_input(),
                                                           rounds=1)["ratio"])
                    return seen[k]

                x, r, trace = bisect_measured(measure, goal, steps=args.bisect_steps, tol=0.02)
                net, _ = space.compress(make(x))
                reestimate_bn(net, xs_bn, mode=args.bn_mode)
                row[ctl] = {"knob": x, "measured_ratio": r, "accuracy": acc(net), "val_accuracy": vacc(net),
                            "bisect": trace}
                say(f"{device} target {c.target}: {ctl} at {r:.3f}x: {row[ctl]['accuracy']:.2f}%")
            say(f"{device} target {c.target}: OBC {c.accuracy:.2f}% at measured {goal:.3f}x "
                f"({goal / c.target - 1:+.1%} vs target), DP first answer {c.extra['dp_first_whole_ratio']:.3f}x "
                f"(additive {c.extra['dp_first_additive_ratio']:.3f}x, DP cost {c.extra['dp_first_cost_ratio']:.3f}x), "
                f"{c.status}")
            rows.append(row)
        res.put(key, {"rows": rows, "method_seconds": t_method, "method_cpu_seconds_this_run": cpu_method, "config": cfg.to_dict(),
                      "database_seconds": db.seconds, "units": len(db.units),
                      "ladder": f"{len(cfg.channel_levels) + 1} channel levels per group x "
                                f"{['float'] + [f'w{b}' for b in cfg.bits] if 'bits' in kinds else ['float']}"})
    res.put("wall_s_this_invocation", time.perf_counter() - t_all)
    say(f"done in {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
