"""What the differentiable latency term costs in a search step on CIFAR ResNet-20 (issue 16, "Must show": ≤ 5%).

One search step of ``l1l2`` is: the gated model's forward and task loss, the latency term
``λ · latency(gm.sizes()) / latency₀`` (with ``latency_penalty = "hinge"`` also the latency of the hard sizes,
without gradient, as ``differentiable_search`` does), backward, the two optimiser steps and the gate projection.
This times, interleaved round by round on one thread (so load on the machine hits every variant alike):

* ``plain``: the same step without the latency term (the gated model, task loss only);
* ``<model>``: the step with the term, for each latency model: the learned predictors shipped for asic-tpu32
  (summed per op) and for local-cpu (through its whole-model aggregation), both as the harness builds them
  (``select_latency_model(objective="learned")``), and the bit-scaled surrogate;
* ``term <model>``: the term alone (its forward and backward on the gate sizes), many times.

It prints the medians in wall-clock and in thread CPU time (what this thread computed: on a loaded machine the
wall clock stretches with the wait for a core, the thread clock does not), the term's share of a plain step (term
alone / plain; and (step − plain) / plain, noisier), the machine load before and after, and which checkpoint and
which hwloop tree gave the figures; ``--out`` writes them as JSON.

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_latency_term.py \\
        --checkpoint ../shared/checkpoints/resnet20_cifar10_e35.safetensors --rounds 15 --out /tmp/latency_term.json

Batch 128 random CIFAR-shaped images (timing does not depend on the pixel values) and random labels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _step(gm: Any, opt_w: Any, opt_g: Any, x: torch.Tensor, y: torch.Tensor, latency: Any, l0: float,
          hinge: bool) -> None:
    from hwloop.methods.budget import hard_sizes

    task = nn.functional.cross_entropy(gm(x), y)
    if latency is None:
        loss = task
    else:
        ratio_t = latency(gm.sizes()) / l0
        if hinge:
            with torch.no_grad():
                hard_t = latency(hard_sizes(gm, None)) / l0
            ratio_t = ratio_t + (hard_t - ratio_t).detach()
            loss = task + 1.0 * torch.clamp(ratio_t - 0.5, min=0.0)
        else:
            loss = task + 1.0 * ratio_t
    opt_w.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_w.step()
    opt_g.step()
    gm.project_()


def _term(gm: Any, latency: Any, l0: float, hinge: bool) -> None:
    from hwloop.methods.budget import hard_sizes

    sizes = gm.sizes()
    ratio_t = latency(sizes) / l0
    if hinge:
        with torch.no_grad():
            hard_t = latency(hard_sizes(gm, None)) / l0
        ratio_t = ratio_t + (hard_t - ratio_t).detach()
    ratio_t.backward()
    for p in gm.gate_parameters():
        p.grad = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared/checkpoints/resnet20_cifar10_e35.safetensors"),
                    help="ResNet-20 CIFAR-10 weights (safetensors state dict)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (one step of every variant each)")
    ap.add_argument("--term-repeats", type=int, default=30, help="timings of the term alone per latency model")
    ap.add_argument("--penalty", choices=("hinge", "linear"), default="hinge",
                    help="the harness's l1l2 uses hinge (the term also evaluates the hard sizes)")
    ap.add_argument("--bits", action="store_true", help="search bits too (2/4/8, a_bits 8) and tile 32, as "
                    "search/cifar10_resnet20_asic.toml; default: channels only, as the methods harness")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    import hwloop
    from hwloop.compress.gated import GatedModel
    from hwloop.devices.base import machine_load
    from hwloop.models import ModelRef
    from hwloop.search.latency import SurrogateLatency, select_latency_model
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_optimizer

    load0 = machine_load()
    print(f"hwloop from {Path(hwloop.__file__).parent}", flush=True)
    ref = ModelRef("resnet20")
    model = ref.build()
    model.load_state_dict(load_file(args.checkpoint))
    opts = SpaceOptions(channels=True, bits=True, bit_levels=(2, 4, 8), a_bits=8, tile=32) if args.bits \
        else SpaceOptions(channels=True)
    space = SearchSpace.from_ref(ref, opts, model=model)
    lats: dict[str, Any] = {}
    t0 = time.perf_counter()
    for dev in ("asic-tpu32", "local-cpu"):
        lats[f"predictor {dev}"] = select_latency_model(
            space, predictor_path=str(ROOT / "measurements" / dev / "predictor.json"), device=dev, objective="learned")
    lats["surrogate"] = SurrogateLatency(space, bits_aware=True)
    build_s = time.perf_counter() - t0
    l0 = {k: v.original() for k, v in lats.items()}
    agg = {k: getattr(v, "aggregate", "-") for k, v in lats.items()}

    torch.manual_seed(0)
    gm = GatedModel(space, model, init_spread=0.1)
    gm.train()
    opt_w = make_optimizer(gm.weight_parameters(), 0.02, 0.9, 5e-4)
    opt_g = torch.optim.Adam(gm.gate_parameters(), lr=0.05)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    hinge = args.penalty == "hinge"
    variants: list[tuple[str, Any]] = [("plain", None), *lats.items()]
    for name, lat in variants:  # warm-up
        _step(gm, opt_w, opt_g, x, y, lat, l0.get(name, 1.0), hinge)
    times: dict[str, list[float]] = {n: [] for n, _ in variants}
    cpu: dict[str, list[float]] = {n: [] for n, _ in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, lat in order:
            t, c = time.perf_counter(), time.thread_time()
            _step(gm, opt_w, opt_g, x, y, lat, l0.get(name, 1.0), hinge)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.thread_time() - c)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n, _ in variants),
              flush=True)
    term: dict[str, list[float]] = {n: [] for n in lats}
    term_cpu: dict[str, list[float]] = {n: [] for n in lats}
    for _ in range(args.term_repeats):
        for name, lat in lats.items():
            t, c = time.perf_counter(), time.thread_time()
            _term(gm, lat, l0[name], hinge)
            term[name].append(time.perf_counter() - t)
            term_cpu[name].append(time.thread_time() - c)
    load1 = machine_load()

    med = {n: statistics.median(v) for n, v in times.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    plain, plain_cpu = med["plain"], med_cpu["plain"]
    rows = []
    for name in lats:
        tm, tc = statistics.median(term[name]), statistics.median(term_cpu[name])
        rows.append({"latency_model": name, "aggregate": agg[name], "step_ms": med[name] * 1e3,
                     "term_ms": tm * 1e3, "term_share": tm / plain, "step_excess": med[name] / plain - 1.0,
                     "step_cpu_ms": med_cpu[name] * 1e3, "term_cpu_ms": tc * 1e3, "term_cpu_share": tc / plain_cpu,
                     "step_cpu_excess": med_cpu[name] / plain_cpu - 1.0})
    res = {"checkpoint": args.checkpoint, "batch": args.batch, "threads": torch.get_num_threads(),
           "penalty": args.penalty, "space": "channels+bits, tile 32" if args.bits else "channels",
           "rounds": args.rounds, "term_repeats": args.term_repeats, "plain_step_ms": plain * 1e3,
           "plain_step_cpu_ms": plain_cpu * 1e3,
           "latency_models_built_s": round(build_s, 2), "load_before": load0, "load_after": load1, "rows": rows,
           "torch": torch.__version__, "python": sys.version.split()[0], "hwloop": str(Path(hwloop.__file__).parent)}
    print(f"checkpoint {args.checkpoint}; batch {args.batch}, {torch.get_num_threads()} thread, penalty "
          f"{args.penalty}, space {res['space']}; machine load {load0['load1']} -> {load1['load1']} on "
          f"{load0['cores']} cores")
    print(f"plain search step (gated ResNet-20, no latency term): median {plain * 1e3:.1f} ms wall, "
          f"{plain_cpu * 1e3:.1f} ms thread CPU, over {args.rounds} rounds")
    for clock, pre in (("wall clock", ""), ("thread CPU time (what this thread computed; robust to load)", "cpu_")):
        print(f"{clock}:")
        print(f"  {'latency model':<22} {'aggregate':<11} {'step ms':>8} {'term ms':>8} {'term/plain':>10} "
              f"{'step/plain-1':>12}")
        for r in rows:
            print(f"  {r['latency_model']:<22} {r['aggregate']:<11} {r['step_' + pre + 'ms']:8.1f} "
                  f"{r['term_' + pre + 'ms']:8.2f} {r['term_' + pre + 'share']:10.2%} {r['step_' + pre + 'excess']:12.2%}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
