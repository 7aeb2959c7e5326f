"""Benchmark of HALOC (``hwloop.methods.haloc``, issue 18) on CIFAR-10 ResNet-20; docs/haloc.md quotes its output.

Phases (each unit of work is stored in ``--out``/results.json as soon as it is done; a rerun skips what is there):

1. ``dense``: the checkpoint's accuracy on the evaluation images and its MACs.
2. ``uniform``: uniform-rank Tucker-2 factorisation of every factorisable conv (rank = a fraction of each layer's
   largest equal rank, HOSVD, no training) measured against the dense model on each device: what
   factorisation can reach there, so only reachable shared targets (0.5 / 0.6 / 0.7) are searched; also the lower
   bound of HALOC's own candidate space (each layer at its cheapest candidate, from the cost table).
3. ``haloc``: HALOC at each reachable target (``--targets``), seeds ``--seeds``; measured on the device.
4. ``ablation``: the same without the feature-map regulariser (``mu = 0``), first reachable target, seed 0.
5. ``uniform_ft``: uniform-rank factorisation at HALOC's measured latency (HALOC's ``ranks = "uniform"``: of the
   uniform assignments over rank fractions k/64, the one with the largest cost-table latency at or below HALOC's
   measured ratio; on asic-tpu32 the table is the measurement), fine-tuned with HALOC's fine-tune schedule
   (``--uniform-ft-epochs 2``: as many images as HALOC's search + fine-tune).
6. ``train_ref``: the dense model trained on from the checkpoint for as many batches as HALOC's search + fine-tune
   used (the cost reference and the accuracy reached by plain training of the same length).

Reduced schedule (2 shared CPU cores), what docs/haloc.md quotes::

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc.py --steps 40 > haloc.log 2>&1

Validation split: HALOC's context trains on the 45,000 training images left by ``make_loaders(holdout=5000)``;
accuracies are on ``--eval-limit`` images of the CIFAR-10 test set (the same fixed subset everywhere).
"""

from __future__ import annotations

import argparse
import copy
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
FRACS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
SOURCES = {"asic-tpu32": "measure", "local-cpu": "predictor"}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    from hwloop.workload import WorkloadWarning, extract_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        return int(sum(s.macs for s in extract_layers(copy.deepcopy(model).eval(), example)
                       if s.op in ("conv2d", "linear")))


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)


def uniform_plan(ref: Any, base: torch.nn.Module, names: list[str], frac: float) -> Any:
    from hwloop.compress.actions import LowRank
    from hwloop.compress.extract import get_module
    from hwloop.compress.plan import CompressionPlan
    from hwloop.methods.haloc.mixed import max_equal_rank

    acts = []
    for n in names:
        r = max(1, round(frac * max_equal_rank(get_module(base, n))))
        acts.append(LowRank(n, "tucker2", (r, r)))
    return CompressionPlan(base=ref.to_dict(), actions=acts, meta={"uniform_frac": frac})


def report(d: dict[str, Any]) -> str:
    """Markdown tables of a results.json (what docs/haloc.md quotes)."""
    def f(v: Any, p: int = 3) -> str:
        return "—" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))

    acc0 = d["dense"]["accuracy"]
    lines = [(f"checkpoint `{d.get('checkpoint')}`, dense {acc0:.2f}% on {d['schedule']['eval_limit']} test images, "
             f"schedule {d['schedule']}"), "",
             "| device | rank fraction | measured ratio | 95% interval | MACs ratio |", "|---|---|---|---|---|"]
    for k, v in d.items():
        if k.startswith("uniform/"):
            ci = v.get("ratio_ci")
            lines.append(f"| {k.split('/')[1]} | {v['frac']} | {v['ratio']:.3f} | "
                         f"{'—' if not ci else f'{ci[0]:.3f}–{ci[1]:.3f}'} | {v['macs_ratio']:.3f} |")
    for k, v in d.items():
        if k.startswith("bound/"):
            lines.append(f"\n{k}: cheapest level of every layer {v['min_ratio']:.3f}x ({v['source']}); "
                         f"{sum(v['factorise_helps'].values())}/{len(v['factorise_helps'])} layers cheaper factorised")
    lines += ["", ("| run | target | accuracy (Δ vs dense) | after extraction | measured ratio | predicted | search end "
              "| E[LAT] end | MACs ratio (FLOPs reduction) | status | search+ft wall s |"), "|---" * 11 + "|"]
    for k, v in d.items():
        if k.startswith(("haloc/", "ablation/")):
            lines.append(
                f"| {k} | {v['target']} | {v['accuracy']:.2f} ({v['accuracy'] - acc0:+.2f}) | "
                f"{f(v['accuracy_extracted'], 2)} | {f(v['measured_ratio'])} | {f(v['predicted_ratio'])} | "
                f"{f(v['search_ratio'])} | {f(v['extra'].get('expected_ratio'))} | {v['macs_ratio']:.3f} "
                f"({100 * (1 - v['macs_ratio']):.1f}%) | {v['status']} | "
                f"{sum(x for p, x in v['seconds'].items() if p in ('search', 'finetune')):.0f} |")
    lines += ["", ("| uniform fine-tuned | rank fraction | measured ratio | HALOC measured | accuracy | after extraction |"
              " MACs ratio |"), "|---" * 7 + "|"]
    for k, v in d.items():
        if k.startswith("uniform_ft/"):
            lines.append(f"| {k} | {v['frac']} | {v['measured_ratio']:.3f} | {v['haloc_measured_ratio']:.3f} | "
                         f"{v['accuracy']:.2f} | {v['accuracy_extracted']:.2f} | {v['macs_ratio']:.3f} |")
    if d.get("train_ref"):
        t = d["train_ref"]
        lines.append(f"\ntrain_ref: {t['batches']} batches of plain training in {t['wall_s']:.0f} s, "
                     f"accuracy {t['accuracy']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="ResNet-20 safetensors state_dict (default: the converged "
                    "checkpoint if it exists, else ../shared/checkpoints/resnet20_cifar10_e35.safetensors)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--out", default=str(ROOT / "search/results/haloc"))
    ap.add_argument("--devices", default="asic-tpu32,local-cpu")
    ap.add_argument("--targets", default="0.5,0.6,0.7")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=40, help="batches of the search and of the fine-tune")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--sampling", default="gumbel")
    ap.add_argument("--arch-lr", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--dual-lr", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--arch-paths", type=int, default=2,
                    help="gumbel: branches an architecture step runs (0: all; the method's default is 0)")
    ap.add_argument("--init-scale", type=float, default=2.0, help="initial logits from the branches' fidelity (0: uniform)")
    ap.add_argument("--tau-end", type=float, default=1.0, help="softmax temperature at the end of the search")
    ap.add_argument("--uniform-ft-epochs", type=int, default=1,
                    help="uniform_ft: fine-tune passes of --steps batches (1: HALOC's fine-tune; 2: its search + fine-tune)")
    ap.add_argument("--uniform-ratio", type=float, default=None,
                    help="uniform_ft: the latency ratio to land at or below (default: HALOC's measured ratio from "
                         "--out; give it when HALOC runs elsewhere and the uniform choice is the same for it)")
    ap.add_argument("--phases", default="dense,uniform,haloc,ablation,uniform_ft,train_ref")
    ap.add_argument("--report", action="store_true", help="print the Markdown tables of --out/results.json and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Results(Path(args.out) / "results.json").data))
        return 0
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.compress.extract import compress_, get_module, output_layers
    from hwloop.data import make_loaders
    from hwloop.methods import make_method
    from hwloop.methods.base import MethodContext
    from hwloop.methods.haloc.costs import layer_specs, table_levels
    from hwloop.methods.haloc.mixed import DENSE, eligible_layers, max_equal_rank, rank_level
    from hwloop.methods.measure import measure_candidates
    from hwloop.models import ModelRef
    from hwloop.search.costtable import build_cost_table
    from hwloop.search.latency import SurrogateLatency
    from hwloop.search.report import compare_compressed
    from hwloop.search.space import SearchSpace
    from hwloop.search.train import evaluate, random_subset, train_epochs

    ckpt = Path(args.checkpoint).resolve() if args.checkpoint else (CONVERGED if CONVERGED.exists() else E35).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out / "results.json")
    if res.get("checkpoint") not in (None, str(ckpt)):
        say(f"results.json was made from {res.get('checkpoint')}; start a new --out for {ckpt}")
        return 2
    res.put("checkpoint", str(ckpt))
    res.put("schedule", {"steps": args.steps, "batch": args.batch, "eval_limit": args.eval_limit,
                         "sampling": args.sampling, "arch_lr": args.arch_lr, "lam": args.lam, "dual_lr": args.dual_lr,
                         "lr": args.lr, "tau_end": args.tau_end, "arch_paths": args.arch_paths,
                         "init_scale": args.init_scale, "threads": 1})
    say(f"checkpoint {ckpt}")
    phases = set(args.phases.split(","))
    devices = args.devices.split(",")
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    ref = ModelRef("resnet20", {}, input_shape=(3, 32, 32))
    base = ref.build()
    base.load_state_dict(load_file(str(ckpt)))
    base.eval()
    example = ref.example_input()
    train, _ = make_loaders("cifar10", args.batch, root=args.data_root, holdout=5000, seed=0)
    _, test = make_loaders("cifar10", 500, root=args.data_root, seed=0)
    test = random_subset(test, args.eval_limit, 1)

    def eval_fn(m: torch.nn.Module) -> float:
        return evaluate(m, test)

    names = eligible_layers(base, output_layers(base, example))
    macs0 = macs(base, example)
    if res.get("dense") is None:
        t0 = time.perf_counter()
        res.put("dense", {"accuracy": eval_fn(base), "macs": macs0, "eval_s": time.perf_counter() - t0,
                          "layers": names})
    acc0 = res.get("dense")["accuracy"]
    say(f"dense: {acc0:.2f}% on {args.eval_limit} test images, {macs0 / 1e6:.2f} MMACs, {len(names)} layers")

    # ---- 2. uniform-rank factorisation: what each device can reach
    if "uniform" in phases:
        specs = layer_specs(base, example)
        for dev in devices:
            for frac in FRACS:
                key = f"uniform/{dev}/{frac}"
                if res.get(key) is not None:
                    continue
                plan = uniform_plan(ref, base, names, frac)
                net = compress_(copy.deepcopy(base), plan, example).eval()
                t0 = time.perf_counter()
                m = compare_compressed(dev, net, plan, base, example=example)
                res.put(key, {"frac": frac, "ratio": m["ratio"], "latency_ms": m["latency_ms"],
                              "original_ms": m["original_ms"], "ratio_ci": m.get("ratio_ci"),
                              "macs_ratio": macs(net, example) / macs0, "measure_s": time.perf_counter() - t0})
                say(f"{key}: measured {m['ratio']:.3f}x, MACs {res.get(key)['macs_ratio']:.3f}x")
            key = f"bound/{dev}"
            if res.get(key) is None:
                lv = {n: [DENSE] + [rank_level(r) for r in range(1, max_equal_rank(get_module(base, n)) + 1)]
                      for n in names}
                lvs, passive = table_levels(specs, lv)
                table = build_cost_table(lvs, device=dev, source=SOURCES.get(dev, "measure"), progress=False,
                                         passive=passive)
                dense = table.model_cost({n: DENSE for n in names})
                best = {n: min(table.levels(n), key=lambda x, n=n: table.cost(n, x)) for n in names}
                res.put(key, {"min_ratio": table.model_cost(best) / dense, "source": table.source,
                              "factorise_helps": {n: best[n] != DENSE for n in names},
                              "tucker_full_over_dense": {n: table.cost(n, rank_level(max_equal_rank(get_module(base, n))))
                                                         / table.cost(n, DENSE) for n in names}})
                say(f"{key}: the cheapest level of every layer gives {res.get(key)['min_ratio']:.3f}x "
                    f"({sum(res.get(key)['factorise_helps'].values())}/{len(names)} layers cheaper factorised)")

    def reachable(dev: str) -> list[float]:
        b = res.get(f"bound/{dev}")
        return [t for t in targets if b is None or b["min_ratio"] <= t]

    space = SearchSpace.from_ref(ref, model=base)

    def run_haloc(dev: str, target: float, seed: int, mu: float, ranks: str = "search", ft_epochs: int = 1,
                  tag: str = "") -> dict[str, Any]:
        ctx = MethodContext(model=base, ref=ref, space=space, train=train, eval_fn=eval_fn,
                            latency=SurrogateLatency(space), target=target, device=dev, seed=seed,
                            base_accuracy=acc0, log=say)
        cfg = {"search_epochs": 1, "max_steps": args.steps, "sampling": args.sampling,
               "arch_lr": args.arch_lr, "lam": args.lam, "dual_lr": args.dual_lr, "mu": mu, "lr": args.lr,
               "finetune_lr": args.lr, "cost_source": SOURCES.get(dev, "auto"), "recalibrate_batches": 8,
               "tau_end": args.tau_end, "arch_paths": args.arch_paths, "init_scale": args.init_scale,
               "ranks": ranks, "finetune_epochs": ft_epochs}
        r = make_method("haloc", cfg).run(ctx)
        measure_candidates(r, ctx)
        c = r.candidates[0]
        d = c.to_dict()
        d.pop("plan")
        d.update(macs_ratio=macs(c.model, example) / macs0, ranks=c.extra["ranks"], history=c.history,
                 flops_reduction=1 - macs(c.model, example) / macs0, delta_acc=(c.accuracy or 0) - acc0,
                 ledger_wall_s=ctx.ledger.total().wall_s if ctx.ledger else None, config=cfg)
        (out / f"plan_{tag}{dev}_{target}_{seed}_{mu}.json").write_text(c.plan.to_json())
        return d

    # ---- 3./4. HALOC and the ablation
    for dev in devices:
        for target in reachable(dev):
            for seed in seeds:
                key = f"haloc/{dev}/{target}/{seed}"
                if "haloc" in phases and res.get(key) is None:
                    res.put(key, run_haloc(dev, target, seed, 1.0))
                    d = res.get(key)
                    say(f"{key}: acc {d['accuracy']:.2f} ({d['delta_acc']:+.2f}) measured {d['measured_ratio']:.3f}x "
                        f"search_end {d['search_ratio']:.3f}x MACs {d['macs_ratio']:.3f}x {d['status']}")
        ok = reachable(dev)
        if "ablation" in phases and ok and dev == devices[0]:
            key = f"ablation/{dev}/{ok[-1]}/0"
            if res.get(key) is None:
                res.put(key, run_haloc(dev, ok[-1], 0, 0.0))
                d = res.get(key)
                say(f"{key}: acc {d['accuracy']:.2f} measured {d['measured_ratio']:.3f}x {d['status']}")

    # ---- 5. uniform-rank at HALOC's measured latency, same fine-tune
    if "uniform_ft" in phases:
        for dev in devices:
            for target in reachable(dev):
                h = res.get(f"haloc/{dev}/{target}/0")
                if args.uniform_ratio is not None:
                    h = {"measured_ratio": args.uniform_ratio}
                key = f"uniform_ft/{dev}/{target}"
                if h is None or res.get(key) is not None:
                    continue
                d = run_haloc(dev, float(h["measured_ratio"]), 0, 1.0, ranks="uniform",
                              ft_epochs=args.uniform_ft_epochs, tag="uniform_")
                d.update(frac=d["extra"]["uniform_frac"], haloc_measured_ratio=h["measured_ratio"],
                         finetune_batches=args.uniform_ft_epochs * args.steps)
                res.put(key, d)
                say(f"{key}: frac {d['frac']:.4f} measured {d['measured_ratio']:.3f}x (HALOC {h['measured_ratio']:.3f}x) "
                    f"acc {d['accuracy']:.2f} MACs {d['macs_ratio']:.3f}x")

    # ---- 6. plain training of the same length
    if "train_ref" in phases and res.get("train_ref") is None:
        net = copy.deepcopy(base)
        t0 = time.perf_counter()
        tr = train_epochs(net, train, 1, args.lr, max_steps=2 * args.steps)
        res.put("train_ref", {"batches": 2 * args.steps, "wall_s": time.perf_counter() - t0, "images": tr["images"],
                              "accuracy": eval_fn(net)})
        say(f"train_ref: {2 * args.steps} batches in {res.get('train_ref')['wall_s']:.0f} s, "
            f"acc {res.get('train_ref')['accuracy']:.2f}")
    # ---- 7. measure the searched structures again (a loaded machine disturbs the CPU's interleaved comparison)
    if "remeasure" in phases:
        from hwloop.compress.extract import from_plan
        from hwloop.compress.plan import CompressionPlan

        for k in [k for k in list(res.data) if k.startswith(("haloc/", "ablation/"))]:
            _, dev, target, seed = k.split("/")
            if dev not in devices or res.get(f"remeasure/{k}") is not None:
                continue
            mu = 0.0 if k.startswith("ablation/") else 1.0
            plan = CompressionPlan.from_json((out / f"plan_{dev}_{float(target)}_{seed}_{mu}.json").read_text())
            net = from_plan(plan)
            runs = [compare_compressed(dev, net, plan, base, example=example) for _ in range(3)]
            res.put(f"remeasure/{k}", [{"ratio": m["ratio"], "ratio_ci": m.get("ratio_ci"), "unstable": m.get("unstable"),
                                        "latency_ms": m["latency_ms"], "original_ms": m["original_ms"]} for m in runs])
            say(f"remeasure/{k}: ratios {[round(m['ratio'], 3) for m in runs]}")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
