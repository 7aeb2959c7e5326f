"""Benchmark of SBS (``hwloop.methods.sbs``, issue 19) on CIFAR-10 ResNet-20; docs/sbs.md quotes its output.

Every entry starts from the same checkpoint and goes through the same extraction and QAT fine-tune
(:meth:`SbsMethod.finish`); SBS searches first, the controls are fixed configurations:

* ``ref-w8a8``: every layer W8A8, full width, QAT fine-tuned (the reference for "≤ 1 point drop", and the
  cost reference: the asic devices run float layers at 8 bits, so the dense model *is* W8A8 there);
* ``sbs-lat@T``: SBS with latency from the cost table on asic-tpu32, budget T of the dense model's latency;
* ``w4a4@T``: uniform W4A4 (first conv and classifier W8A8, as SBS) with every channel group pruned by the same
  fraction (largest filters kept) to the largest width within T: uniform W4A4 QAT at matched cost;
* ``ptq@T``: prune-then-quantize: channel pruning to T at W8A8 (same uniform fraction rule), then uniform W8A8;
* ``l1l2@T``: the l1l2 method (channel gates + its nested 2/4/8-bit weight gates, activations at 8 bits) with its
  own bit-aware MAC surrogate scaled to asic-tpu32's ms per MAC, then measured on the device;
* ``sbs-bops@B``: SBS with BOPs as the cost, budget B of W8A8's BOPs;
* ``w4a4`` / ``w2a4``: uniform quantization at full width (equal-BOPs references for ``sbs-bops``).

Every candidate is measured on asic-tpu32 (low-bit packing on, as shipped) and on the same array with
``pack_low_bits = false``; BOPs are counted by SBS's BopsCost (first conv and classifier included).

Each finished entry is stored in ``--out``/results.json at once; a rerun skips it (checkpointed).
Reduced schedule for this 2-core CPU (what docs/sbs.md quotes)::

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_sbs.py --steps 60 > sbs.log 2>&1

Data: training batches from the 45,000 training images left by ``make_loaders(holdout=5000, seed=0)``;
accuracies on ``--eval-limit`` CIFAR-10 test images (a fixed random subset, seed 1, the same everywhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONVERGED = ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"
E35 = ROOT.parent / "shared/checkpoints/resnet20_cifar10_e35.safetensors"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)


def report(data: dict[str, Any]) -> str:
    """Markdown tables of results.json (what docs/sbs.md quotes)."""
    rows = {k: v for k, v in data.items() if isinstance(v, dict) and "accuracy" in v and "/s" in k}
    refs = {k.split("/")[1]: v["accuracy"] for k, v in rows.items() if k.startswith("ref-w8a8")}
    sched = data.get("schedule", {})
    out = [(f"checkpoint `{data.get('checkpoint')}`; dense (float) {data['dense']['accuracy']:.2f}% on "
            f"{sched.get('eval_limit')} test images; {sched.get('steps')} search + {sched.get('steps')} fine-tune "
            f"batches of {sched.get('batch')}; dense latency on asic-tpu32 {data['dense']['asic_ms']:.4f} ms "
            f"(packing off {data['dense']['asic_nopack_ms']:.4f} ms)"), "",
           ("| entry | seed | accuracy % | val % | vs ref-W8A8 | asic-tpu32 latency (packing on) | packing off | BOPs vs W8A8 "
            "| BOP reduction | mean w/a bits | method's own end | status |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, v in rows.items():
        name, seed = k.split("/")
        d = v["accuracy"] - refs[seed] if seed in refs else float("nan")
        bits = (f"{v['mean_w_bits']:.2f}/{v['mean_a_bits']:.2f}" if v.get("mean_w_bits") is not None
                else "/".join(map(str, v.get("bits", []))) or "-")
        own = f"{v['search_ratio']:.3f}" if v.get("search_ratio") is not None else "-"
        va = f"{v['val_accuracy']:.2f}" if v.get("val_accuracy") is not None else "-"
        out.append(f"| {name} | {seed[1:]} | {v['accuracy']:.2f} | {va} | {d:+.2f} | {v['measured_ratio']:.3f}x | "
                   f"{v['nopack_ratio']:.3f}x | {v['bops_ratio']:.4f} | {1 / v['bops_ratio']:.1f}x | {bits} | "
                   f"{own} ({v['unit']}) | {v['status']} |")
    best: dict[str, tuple[float, str]] = {}
    for k, v in rows.items():
        name, seed = k.split("/")
        if seed in refs and v["accuracy"] >= refs[seed] - 1.0 and not name.startswith("ref"):
            fam = name.split("@")[0]
            if 1 / v["bops_ratio"] > best.get(fam, (0.0, ""))[0]:
                best[fam] = (1 / v["bops_ratio"], k)
    out += ["", "Largest BOP reduction vs uniform W8A8 within 1 point of ref-W8A8 (same schedule), per family: "
            + (", ".join(f"{f} {r:.1f}x ({k})" for f, (r, k) in sorted(best.items())) or "none")]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="ResNet-20 safetensors state_dict (default: the converged "
                    "checkpoint if it exists, else ../shared/checkpoints/resnet20_cifar10_e35.safetensors)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--out", default=str(ROOT / "search/results/sbs"))
    ap.add_argument("--targets", default="0.5,0.7", help="latency budgets (fractions of the dense model)")
    ap.add_argument("--bops-targets", default="0.25,0.125", help="BOPs budgets (fractions of W8A8)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=60, help="batches of the search and of the fine-tune")
    ap.add_argument("--ft-steps", type=int, default=None, help="batches of the fine-tune (default: --steps)")
    ap.add_argument("--control-ft-steps", type=int, default=None, help="fine-tune batches of the fixed "
                    "configurations (ref, w4a4, ptq, full, uniform-bits; default: --ft-steps); e.g. SBS's search + "
                    "fine-tune batches, so every entry trains on as many images")
    ap.add_argument("--finetune-lr", type=float, default=None, help="the fine-tune's lr (default: --lr)")
    ap.add_argument("--a-signed", default="auto", choices=("symmetric", "auto"), help="activation codes "
                    "(auto: unsigned for inputs never negative; hwloop/methods/sbs/actq.py)")
    ap.add_argument("--a-range", default="mse", choices=("max", "mse"), help="the fine-tune's activation ranges")
    ap.add_argument("--w-range", default="max", choices=("max", "mse"), help="the exported weights' grid range")
    ap.add_argument("--w-levels", default="2,4,8", help="SBS's nested weight bit-widths (e.g. 4,8: no 2-bit level)")
    ap.add_argument("--w-grid", default="superbit", choices=("superbit", "plan"), help="SBS's search weight grids "
                    "(plan: every level as extraction exports it; 2 bits ternary)")
    ap.add_argument("--full-bits", default="4/4", help="phase 'full': uniform w/a bits at full width, e.g. 4/4,2/8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--val-limit", type=int, default=0, help="also score every entry on this many held-out "
                    "training images (the holdout=5000 validation split; 0: not scored): choices are made there")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--gate-lr", type=float, default=0.01)
    ap.add_argument("--lam", type=float, default=2.0)
    ap.add_argument("--min-keep", type=float, default=0.25, help="SBS's per-group channel floor (fraction of each "
                    "group's channels; 0.05 = the space's minimum, the runs before the floor existed)")
    ap.add_argument("--thr-init", default="0.05", help="SBS's threshold start, a margin below the gated scores "
                    "('none': thresholds at 0, the runs before the boundary start existed)")
    ap.add_argument("--penalty", default="hinge", choices=("hinge", "two-sided", "linear"), help="SBS's budget term")
    ap.add_argument("--gate-momentum", type=float, default=0.0, help="Adam's beta1 on SBS's thresholds")
    ap.add_argument("--gate-step", default="adam", choices=("adam", "cost", "shared"), help="how SBS's thresholds "
                    "move (hwloop/methods/sbs/step.py)")
    ap.add_argument("--a-score-momentum", type=float, default=1.0, help="SBS's activation-score moving average "
                    "(1: each batch's own score)")
    ap.add_argument("--target-warmup", type=float, default=0.3)
    ap.add_argument("--phases", default="ref,sbs-lat,w4a4,ptq,l1l2,sbs-bops,uniform-bits")
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/sbs_bitmap.png"))
    ap.add_argument("--report-only", action="store_true", help="print the tables of --out/results.json and exit")
    args = ap.parse_args(argv)
    if args.report_only:
        print(report(json.loads((Path(args.out) / "results.json").read_text())))
        return 0
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.data import make_loaders
    from hwloop.devices import create_device, load_profile
    from hwloop.devices.asic import AsicDevice
    from hwloop.methods import make_method
    from hwloop.methods.base import MethodContext
    from hwloop.methods.measure import measure_candidates
    from hwloop.methods.sbs.method import state_of, top_config
    from hwloop.methods.sbs.plot import plot_bit_map
    from hwloop.models import ModelRef
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.report import compare_compressed, layer_specs_with_bits, measure_compressed
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import _subset, evaluate

    thr_init = None if args.thr_init.lower() == "none" else float(args.thr_init)
    ft_steps = args.steps if args.ft_steps is None else args.ft_steps
    w_levels = [int(b) for b in args.w_levels.split(",") if b.strip()]
    ctl_steps = ft_steps if args.control_ft_steps is None else args.control_ft_steps
    ckpt = Path(args.checkpoint) if args.checkpoint else (CONVERGED if CONVERGED.exists() else E35)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out / "results.json")
    if res.data.get("checkpoint") not in (None, str(ckpt)):
        say(f"error: {out}/results.json was made with {res.data['checkpoint']}, not {ckpt}; use another --out")
        return 2
    res.put("checkpoint", str(ckpt))
    res.put("schedule", {"steps": args.steps, "batch": args.batch, "eval_limit": args.eval_limit, "lr": args.lr,
                         "gate_lr": args.gate_lr, "lam": args.lam, "min_keep": args.min_keep,
                         "thr_init": thr_init, "penalty": args.penalty, "target_warmup": args.target_warmup,
                         "gate_momentum": args.gate_momentum, "gate_step": args.gate_step,
                         "a_score_momentum": args.a_score_momentum, "val_limit": args.val_limit,
                         "ft_steps": ft_steps, "control_ft_steps": ctl_steps, "finetune_lr": args.finetune_lr, "a_signed": args.a_signed,
                         "a_range": args.a_range, "w_range": args.w_range, "w_levels": w_levels,
                         "w_grid": args.w_grid})
    say(f"checkpoint {ckpt}; {args.steps} search + {args.steps} fine-tune batches of {args.batch}; "
        f"test subset {args.eval_limit}")

    train, val = make_loaders("cifar10", args.batch, root=args.data_root, holdout=5000, seed=0)
    val = _subset(val, args.val_limit, 2, shuffle=False) if args.val_limit else None
    _, test = make_loaders("cifar10", 256, root=args.data_root, holdout=0, seed=0, augment=False)
    test = _subset(test, args.eval_limit, 1, shuffle=False)   # a fixed random subset (the files are class-sorted)
    ref = ModelRef("resnet20", input_shape=(3, 32, 32))
    model = ref.build()
    model.load_state_dict(load_file(str(ckpt)))
    model.eval()
    example = ref.example_input()

    vals: list[float] = []   # the validation accuracy of every eval_fn call, in order

    def eval_fn(m: torch.nn.Module) -> float:
        if val is not None:
            vals.append(float(evaluate(m, val)))
        return float(evaluate(m, test))

    space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8), model=model)
    tpu = create_device("asic-tpu32")
    prof = load_profile("asic-tpu32")
    nopack = AsicDevice("asic-tpu32-nopack", spec={**dict(prof.spec), "pack_low_bits": False})
    ms0 = measure_compressed(tpu, model, None, example=example)["latency_ms"]
    if "dense" not in res.data:
        res.put("dense", {"accuracy": eval_fn(model), "val_accuracy": vals[-1] if vals else None, "asic_ms": ms0,
                          "asic_nopack_ms": measure_compressed(nopack, model, None, example=example)["latency_ms"]})
    dense = res.data["dense"]
    say(f"dense (float weights; the device runs them at W8A8): accuracy {dense['accuracy']:.2f}, asic-tpu32 "
        f"{ms0:.4f} ms")
    macs0 = float(SurrogateLatency(space).original()) * 1e6

    def plan_bops(m: torch.nn.Module, plan: Any) -> float:
        """BOPs of an extracted model: MACs x w_bits x a_bits of every conv/linear (float layers 32 x 32)."""
        return float(sum(s.macs * (s.w_bits or 32) * (s.a_bits or 32) for s in layer_specs_with_bits(m, example, plan)
                         if s.op in ("conv2d", "linear")))

    bops_w8a8 = float(sum(s.macs * 64 for s in layer_specs_with_bits(model, example, None)
                          if s.op in ("conv2d", "linear")))

    def context(target: float | None, seed: int, sp: Any = space, latency: Any = None) -> MethodContext:
        return MethodContext(model=model, ref=ref, space=sp, train=train, eval_fn=eval_fn,
                             latency=latency or SurrogateLatency(sp), target=target, device="asic-tpu32", seed=seed,
                             base_accuracy=dense["accuracy"], log=say)

    base_cfg = {"search_epochs": 1, "finetune_epochs": 1 if ft_steps else 0, "max_steps": args.steps, "lr": args.lr,
                "finetune_lr": args.finetune_lr, "a_signed": args.a_signed, "a_range": args.a_range,
                "w_range": args.w_range, "w_levels": w_levels, "w_grid": args.w_grid,
                "finetune_steps": ft_steps or None,
                "gate_lr": args.gate_lr, "lam": args.lam, "min_keep": args.min_keep,
                "thr_init": thr_init, "penalty": args.penalty, "target_warmup": args.target_warmup,
                "gate_momentum": args.gate_momentum, "gate_step": args.gate_step,
                "a_score_momentum": args.a_score_momentum, "table_store": f"sqlite:///{out / 'costs.db'}"}

    def record(key: str, ctx: MethodContext, result: Any, extra: dict[str, Any] | None = None) -> None:
        measure_candidates(result, ctx)
        c = result.candidates[0]
        off = compare_compressed(nopack, c.model, c.plan, ctx.model, example=example, rounds=1)
        sbs_extra = c.extra if "bops" in c.extra else {}
        row = {"accuracy": c.accuracy, "accuracy_extracted": c.accuracy_extracted, "unit": c.unit,
               "predicted_ratio": c.predicted_ratio, "search_ratio": c.search_ratio, "status": c.status,
               "status_reason": c.status_reason, "measured_ms": c.measured_ms, "measured_ratio": c.measured_ratio,
               "nopack_ratio": off["ratio"], "bops_ratio": plan_bops(c.model, c.plan) / bops_w8a8,
               "sbs_bops_ratio": sbs_extra.get("bops_ratio"),
               "mean_w_bits": sbs_extra.get("mean_w_bits"), "mean_a_bits": sbs_extra.get("mean_a_bits"),
               "bit_map": sbs_extra.get("bit_map"), "plan": c.plan.to_dict(), "history": c.history,
               "wall_s": c.cost.wall_s if c.cost is not None else None,
               "val_accuracy": vals[-1] if vals else None, "val_accuracy_extracted": vals[-2] if len(vals) > 1
               else None, "val_limit": args.val_limit, "gate_step": args.gate_step, **(extra or {})}
        vals.clear()
        res.put(key, row)
        say(f"{key}: accuracy {c.accuracy:.2f} (extracted {c.accuracy_extracted:.2f}), measured {c.measured_ratio:.3f} "
            f"x dense on asic-tpu32 (packing off {off['ratio']:.3f} x), BOPs "
            f"{row['bops_ratio'] if row['bops_ratio'] is None else round(row['bops_ratio'], 4)} x W8A8, "
            f"status {c.status}")

    def fixed_run(key: str, target: float | None, seed: int, bits: tuple[int, int] | None, frac: float | None,
                  cost: str = "latency") -> None:
        """A control: every searched layer at ``bits`` (None: 8/8), every group at ``frac`` of its channels
        (None: the largest fraction within ``target`` by the exact table cost), extracted and QAT fine-tuned."""
        if key in res.data:
            return
        torch.manual_seed(seed)
        ctx = context(target, seed)
        m = make_method("sbs", {**base_cfg, "search_epochs": 0, "repair": False, "cost": cost,
                                "finetune_epochs": 1 if ctl_steps else 0, "finetune_steps": ctl_steps or None})
        p = m.prepare(ctx)  # type: ignore[attr-defined]
        sbs = p["sbs"]
        scores = {g.key: sbs.filter_scores(g.key).detach() for g in sbs.groups}

        def config(f: float) -> dict[str, Any]:
            cfg = top_config(sbs)
            for n in cfg["w"]:
                if sbs.policy[n] == "search" and bits is not None:
                    cfg["w"][n], cfg["a"][n] = bits
            for g in sbs.groups:
                k = max(sbs.space.min_keep(g.channels), round(f * g.channels))
                mask = torch.zeros(g.channels, dtype=torch.bool)
                mask[torch.argsort(scores[g.key], descending=True, stable=True)[:k]] = True
                cfg["masks"][g.key] = mask
            return cfg

        if frac is None:
            assert target is not None
            lo, hi = 0.0, 1.0
            for _ in range(10):
                mid = (lo + hi) / 2
                if p["cost"].exact(state_of(sbs, config(mid))) <= target * p["c0"]:
                    lo = mid
                else:
                    hi = mid
            frac = lo
        say(f"{key}: bits {bits or (8, 8)}, channel fraction {frac:.3f}")
        result = m.finish(ctx, p, config(frac), setting=key)  # type: ignore[attr-defined]
        record(key, ctx, result, {"fraction": frac, "bits": list(bits or (8, 8))})

    seeds = [int(s) for s in args.seeds.split(",") if s]
    targets = [float(t) for t in args.targets.split(",") if t]
    bops_targets = [float(t) for t in args.bops_targets.split(",") if t]
    phases = set(args.phases.split(","))
    def lat_block(t: float, seed: int) -> None:
        key = f"sbs-lat@{t}/s{seed}"
        if "sbs-lat" in phases and key not in res.data:
            ctx = context(t, seed)
            record(key, ctx, make_method("sbs", base_cfg).run(ctx))
            if seed == seeds[0] and t == targets[0]:
                plot_bit_map(res.data[key]["bit_map"], args.figure,
                             title=f"SBS bit map, ResNet-20, asic-tpu32 latency target {t} (seed {seed})")
        if "w4a4" in phases:
            fixed_run(f"w4a4@{t}/s{seed}", t, seed, (4, 4), None)
        if "ptq" in phases:
            fixed_run(f"ptq@{t}/s{seed}", t, seed, (8, 8), None)
        key = f"l1l2@{t}/s{seed}"
        if "l1l2" in phases and key not in res.data:
            sp = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8), model=model)
            lat = SurrogateLatency(sp, bits_aware=True, scale_ms_per_mac=ms0 / macs0)
            ctx = context(t, seed, sp, lat)
            r = make_method("l1l2", {"search_epochs": 1, "finetune_epochs": 1, "max_steps": args.steps,
                                     "lr": args.lr, "gate_lr": args.gate_lr, "target_warmup": 0.5,
                                     "latency_penalty": "hinge", "recalibrate_batches": 4}).run(ctx)
            record(key, ctx, r)

    def bops_block(b: float, seed: int) -> None:
        key = f"sbs-bops@{b}/s{seed}"
        if "sbs-bops" in phases and key not in res.data:
            ctx = context(b, seed)
            record(key, ctx, make_method("sbs", {**base_cfg, "cost": "bops"}).run(ctx))

    # the first latency target and the first BOPs budget with their controls first, then the rest
    for seed in seeds:
        if "ref" in phases:
            fixed_run(f"ref-w8a8/s{seed}", None, seed, (8, 8), 1.0)
        if "full" in phases:   # uniform bits at full width (first conv and classifier W8A8), --full-bits
            for wa in args.full_bits.split(","):
                if wa:
                    wb, ab = (int(v) for v in wa.split("/"))
                    fixed_run(f"w{wb}a{ab}/s{seed}", None, seed, (wb, ab), 1.0, cost="bops")
        if targets:
            lat_block(targets[0], seed)
        if bops_targets:
            bops_block(bops_targets[0], seed)
        if "uniform-bits" in phases:
            fixed_run(f"w4a4/s{seed}", None, seed, (4, 4), 1.0, cost="bops")
        for t in targets[1:]:
            lat_block(t, seed)
        for b in bops_targets[1:]:
            bops_block(b, seed)
        if "uniform-bits" in phases:
            fixed_run(f"w2a4/s{seed}", None, seed, (2, 4), 1.0, cost="bops")
    (out / "results.md").write_text(report(res.data) + "\n")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
