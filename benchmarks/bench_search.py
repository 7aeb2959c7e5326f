"""Benchmark of the differentiable hardware-aware search (issue 7); docs/search.md quotes its output.

One run measures, on one task/model/device:

1. **Learned latency model**: layers of random compressed variants of the model (random widths
   and bit-widths drawn from the shared search space) are measured on the device and an
   XGBoost predictor is fitted on them (hardware in the loop; no pickles, saved as JSON/UBJ).
2. **Baseline**: the unpruned model trained for the whole schedule (pretrain + search +
   fine-tune epochs), timed, scored and measured on the device.
3. **Predictor-driven search**: pretrain → search with the learned latency in the loss and a
   latency target (dual ascent) → extract → fine-tune, timed; measured on the device.
4. **FLOPs-only search**: the same pretrained weights and schedule, but the loss uses MACs only
   (it ignores bit-widths and the device's tiles), at a MACs target; measured on the device.

It prints a Markdown report (and writes ``report.json``, ``report.md`` and
``latency_vs_accuracy.png`` to ``--out``): cost ratio (search run / baseline training),
measured latency reduction and accuracy drop versus the baseline, predicted vs measured
latency, and the two search points against each other.

Reduced schedule (2 shared CPU cores; what docs/search.md quotes)::

    python benchmarks/bench_search.py --train-limit 5000 --val-limit 2000 --epochs 3,3,3

Full schedule (a GPU-class machine; CIFAR-10 with all 50k images)::

    python benchmarks/bench_search.py --full

Fronts (issue 7's "against a FLOPs-only search with the same accuracy"): a sweep of targets for the
predictor-driven and the FLOPs-only search, several seeds, both fronts in one PNG::

    python benchmarks/bench_search.py --fronts --task digits --model small_cnn --epochs 3,3,2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch

from hwloop.compress.actquant import quantized_activations
from hwloop.compress.extract import save_compressed
from hwloop.compress.plan import CompressionPlan
from hwloop.devices import create_device
from hwloop.errors import HwloopError, SearchError
from hwloop.methods import make_method
from hwloop.methods.base import MethodContext
from hwloop.methods.l1l2 import l1l2_config
from hwloop.search.differentiable import SearchConfig
from hwloop.search.evidence import (bench_markdown, fronts_markdown, fronts_space_options, load_state_file,
                                    plot_bench, plot_fronts, proxy_latency, record_and_fit, write_keeping_note)
from hwloop.search.latency import PredictorLatency, SurrogateLatency
from hwloop.search.report import measure_compressed, predict_compressed
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.train import make_task, train_epochs
from hwloop.workload import WorkloadWarning, extract_layers


def run_fronts(args: argparse.Namespace) -> int:
    """Predictor-driven vs a FLOPs-like proxy search, each over a sweep of targets (and seeds), all measured.

    Per seed the base model is pre-trained once and shared; every search starts from it with the same
    schedule and the same space (``--space bits``: channels + weight bits, 8-bit activations; ``--space
    channels``: channels only, 8 bits). The predictor-driven search uses a learned predictor of the device in the
    loss with a latency target: fitted here on ``--record-models`` random variants measured on the device (or
    ``--predictor FILE``). The proxy search uses ``--proxy flops`` (MACs; ignores bits and tiles) or ``--proxy
    bitops`` (MACs · w_bits · a_bits / 32², what a FLOPs-minded user counts with quantization) with a proxy
    target. Every extracted model is measured on the device as a whole model (``measure_compressed``; on the
    simulated ASIC that is one layer request per op with the plan's bits, equal to its whole-model path).
    Writes ``fronts.csv``, ``fronts.json``, ``fronts.md`` and ``fronts.png`` (accuracy vs measured latency of both
    sweeps, Pareto fronts drawn).
    """
    from tqdm.auto import tqdm

    from hwloop.models import ModelRef
    from hwloop.search.pareto import hypervolume_2d, pareto_front

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", WorkloadWarning)
    pre, srch, ft = (int(x) for x in args.epochs.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = fronts_space_options(args.space, args.device)
    ref0 = (ModelRef(args.model, {}, input_shape=(1, 8, 8)) if args.task == "digits"
            else ModelRef(args.model, {"in_channels": 3} if args.model == "small_cnn" else {}))
    proxy_latency(SearchSpace.from_ref(ref0, opts), args.proxy)   # a bad --proxy fails before any work
    if args.predictor:
        from hwloop.predict.io import load_predictor

        pred, ppath = load_predictor(args.predictor), args.predictor
        pinfo: dict = {"reused": args.predictor}
    else:
        pred, pinfo = record_and_fit(SearchSpace.from_ref(ref0, opts), args.device, args.record_models, 0, out)
        ppath = str(out / "predictor.json")
    sweeps = {"predictor": [float(t) for t in args.targets.split(",")],
              args.proxy: [float(t) for t in args.flops_targets.split(",")]}
    seeds = [int(x) for x in args.seeds.split(",")]
    rows: list[dict] = []
    t_all = time.perf_counter()
    bar = tqdm(total=len(seeds) * sum(len(v) for v in sweeps.values()), desc="fronts")
    for seed in seeds:
        torch.manual_seed(seed)
        task = make_task(args.task, args.model, batch_size=args.batch_size, train_limit=args.train_limit or None,
                         val_limit=args.val_limit or None, seed=seed)
        model = task.ref.build().train()
        if pre:
            train_epochs(model, task.train, pre, args.lr)
        example = task.ref.example_input()
        acc0 = task.eval_fn(model)
        m0 = measure_compressed(args.device, model, CompressionPlan(base=task.ref.to_dict()),
                                example=example)["latency_ms"]
        omacs = sum(s.macs for s in extract_layers(model, example) if s.op in ("conv2d", "linear"))
        rows.append({"seed": seed, "method": "original", "target": 1.0, "accuracy": acc0, "accuracy_extracted": acc0,
                     "measured_ms": m0, "ratio": 1.0, "predicted_ratio": 1.0, "macs": 1.0, "mean_bits": 8.0,
                     "wall_s": 0.0})
        for method, targets in sweeps.items():
            space = SearchSpace.from_ref(task.ref, opts, model=model)
            lat = proxy_latency(space, method) if method != "predictor" else PredictorLatency(space, pred)
            for t in targets:
                cfg = SearchConfig(search_epochs=srch, finetune_epochs=ft, lr=args.lr, target=t, tile=opts.tile,
                                   seed=seed, recalibrate_batches=args.recalibrate_batches,
                                   quantize_activations=not args.float_activations, **target_schedule(args))
                t0 = time.perf_counter()
                res = make_method("l1l2", l1l2_config(cfg)).run(MethodContext(
                    model=model, ref=task.ref, space=space, train=task.train, latency=lat, target=t, seed=seed,
                    eval_fn=task.eval_fn if args.eval_extracted else None, base_accuracy=acc0)).candidates[0]
                with quantized_activations.from_plan(res.model, res.plan):   # the plan's a_bits, as fine-tuned
                    acc = task.eval_fn(res.model)
                ms = measure_compressed(args.device, res.model, res.plan, example=example)["latency_ms"]
                macs = sum(s.macs for s in extract_layers(res.model, example) if s.op in ("conv2d", "linear"))
                bits = list(res.plan.w_bits.values())
                rows.append({"seed": seed, "method": method, "target": t, "accuracy": acc,
                             "accuracy_extracted": res.accuracy_extracted if args.eval_extracted else float("nan"),
                             "measured_ms": ms, "ratio": ms / m0, "predicted_ratio": res.predicted / res.original,
                             "macs": macs / omacs, "mean_bits": float(np.mean(bits)) if bits else 8.0,
                             "wall_s": time.perf_counter() - t0})
                bar.update(1)
                bar.set_postfix_str(f"seed {seed} {method} {t}: acc {acc:.1f} ratio {ms / m0:.3f}")
    bar.close()
    ref = (args.reference_accuracy, 1.0)
    summary: dict = {"args": vars(args), "predictor": ppath, "predictor_info": pinfo,
                     "wall_s": time.perf_counter() - t_all, "torch_threads": torch.get_num_threads(), "hv": {},
                     "fronts": {}}
    for method in sweeps:
        pts = [(r["accuracy"], r["ratio"]) for r in rows if r["method"] == method]
        summary["fronts"][method] = [pts[i] for i in pareto_front(pts)]
        summary["hv"][method] = [hypervolume_2d([(r["accuracy"], r["ratio"]) for r in rows
                                                 if r["method"] == method and r["seed"] == s], ref) for s in seeds]
    import csv

    with open(out / "fronts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "fronts.json").write_text(json.dumps({**summary, "rows": rows}, indent=1, default=float) + "\n",
                                     encoding="utf-8")
    md = fronts_markdown(rows, summary, list(sweeps), seeds)
    (out / "fronts.md").write_text(md, encoding="utf-8")
    plot_fronts(rows, summary, vars(args), out / "fronts.png")
    print(md)
    return 0


def remake_fronts_report(out: Path) -> int:
    """Rewrite ``fronts.md`` and ``fronts.png`` of a finished ``--fronts`` run from its ``fronts.json``."""
    data = json.loads((out / "fronts.json").read_text(encoding="utf-8"))
    rows = data.pop("rows")
    sweeps = list(data["fronts"])
    seeds = sorted({int(r["seed"]) for r in rows})
    md = fronts_markdown(rows, data, sweeps, seeds)
    write_keeping_note(out / "fronts.md", md)   # a "superseded" note added after the run stays
    plot_fronts(rows, data, data["args"], out / "fronts.png")
    print(md)
    return 0


def target_schedule(args: argparse.Namespace) -> dict[str, float | str]:
    """The :class:`SearchConfig` fields of how λ follows the target (``--dual-lr``, ``--target-warmup``,
    ``--target-curve``, ``--dual-kp``, ``--latency-penalty``, ``--prune-after-warmup``)."""
    return {"dual_lr": args.dual_lr, "target_warmup": args.target_warmup, "target_curve": args.target_curve,
            "dual_kp": args.dual_kp, "latency_penalty": args.latency_penalty,
            "prune_after_warmup": args.prune_after_warmup}


def run_aggregation_check(args: argparse.Namespace) -> int:
    """Measured (the whole model, as the reports do) vs the predictor summed over every op vs its whole-model
    aggregation, for the original and random compressed variants of a few models; prints a table."""
    from hwloop.predict.io import load_predictor

    warnings.simplefilter("ignore", WorkloadWarning)
    torch.set_num_threads(args.threads)
    ppath = args.predictor or str(Path(__file__).resolve().parents[1] / "measurements" / args.device / "predictor.json")
    pred = load_predictor(ppath)
    dev = create_device(args.device)
    rng = np.random.default_rng(args.seed)
    print(f"predictor {ppath}; device {args.device}; {args.record_models} random variants per model\n")
    print("| model | variants | sum of per-op predictions vs measured | whole-model aggregation vs measured |")
    print("|---|---:|---|---|")
    for name in ("small_cnn", "resnet20"):
        from hwloop.models import ModelRef

        ref = ModelRef(name, {}, input_shape=(1, 8, 8)) if name == "small_cnn" else ModelRef(name)
        space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8))
        e_sum, e_cal = [], []
        for k in range(args.record_models):
            net, plan = space.compress(space.sample(rng) if k else space.default_config())
            ms = measure_compressed(dev, net, plan, example=space.example)["latency_ms"]
            e_sum.append(predict_compressed(pred, net, space.example, plan, aggregate="sum") / ms - 1)
            e_cal.append(predict_compressed(pred, net, space.example, plan, aggregate="calibrated") / ms - 1)
        print(f"| {name} | {len(e_sum)} | {min(e_sum):+.1%} … {max(e_sum):+.1%} | "
              f"{min(e_cal):+.1%} … {max(e_cal):+.1%} |")
    dev.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cifar10")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--train-limit", type=int, default=5000, help="training images (0: all)")
    ap.add_argument("--val-limit", type=int, default=2000, help="validation images (0: all)")
    ap.add_argument("--epochs", default="3,3,3", help="pretrain,search,finetune epochs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--target", type=float, default=0.45, help="latency target (fraction of the original)")
    ap.add_argument("--flops-target", type=float, default=None, help="MACs target of the FLOPs-only search "
                    "(default: the MACs ratio the predictor-driven search reached)")
    ap.add_argument("--record-models", type=int, default=60)
    ap.add_argument("--predictor", default=None, help="reuse a saved predictor instead of recording and fitting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="start from this safetensors state_dict instead of "
                    "pretraining; the baseline is the checkpoint trained further for search + fine-tune epochs")
    ap.add_argument("--bit-levels", default="2,4,8", help="weight bit-widths the search may choose")
    ap.add_argument("--methods", default="predictor,flops", help="which searches to run (predictor, flops)")
    ap.add_argument("--full", action="store_true", help="full schedule: all CIFAR-10, epochs 20,100,40")
    ap.add_argument("--out", default="search/results/bench_cifar10_resnet20_asic")
    ap.add_argument("--fronts", action="store_true", help="sweep targets for both searches (and --seeds); plot "
                    "both (accuracy, measured latency) fronts; uses the shipped predictor unless --predictor")
    ap.add_argument("--targets", default="0.5,0.6,0.7,0.8,0.9", help="--fronts: latency targets of the "
                    "predictor-driven search")
    ap.add_argument("--flops-targets", default="0.1,0.2,0.35,0.5,0.7", help="--fronts: MACs targets of the "
                    "FLOPs-only search")
    ap.add_argument("--seeds", default="0", help="--fronts: comma-separated seeds (data subset, init, search)")
    ap.add_argument("--space", default="bits", help="--fronts: the space both searches share: bits (channels + "
                    "weight bits 2/4/8, 8-bit activations) or channels (channels only, 8 bits)")
    ap.add_argument("--proxy", default="flops", help="--fronts: the FLOPs-like objective: flops (MACs) or bitops "
                    "(MACs x w_bits x a_bits / 32^2)")
    ap.add_argument("--eval-extracted", action="store_true", help="--fronts: also score each model right after "
                    "extraction (before fine-tuning)")
    ap.add_argument("--recalibrate-batches", type=int, default=20, help="batch-norm re-estimation after "
                    "extraction (training batches; 0: off, the behaviour before this option)")
    ap.add_argument("--no-fill-budget", action="store_true", help="single runs: do not grow widths back to the "
                    "target at extraction (fill_budget, on by default here; --fronts never uses it)")
    ap.add_argument("--gate-lr", type=float, default=SearchConfig.gate_lr, help="single runs: Adam learning "
                    "rate of the gates (lower: the widths move more slowly, less overshoot of the target)")
    ap.add_argument("--dual-lr", type=float, default=SearchConfig.dual_lr, help="dual-ascent step size on log "
                    "lambda per optimiser step (the integral gain)")
    ap.add_argument("--target-warmup", type=float, default=SearchConfig.target_warmup, help="fraction of the search "
                    "steps over which the effective latency target anneals from 1.0 down to --target (0: the target "
                    "from the first step, the behaviour before this option)")
    ap.add_argument("--target-curve", default=SearchConfig.target_curve, help="shape of that anneal: cubic, linear "
                    "or geometric")
    ap.add_argument("--dual-kp", type=float, default=SearchConfig.dual_kp, help="proportional gain on log lambda "
                    "(PI control; 0: pure dual ascent)")
    ap.add_argument("--latency-penalty", default=SearchConfig.latency_penalty, help="linear (lambda * latency "
                    "ratio) or hinge (lambda * max(0, ratio - target): no pull below the target)")
    ap.add_argument("--prune-after-warmup", action="store_true", help="fix the widths (at the target) when the "
                    "target warm-up ends and train the rest of the search at them (needs --target-warmup > 0)")
    ap.add_argument("--float-activations", action="store_true", help="fine-tune and score with float activations "
                    "(the behaviour before activation fake-quantization)")
    ap.add_argument("--reference-accuracy", type=float, default=10.0, help="--fronts: hypervolume reference")
    ap.add_argument("--fronts-report", default=None, metavar="DIR", help="rewrite DIR/fronts.md and fronts.png "
                    "from DIR/fronts.json (no training)")
    ap.add_argument("--aggregation-check", action="store_true", help="measured vs summed vs aggregated "
                    "predictions of --record-models random variants (the shipped predictor unless --predictor)")
    args = ap.parse_args()
    if args.fronts_report:
        return remake_fronts_report(Path(args.fronts_report))
    for flag, kw in (("--gate-lr", {"gate_lr": args.gate_lr}), ("--dual-lr", {"dual_lr": args.dual_lr}),
                     ("--target-warmup", {"target_warmup": args.target_warmup, "target": 0.5}),
                     ("--target-curve", {"target_curve": args.target_curve}), ("--dual-kp", {"dual_kp": args.dual_kp}),
                     ("--latency-penalty", {"latency_penalty": args.latency_penalty}),
                     ("--prune-after-warmup", {"prune_after_warmup": args.prune_after_warmup, "target": 0.5,
                                               "target_warmup": args.target_warmup})):
        try:
            SearchConfig(**kw)
        except SearchError as e:
            ap.exit(2, f"{flag}: {e}\n")
    if args.checkpoint:
        load_state_file(args.checkpoint, "--checkpoint")   # a missing file is refused before any work
    if args.fronts:
        return run_fronts(args)
    if args.aggregation_check:
        return run_aggregation_check(args)
    if args.full:
        args.train_limit, args.val_limit, args.epochs = None, None, "20,100,40"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    warnings.simplefilter("ignore", WorkloadWarning)
    pre, srch, ft = (int(x) for x in args.epochs.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def say(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    task = make_task(args.task, args.model, batch_size=args.batch_size, train_limit=args.train_limit or None,
                     val_limit=args.val_limit or None, seed=args.seed)
    opts = SpaceOptions(bits=True, a_bits=8, tile=32 if args.device.startswith("asic-tpu") else 1,
                        bit_levels=tuple(int(b) for b in args.bit_levels.split(",")))
    space = SearchSpace.from_ref(task.ref, opts)
    if args.predictor:
        from hwloop.predict.io import load_predictor

        pred = load_predictor(args.predictor)
        pinfo = {"layers": int(pred.n_train_), "models": 0, "record_s": 0.0, "holdout_mape": float("nan"),
                 "holdout_within_10pct": float("nan"), "reused": args.predictor}
    else:
        pred, pinfo = record_and_fit(space, args.device, args.record_models, args.seed, out)
    say(f"predictor ({pinfo.get('kind_reason', 'reused')}): {pinfo['layers']} layers of {pinfo['models']} random variants measured on {args.device} in "
        f"{pinfo['record_s']:.1f} s; hold-out MAPE {pinfo['holdout_mape']:.1%}, within 10%: "
        f"{pinfo['holdout_within_10pct']:.1%}")
    example = task.ref.example_input()
    aggregate = "sum" if args.device.startswith("asic") else "calibrated"  # what the op-by-op measurement sums

    def start_model() -> torch.nn.Module:
        net = task.ref.build().train()
        if args.checkpoint:
            net.load_state_dict(load_state_file(args.checkpoint, "--checkpoint"))
        return net

    # --- baseline: the unpruned model trained for the same schedule length (from the checkpoint: trained further
    # for as many epochs as search + fine-tune, the same budget the search gets)
    base = start_model()
    acc_start = task.eval_fn(base) if args.checkpoint else float("nan")
    base_epochs = srch + ft if args.checkpoint else pre + srch + ft
    rb = train_epochs(base, task.train, base_epochs, args.lr, progress=True, desc="baseline")
    acc_base = task.eval_fn(base)
    orig_plan = CompressionPlan(base=task.ref.to_dict())
    m_base = measure_compressed(args.device, base, orig_plan, example=example)["latency_ms"]
    p_base = predict_compressed(pred, base, example, None, aggregate=aggregate)
    say(f"baseline: {base_epochs} epochs in {rb['seconds']:.1f} s, accuracy {acc_base:.2f}%"
        + (f" (checkpoint {acc_start:.2f}%)" if args.checkpoint else "")
        + f", measured {m_base:.4f} ms, predicted {p_base:.4f} ms")

    # --- shared pretraining (none from a checkpoint)
    model = start_model()
    pre_eff = 0 if args.checkpoint else pre
    rp = train_epochs(model, task.train, pre_eff, args.lr, progress=True, desc="pretrain") if pre_eff else {"seconds": 0.0}
    acc_pre = acc_start if args.checkpoint else task.eval_fn(model)
    say(f"start: {'checkpoint ' + args.checkpoint if args.checkpoint else f'pretrained {pre} epochs'} in "
        f"{rp['seconds']:.1f} s, accuracy {acc_pre:.2f}%")

    results = {}
    for label in [m.strip() for m in args.methods.split(",")]:
        sp = SearchSpace.from_ref(task.ref, opts, model=model)
        lat: PredictorLatency | SurrogateLatency
        if label == "flops":
            lat = SurrogateLatency(sp, bits_aware=False)
            target = args.flops_target or (results["predictor"]["macs"] / results["predictor"]["original_macs"]
                                           if "predictor" in results else args.target)
        elif label == "predictor":
            lat, target = PredictorLatency(sp, pred, progress=True, aggregate=aggregate), args.target
        else:
            raise SystemExit(f"--methods: {label!r} is unknown; allowed: predictor, flops")
        cfg = SearchConfig(search_epochs=srch, finetune_epochs=ft, lr=args.lr, target=target, tile=opts.tile,
                           seed=args.seed, recalibrate_batches=args.recalibrate_batches, gate_lr=args.gate_lr,
                           quantize_activations=not args.float_activations, fill_budget=not args.no_fill_budget,
                           **target_schedule(args))
        res = make_method("l1l2", l1l2_config(cfg)).run(MethodContext(
            model=model, ref=task.ref, space=sp, train=task.train, eval_fn=task.eval_fn, latency=lat, target=target,
            seed=args.seed, base_accuracy=acc_pre, log=lambda m, lb=label: say(f"[{lb}] {m}"),
            progress=True)).candidates[0]
        save_compressed(res.model, res.plan, out / label)
        meas = measure_compressed(args.device, res.model, res.plan, example=example)["latency_ms"]
        predicted = predict_compressed(pred, res.model, example, res.plan, aggregate=aggregate)
        macs = sum(s.macs for s in extract_layers(res.model, example) if s.op in ("conv2d", "linear"))
        omacs = sum(s.macs for s in extract_layers(model, example) if s.op in ("conv2d", "linear"))
        total_s = rp["seconds"] + sum(res.seconds.values())
        results[label] = {
            "target": target, "gate_lr": cfg.gate_lr, **target_schedule(args), "history": res.history,
            "soft_final_ratio": res.extra["soft_final"] / res.original, "predicted_ratio": res.predicted_ratio,
            "hard_search_ratio": res.search_ratio, "budget_status": res.status, "budget_reason": res.status_reason,
            "accuracy": res.accuracy, "accuracy_extracted": res.accuracy_extracted,
            "measured_ms": meas, "predicted_ms": predicted, "prediction_error": predicted / meas - 1,
            "measured_reduction": 1 - meas / m_base, "accuracy_drop": acc_base - (res.accuracy or 0.0),
            "macs": macs, "original_macs": omacs, "params": sum(p.numel() for p in res.model.parameters()),
            "seconds": {"pretrain": rp["seconds"], **res.seconds, "total": total_s},
            "cost_ratio": total_s / rb["seconds"], "plan": res.plan.to_dict(), "sizes": res.sizes,
            "mean_w_bits": float(np.mean(list(res.plan.w_bits.values()))) if res.plan.w_bits else 32.0,
        }
        say(f"[{label}] measured {meas:.4f} ms ({1 - meas / m_base:.1%} lower than baseline), predicted "
            f"{predicted:.4f} ms ({predicted / meas - 1:+.1%}), accuracy {res.accuracy:.2f}% "
            f"(baseline {acc_base:.2f}%), MACs {macs / omacs:.1%}, wall {total_s:.1f} s = "
            f"{total_s / rb['seconds']:.2f} x baseline training")

    report = {"args": vars(args), "predictor": pinfo, "baseline": {"accuracy": acc_base, "measured_ms": m_base,
              "predicted_ms": p_base, "seconds": rb["seconds"], "epochs": base_epochs, "pretrained_accuracy": acc_pre}, "runs": results,
              "torch_threads": torch.get_num_threads()}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    md = bench_markdown(report)
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "bench.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    plot_bench(report, out / "latency_vs_accuracy.png")
    print()
    print(md)
    return 0


def cli() -> int:
    """:func:`main` with the package's one-line errors (bad option values, a missing checkpoint) as exit code 2."""
    try:
        return main()
    except HwloopError as e:
        print(f"bench_search: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
