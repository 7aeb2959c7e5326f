"""LCS benchmark: a structured (width) family of ResNet-20 (instance norm) on CIFAR-10, measured on devices.

Phases (each writes its file under ``--out`` and is skipped when that file exists: rerun the same command to
resume after an interruption):

1. ``family``  — train the width line (α ∈ [0,1] ↔ width 0.25..1) from scratch: ``family/`` (safetensors + JSON);
2. ``single_<w>`` — a model trained alone at width 0.25, 0.5, 1.0 for as many epochs: ``single_<w>.safetensors``;
3. ``eval``    — accuracy of the family members on the α grid, of the single models, and of the dense BN
   checkpoint (``--checkpoint``, the reference for the shared latency targets);
4. ``latency`` — α → latency on each device: live measurement of every member and the shared layer cost table
   (``source="table"``); the dense BN checkpoint measured the same way; α chosen for 0.5/0.6/0.7 of it;
5. ``trace``   — the run-time controller on a changing budget trace per device (misses by measured latency,
   regret against the best α by measured latency), with a PNG each.

Data: ``--holdout N`` (CIFAR-10) splits as the evidence harness does (``hwloop bench methods``): ``N`` training
images held out by ``--split-seed``, the training subset (``--train-limit``) drawn at random from the rest by
``--split-seed``, the validation subset (``--val-limit``) from the held-out images by ``--split-seed + 1``, the
test subset (``--test-limit``, default all 10,000) from the test set by ``--split-seed + 2`` — all at random
(the stored arrays are sorted by class: never the first N); the choices are made on validation, the test set is
reported. ``--holdout 0`` (old runs): ``make_task``'s random subsets, validation = a random subset of the test set.

``--norm frozen_bn`` (opt-in): the family keeps the checkpoint's batch norms with their statistics frozen for every
α and γ/β on the line; its members are ordinary batch-norm ResNet-20s (the single models are trained as ordinary
batch-norm models, statistics re-estimated: one model at one width needs no per-α statistics).

Run (2 shared cores; state the schedule you used)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_lcs.py --out search/results/lcs_cifar/fbn_s0 \\
        --norm frozen_bn --holdout 5000 --train-limit 20000 --val-limit 2000 --epochs 2 --lr 0.02 --shared-convs \\
        --init-checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors \\
        --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --phases family,eval

``--train-stats batch`` (opt-in, with ``--norm frozen_bn``): the family trains with batch statistics and stores a
per-α statistics table (``--calib-batches`` training batches at each grid α) before it is evaluated; ``--sort-channels``
orders the checkpoint's channel groups by magnitude first (family and single models). The 2026-12-07 runs of
``docs/lcs.md`` with both: ``benchmarks/lcs_table_run.sh SEED``. ``--distill D`` (opt-in): in-place distillation of the
narrow members from the α = 1 member (``train_lines(distill=...)``); ``benchmarks/lcs_kd_run.sh SEED [D]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwloop.methods.lcs import LcsFamily, default_grid, train_lines
from hwloop.methods.lcs.controller import LcsController, plot_run
from hwloop.models import ModelRef
from hwloop.search.train import evaluate, make_task, train_epochs

WIDTHS = (0.25, 0.5, 1.0)
TARGETS = (0.5, 0.6, 0.7)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def jload(p: Path) -> Any:
    return json.loads(p.read_text()) if p.exists() else None


def jsave(p: Path, obj: Any) -> None:
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(p)


def alpha_of_width(w: float, lo: float = 0.25, hi: float = 1.0) -> float:
    return round((w - lo) / (hi - lo), 6)


def harness_split(task: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The evidence harness's CIFAR-10 split (module docstring): the task with training and validation loaders
    replaced, and the test loader."""
    from torch.utils.data import DataLoader, Subset

    from hwloop.data import make_loaders

    def pick(ds: Any, limit: int | None, seed: int) -> Any:
        if limit is None or limit >= len(ds):
            return ds
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
        return Subset(ds, sorted(idx.tolist()))

    s = args.split_seed
    tr, va = make_loaders(args.task, args.batch, seed=s, holdout=args.holdout)
    te = make_loaders(args.task, args.batch, seed=s)[1]
    train = DataLoader(pick(tr.dataset, args.train_limit, s), batch_size=args.batch, shuffle=True,
                       generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(pick(va.dataset, args.val_limit, s + 1), batch_size=256)
    test = DataLoader(pick(te.dataset, args.test_limit, s + 2), batch_size=256)
    task.train, task.val = train, val
    task.eval_fn = lambda m: evaluate(m, val)
    return task, test


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="search/results/lcs")
    ap.add_argument("--task", default="cifar10", choices=["cifar10", "digits"])
    ap.add_argument("--model", default="resnet20", help="resnet20 (cifar10) or small_cnn (digits)")
    ap.add_argument("--checkpoint", default=str(ROOT / ".." / "shared" / "checkpoints" / "resnet20_cifar10_e35.safetensors"))
    ap.add_argument("--train-limit", type=int, default=4000)
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--n-samples", type=int, default=3)
    ap.add_argument("--grid", type=int, default=7)
    ap.add_argument("--shared-convs", action="store_true", help="only norms on the line (the reference code's setting)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--devices", default="asic-tpu32,local-cpu")
    ap.add_argument("--trace-steps", type=int, default=40)
    ap.add_argument("--table-devices", default="asic-tpu32", help="devices whose alpha->latency cost table is built")
    ap.add_argument("--trace-devices", default="asic-tpu32", help="devices the budget trace runs on")
    ap.add_argument("--phases", default="family,eval,latency,trace,single")
    ap.add_argument("--init-checkpoint", default=None,
                    help="start the family and the single models from this checkpoint (same architecture, any norm: "
                         "conv/linear weights and norm gamma/beta; BN statistics dropped); default: from scratch")
    ap.add_argument("--norm", default="in", choices=["in", "frozen_bn"],
                    help="the family's norm: instance norm (the paper's) or, opt-in, batch norm with frozen statistics")
    ap.add_argument("--fold-start", type=int, default=0, metavar="BATCHES",
                    help="frozen_bn: before training, fold the batch statistics of the width-0.25 member on this many "
                         "training batches into the alpha=0 endpoint's gamma/beta (LcsFamily.fold_statistics)")
    ap.add_argument("--clip-grad", type=float, default=0.0, help="clip each step's gradient norm (0: off)")
    ap.add_argument("--train-stats", default="frozen", choices=["frozen", "batch"],
                    help="frozen_bn: train with the frozen checkpoint statistics (frozen) or with each batch's (batch; "
                         "then a per-alpha statistics table on the grid is stored with the family)")
    ap.add_argument("--calib-batches", type=int, default=16, help="--train-stats batch: training batches per grid alpha")
    ap.add_argument("--sort-channels", action="store_true",
                    help="order the start's channel groups by magnitude first (family and single models)")
    ap.add_argument("--holdout", type=int, default=0, help="training images held out as the validation split "
                    "(the evidence harness's split; 0: validation = a random subset of the test set)")
    ap.add_argument("--split-seed", type=int, default=0, help="draws the held-out, training, validation and test subsets")
    ap.add_argument("--test-limit", type=int, default=None, help="random test images (default: all)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="family: in-place distillation weight (0..1): members with alpha < 1 trained on "
                         "(1-d)*CE + d*KL to the alpha=1 member's detached softmax (Yu & Huang 2019; 0: off)")
    ap.add_argument("--single-widths", default=",".join(map(str, WIDTHS)),
                    help="the widths of the models trained alone (comma list; run several processes to parallelise)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = set(args.phases.split(","))
    # one args file per process (single models may run beside the family run in the same folder)
    jsave(out / ("args.json" if "single" not in phases or "family" in phases
                 else f"args_single_{args.single_widths.replace(',', '_')}.json"), {**vars(args), "argv": sys.argv})
    fbn = args.norm == "frozen_bn"
    if args.train_stats == "batch" and not fbn:
        raise SystemExit("--train-stats batch needs --norm frozen_bn")
    if args.sort_channels and not args.init_checkpoint:
        raise SystemExit("--sort-channels needs --init-checkpoint (it orders trained channels)")
    if fbn and not (args.init_checkpoint and args.shared_convs):
        raise SystemExit("--norm frozen_bn needs --init-checkpoint (the statistics to freeze) and --shared-convs")
    task = make_task(args.task, args.model, model_kwargs={} if fbn else {"norm": "in"}, batch_size=args.batch,
                     train_limit=args.train_limit, val_limit=args.val_limit, seed=args.seed)
    test = None
    if args.holdout:
        task, test = harness_split(task, args)
    ref = task.ref
    shape = tuple(ref.input_shape)
    log(f"{args.task} {args.model} ({args.norm}): {len(task.train.dataset)} training images, {args.epochs} epochs, "
        f"batch {args.batch}, lr {args.lr} (cosine), sandwich of {args.n_samples} alphas per batch, shared convs "
        f"{args.shared_convs}; validation {len(task.val.dataset)} images "
        f"({'held-out training images' if args.holdout else 'CIFAR-10 test' if args.task == 'cifar10' else 'digits'})"
        + (f", test {len(test.dataset)} images" if test is not None else ""))
    grid = default_grid(args.grid)
    init = None
    if args.init_checkpoint:
        from safetensors.torch import load_file

        init = load_file(args.init_checkpoint)
        log(f"start: {args.init_checkpoint} (weights and norm gamma/beta; BN statistics dropped)")

    # 1. the family
    fam_dir = out / "family"
    if (fam_dir / "family.json").exists():
        fam = LcsFamily.load(fam_dir)
        log("family: loaded")
    elif "family" in phases:
        torch.manual_seed(args.seed)
        fam = LcsFamily.create(ref, "width", line_convs=not args.shared_convs, init=init, frozen_bn=fbn,
                               sort_channels=args.sort_channels, train_stats=args.train_stats)
        if args.fold_start:
            moved = fam.fold_statistics(task.train, alpha=0.0, batches=args.fold_start)
            log(f"folded the width-0.25 member's statistics of {args.fold_start} batches into alpha=0: {moved}")
        if args.train_stats == "batch" and init is not None and not (out / "start.json").exists():
            cal = fam.calibrate_statistics(task.train, grid, batches=args.calib_batches)
            log(f"statistics table of the start (for start.json only): {cal}")
        if init is not None and not (out / "start.json").exists():   # the members before any step (validation)
            jsave(out / "start.json", {repr(alpha_of_width(w)): evaluate(fam.at(alpha_of_width(w)).model, task.val)
                                       for w in WIDTHS})
            log(f"family before training (validation): {jload(out / 'start.json')}")
        log("family: training")
        h = train_lines(fam.net, fam.state, task.train, epochs=args.epochs, lr=args.lr, n_samples=args.n_samples,
                        seed=args.seed, progress=False, clip_grad=args.clip_grad, distill=args.distill,
                        on_epoch=lambda e, r: log(f"family epoch {e + 1}: loss {r['loss']:.3f} cos2 {r['cos2']:.2e} "
                                                  f"{r['seconds']:.0f} s"))
        if args.train_stats == "batch":
            t1 = time.perf_counter()
            h["calibration"] = fam.calibrate_statistics(task.train, grid, batches=args.calib_batches)
            h["calibration"]["seconds"] = time.perf_counter() - t1
            log(f"statistics table after training: {h['calibration']}")
        fam.save(fam_dir)
        jsave(out / "family_train.json", h)
        log(f"family: trained in {h['seconds']:.0f} s, {h['train_image_passes']:.0f} image passes")
    elif phases <= {"single"}:
        fam = None   # single models only (may run beside a family run; same --out)
    else:
        log("family: not trained yet and phase not selected")
        return 1

    # 3. accuracy
    ev = jload(out / "eval.json")
    if fam is None:
        phases &= {"single"}
        ev = None
    if ev is None and "eval" in phases:
        log("eval")
        fam.accuracy.clear()
        fam.evaluate(task.eval_fn, grid)
        ev = {"family": {repr(a): fam.accuracy[a] for a in grid}, "split": "validation" if args.holdout else "test",
              "width": {repr(a): fam.level(a)["width"] for a in grid},
              "params": {repr(a): sum(p.numel() for p in fam.at(a).model.parameters()) for a in grid}}
        dense = ModelRef(args.model, input_shape=shape).build()
        if args.task == "cifar10" and args.model == "resnet20" and Path(args.checkpoint).exists():
            from safetensors.torch import load_file

            dense.load_state_dict(load_file(args.checkpoint))
            bn_task = make_task("cifar10", "resnet20", batch_size=args.batch, train_limit=64,
                                val_limit=args.val_limit, seed=args.seed)
            ev["dense_bn_checkpoint"] = {"path": args.checkpoint, "accuracy": evaluate(dense, task.val if args.holdout
                                                                                        else bn_task.val)}
            if test is not None:
                ev["dense_bn_checkpoint"]["test"] = evaluate(dense, test)
        if test is not None:
            ev["family_test"] = {repr(a): evaluate(fam.at(a).model, test) for a in grid}
        jsave(out / "eval.json", ev)
        fam.save(fam_dir)
    if ev is not None and fam is not None:
        fam.accuracy = {float(a): v for a, v in ev["family"].items()}
        log(f"eval: {ev}")

    # 4. latency per device
    lat = jload(out / "latency.json") or {}
    if "latency" in phases:
        from hwloop.devices import MeasureRequest, create_device

        for dev in args.devices.split(","):
            if dev in lat:
                continue
            log(f"latency on {dev}")
            t0 = time.perf_counter()
            live = fam.measure(dev, grid, source="measure")
            table = fam.measure(dev, grid, source="table") if dev in args.table_devices.split(",") else {}
            dense = ModelRef(args.model, input_shape=shape)   # the BN reference architecture, whole model
            res = create_device(dev).measure([MeasureRequest.for_model(dense)])[0]
            if not res.ok:
                raise SystemExit(f"dense model failed on {dev}: {res.error}")
            dense_ms = float(res.latency_ms)
            full_in = float(live[1.0])
            picks = {}
            fam.latency[dev] = dict(table or live)
            for tgt in TARGETS:
                sel = fam.select(tgt * dense_ms, dev)
                picks[repr(tgt)] = {"budget_ms": tgt * dense_ms, "alpha": sel.alpha, "width": fam.level(sel.alpha)["width"],
                                    "table_ms": sel.latency_ms, "measured_ms": live[sel.alpha], "met_table": sel.met,
                                    "met_measured": live[sel.alpha] <= tgt * dense_ms, "accuracy": sel.accuracy}
            lat[dev] = {"live_ms": {repr(a): v for a, v in live.items()},
                        "table_ms": {repr(a): v for a, v in table.items()},
                        "dense_bn_ms": dense_ms, "in_full_width_over_dense_bn": full_in / dense_ms,
                        "targets": picks, "seconds": time.perf_counter() - t0}
            jsave(out / "latency.json", lat)
            log(f"latency {dev}: {lat[dev]}")
        fam.save(fam_dir)

    # 5. budget trace
    tr = jload(out / "trace.json") or {}
    if "trace" in phases:
        g = torch.Generator().manual_seed(args.seed + 7)
        for dev in args.devices.split(","):
            if dev in tr or dev not in lat or dev not in args.trace_devices.split(","):
                continue
            live = {float(a): v for a, v in lat[dev]["live_ms"].items()}
            table = {float(a): v for a, v in lat[dev]["table_ms"].items()}
            fam.latency[dev] = table          # select reads the table; misses are judged on live measurements
            lo_ms, hi_ms = min(live.values()), max(live.values())
            budgets = []
            for t in range(args.trace_steps):   # a slow sine (battery/load) plus random steps
                base = 0.5 + 0.45 * math.sin(2 * math.pi * t / args.trace_steps)
                jump = float(torch.rand((), generator=g)) * 0.3 - 0.15
                budgets.append(lo_ms * 0.9 + (hi_ms * 1.1 - lo_ms * 0.9) * min(1.0, max(0.0, base + jump)))
            log(f"trace on {dev}: {len(budgets)} budgets in [{min(budgets):.4g}, {max(budgets):.4g}] ms")
            ctl = LcsController(fam, dev, reference_ms=live)
            run = ctl.run(budgets)
            tr[dev] = run.to_dict()
            plot_run(run, str(out / f"trace_{dev}.png"))
            jsave(out / "trace.json", tr)
            log(f"trace {dev}: {run.summary()}")
    # 6. single models (last: the family's figures come first on a busy machine)
    singles: dict[float, Any] = {}
    for w in [float(v) for v in args.single_widths.split(",")]:
        p = out / f"single_{w}.safetensors"
        sref = ModelRef(args.model, {"norm": args.norm if args.norm == "in" else "bn", "width_mult": w},
                        input_shape=shape)
        if init is not None and "single" in phases and not (out / f"single_{w}.json").exists():
            # the checkpoint's first channels at width w (prefix slicing, as the family's member there), trained alone
            torch.manual_seed(args.seed)
            m = LcsFamily.create(ref, "width", line_convs=False, init=init, frozen_bn=fbn,
                                 sort_channels=args.sort_channels).at(alpha_of_width(w)).model
            log(f"single {w}: training from {args.init_checkpoint} sliced to width {w}")
            start = evaluate(m, task.val)
            h = train_epochs(m.train(), task.train, args.epochs, args.lr)
            acc = evaluate(m, task.val)
            jsave(out / f"single_{w}.json", {"width": w, "accuracy": acc, "train": h, "start_accuracy": start,
                                              "split": "validation" if args.holdout else "test",
                                              "test_accuracy": evaluate(m, test) if test is not None else None,
                                              "params": sum(q.numel() for q in m.parameters()),
                                              "init": args.init_checkpoint})
            log(f"single {w}: {h['seconds']:.0f} s, {h['images']:.0f} images, accuracy {acc}")
            continue
        if init is not None:
            continue
        if p.exists():
            from safetensors.torch import load_file

            m = sref.build()
            m.load_state_dict(load_file(str(p)))
            singles[w] = m
        elif "single" in phases:
            torch.manual_seed(args.seed)
            m = sref.build().train()
            log(f"single {w}: training")
            h = train_epochs(m, task.train, args.epochs, args.lr)
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
            jsave(out / f"single_{w}_train.json", h)
            log(f"single {w}: {h['seconds']:.0f} s, {h['images']:.0f} images")
            singles[w] = m

    sev = jload(out / "single_eval.json")
    if sev is None and singles:
        sev = {repr(w): evaluate(m, task.val) for w, m in singles.items()}
        jsave(out / "single_eval.json", sev)
        log(f"single models: accuracy {sev}")
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
