"""OBC on asic-tpu32: the additive DP against the DP on the whole model's op sum (``dp = "joint"``), same database.

Why the additive DP is far off at small targets, op by op: for each target the additive DP's first answer is
costed op by op (hwloop.methods.obc.joint.JointCost.breakdown: the saving each op really gives against the saving
the additive model credits it with), then both DPs run (first answer, corrections, stitch, batch-norm
re-estimation on 1,024 augmented training images, accuracy on 2,000 test images and 2,000 held-out training
images, each a seeded random subset: the loaders give both splits sorted by class, so "the first N" is a few
classes), and the stitched model's calibration loss is set against the DP's summed level errors
(how additive the *error* model is). No controls here (the harness spec search/bench-methods-obc-cifar10-
resnet20.toml runs them); no retraining.

Run (the database of ``benchmarks/bench_obc.py --holdout 5000`` is reused: same checkpoint, same 1,024 un-augmented
calibration images)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc_joint.py \
        --database search/results/obc/bn_train_asic/database-channels-bits-1024.safetensors \
        --out search/results/obc/joint_asic > search/results/obc/joint_asic/run.log 2>&1
"""

from __future__ import annotations

import argparse
import copy
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


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--database", required=True, help="an OBC database file built from --checkpoint and the first "
                    "--calib un-augmented training images (holdout 5000, seed 0), e.g. bench_obc.py's")
    ap.add_argument("--out", default=str(ROOT / "search/results/obc/joint_asic"))
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--targets", default="0.5,0.6,0.7")
    ap.add_argument("--dps", default="additive,joint,joint-rerank8", help="DP variants: additive, joint, "
                    "joint-rerankK (the K best joint answers stitched, the lowest calibration loss taken)")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--test-images", type=int, default=2000, help="a random subset of the test set (seed 2)")
    ap.add_argument("--val-images", type=int, default=2000, help="a random subset of the 5,000 held-out training "
                    "images (seed 1: the evidence harness's validation subset at val_limit 2000)")
    ap.add_argument("--loss-images", type=int, default=128, help="calibration images of the stitched model's loss")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.data import make_loaders
    from hwloop.methods.base import MethodContext
    from hwloop.methods.measure import measure_candidates
    from hwloop.methods.obc.database import _loss, load_database
    from hwloop.methods.obc.method import ObcConfig, ObcMethod
    from hwloop.models import ModelRef
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.costtable import shipped_predictor
    from hwloop.search.latency import select_latency_model
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resp = out / "results.json"
    doc: dict[str, Any] = json.loads(resp.read_text()) if resp.exists() else {}

    def put(k: str, v: Any) -> None:
        doc[k] = v
        tmp = resp.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float))
        os.replace(tmp, resp)

    put("checkpoint", args.checkpoint)
    put("database", args.database)
    ref = ModelRef("resnet20")
    model = ref.build()
    model.load_state_dict(load_file(args.checkpoint))
    model.eval()
    train, val_all = make_loaders("cifar10", 128, root=args.data_root, augment=False, seed=0, holdout=5000)
    _, test_all = make_loaders("cifar10", 500, root=args.data_root, augment=False, seed=0)

    from hwloop.search.train import random_subset

    test = random_subset(test_all, args.test_images, 2, batch_size=500)
    val = random_subset(val_all, args.val_images, 1, batch_size=500)
    calib: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in train:
        calib.append((x, y))
        if sum(int(b.shape[0]) for b, _ in calib) >= args.calib:
            break
    loss_batches = []
    left = args.loss_images
    for x, y in calib:
        if left <= 0:
            break
        loss_batches.append((x[:left], y[:left]))
        left -= int(x.shape[0])

    def acc(net: torch.nn.Module) -> float:
        return evaluate(net, test)

    def vacc(net: torch.nn.Module) -> float:
        return evaluate(net, val)

    if "dense" not in doc:
        put("dense", {"test": acc(model), "val": vacc(model), "calib_loss": _loss(model, loss_batches)})
    dense = doc["dense"]
    say(f"dense: test {dense['test']:.2f}%, validation {dense['val']:.2f}%")
    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
    pred = shipped_predictor(args.device)
    lat = select_latency_model(space, predictor_path=str(pred) if pred else None, device=args.device, log=say)
    db = load_database(args.database)
    say(f"database {args.database}: {len(db.units)} units (built in {db.seconds})")
    targets = [float(t) for t in args.targets.split(",")]
    joint = None
    for dp in args.dps.split(","):
        key = f"dp:{dp}"
        if key in doc:
            continue
        kind, _, rr = dp.partition("-rerank")
        cfg = ObcConfig(calib=args.calib, kinds=["channels", "bits"], bits=[4], error_images=128,
                        cost_source="table", check="device", bn_data="train", targets=targets, dp=kind,
                        rerank=int(rr or 0))
        meth = ObcMethod(cfg)
        train_aug, _ = make_loaders("cifar10", 128, root=args.data_root, augment=True, seed=0, holdout=5000)
        ctx = MethodContext(model=model, ref=ref, space=space, train=train_aug, eval_fn=acc, latency=lat,
                            target=None, device=args.device, seed=0, base_accuracy=dense["test"], log=say,
                            progress=False, ledger=ComputeLedger())
        if joint is None:
            joint, _ = meth.joint_cost(ctx, db)
        torch.manual_seed(0)              # the same batch-norm images for both DPs
        meth.bn_batches(ctx, calib)
        t0 = time.perf_counter()
        c0 = time.process_time()
        result = meth.run_with(ctx, copy.deepcopy(model), db, calib)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        measure_candidates(result, ctx)
        rows = []
        for c in result.candidates:
            steps = c.extra["dp_steps"]
            choice = steps[c.extra["dp_chosen"]]["choice"]
            row: dict[str, Any] = {
                "target": c.target, "test": c.accuracy, "val": vacc(c.model), "measured_ratio": c.measured_ratio,
                "status": c.status, "status_reason": c.status_reason, "search_ratio": c.search_ratio,
                "dp_first_cost_ratio": c.extra["dp_first_cost_ratio"],
                "dp_first_additive_ratio": c.extra["dp_first_additive_ratio"],
                "dp_first_whole_ratio": c.extra["dp_first_whole_ratio"], "dp_chosen": c.extra["dp_chosen"],
                "dp_steps": steps, "channels_kept": sum(int(v["chosen"]) for k, v in c.sizes.items()
                                                        if k.startswith("ch:")),
                "w4_layers": sum(1 for v in c.extra["layers"].values() if v == "w4"),
                "calib_loss_increase": _loss(c.model, loss_batches) - dense["calib_loss"],
                "sum_level_errors": sum(u.errors[li] for u, li in zip(db.units, choice)),
                "sizes": c.sizes, "layers": c.extra["layers"], "seconds": c.seconds}
            assert joint is not None
            for what, ch in (("first", steps[0]["choice"]), ("final", choice)):   # op by op: real vs credited
                row[f"{what}_breakdown"] = [{"term": r["term"], "units": [db.units[d].name for d in r["units"]],
                                             **{k: r[k] / joint.full() for k in ("full", "whole", "saving",
                                                                                  "additive_saving")}}
                                            for r in joint.breakdown(ch)]
                row[f"{what}_op_sum_ratio"] = joint.total(ch) / joint.full()
                row[f"{what}_additive_op_ratio"] = joint.additive_total(ch) / joint.full()
            rows.append(row)
            say(f"{dp} target {c.target}: test {row['test']:.2f}%, validation {row['val']:.2f}%, measured "
                f"{c.measured_ratio:.4f}x, {c.status}; first answer: DP cost {row['dp_first_cost_ratio']:.4f}x, "
                f"additive {row['dp_first_additive_ratio']:.4f}x, whole {row['dp_first_whole_ratio']:.4f}x; "
                f"{row['dp_chosen']} corrections kept; loss +{row['calib_loss_increase']:.3f} vs summed level "
                f"errors {row['sum_level_errors']:.3f}; {row['channels_kept']} channels, {row['w4_layers']} w4")
        put(key, {"rows": rows, "wall_s": wall, "cpu_s": cpu, "config": cfg.to_dict()})
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
