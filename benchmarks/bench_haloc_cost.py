"""HALOC's compute against one training run of the same length (issue 18, "Search + fine-tune cost").

Per batch of 128 CIFAR-10 images, on one thread, interleaved round by round so that a machine load which drifts
hits all three alike: (a) one HALOC search pair (a weight step + an architecture step: Gumbel straight-through with
two paths, the feature-map regulariser, the candidates the method builds on asic-tpu32: steps from the measured
staircase, ``max_candidates = 8``, dense allowed), (b) two training steps of the dense ResNet-20, (c) two fine-tune
steps of the extracted model of the 0.7 run (its plan). Each is timed by the thread's CPU time (what the work costs,
little moved by other processes) and by the wall clock; the figures are medians over rounds.

The schedule of docs/haloc.md, S search batches (S/2 pairs) + S fine-tune batches, then costs ``S/2·(a + c)``
against ``S·b`` for a training run of the same length (2·S dense batches: the same training images).

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc_cost.py --rounds 8 \\
        --out search/results/haloc/cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONVERGED = ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"
PLAN = ROOT / "search/results/haloc/asic_fix120/plan_asic-tpu32_0.7_0_1.0.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(CONVERGED))
    ap.add_argument("--plan", default=str(PLAN), help="the extracted model's plan (the fine-tune's model)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120, help="S: search batches = fine-tune batches of the schedule")
    ap.add_argument("--out", default=str(ROOT / "search/results/haloc/cost.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.compress.extract import from_plan, get_module, output_layers
    from hwloop.compress.plan import CompressionPlan
    from hwloop.data import make_loaders
    from hwloop.methods.haloc.costs import ExpectedLatency, layer_specs, probe_steps, rank_ladder, table_levels
    from hwloop.methods.haloc.mixed import DENSE, eligible_layers, max_equal_rank, mixed_layers, rank_level, wrap_model
    from hwloop.methods.haloc.search import alternate, init_logits
    from hwloop.models import ModelRef
    from hwloop.search.costtable import build_cost_table
    from hwloop.search.train import train_epochs

    ref = ModelRef("resnet20", {}, input_shape=(3, 32, 32))
    base = ref.build()
    base.load_state_dict(load_file(args.checkpoint))
    base.eval()
    example = ref.example_input()
    names = eligible_layers(base, output_layers(base, example))
    specs = layer_specs(base, example)

    def build(lv: Any, passive: Any) -> Any:
        return build_cost_table(lv, device="asic-tpu32", source="measure", progress=False, passive=passive)

    steps = probe_steps(base, specs, names, build)
    levels = {n: [DENSE] + [rank_level(r) for r in rank_ladder(max_equal_rank(get_module(base, n)), steps[n], 8)]
              for n in names}
    table = build(*table_levels(specs, levels))
    wrapped = wrap_model(base, levels)
    for m in mixed_layers(wrapped).values():
        m.mode = "gumbel"
    exp = ExpectedLatency(table, mixed_layers(wrapped))
    dense = ref.build()
    dense.load_state_dict(load_file(args.checkpoint))
    small = from_plan(CompressionPlan.from_json(Path(args.plan).read_text()))
    train, _ = make_loaders("cifar10", 128, root=args.data_root, holdout=5000, seed=0)
    it = iter(train)
    batches = [next(it) for _ in range(2 * args.rounds + 1)]
    init_logits(wrapped, batches[-1][0], 2.0)

    def timed(fn: Any, arg: Any) -> tuple[float, float]:
        c0, w0 = time.thread_time(), time.perf_counter()
        fn(arg)
        return time.thread_time() - c0, time.perf_counter() - w0

    jobs = {
        "search_pair": lambda b: alternate(wrapped, exp, b, epochs=1, lr=0.01, arch_lr=0.1, momentum=0.9,
                                           weight_decay=5e-4, lam=1.0, dual_lr=0.5, mu=1.0, target=0.7,
                                           max_steps=2, arch_paths=2),
        "dense_2": lambda b: train_epochs(dense, b, 1, 0.01, max_steps=2),
        "finetune_2": lambda b: train_epochs(small, b, 1, 0.01, max_steps=2),
    }
    rows: list[dict[str, Any]] = []
    order = list(jobs)
    for r in range(args.rounds):
        b = batches[2 * r:2 * r + 2]
        row: dict[str, Any] = {"round": r}
        for k in order[r % 3:] + order[:r % 3]:   # rotate the order
            row[k] = timed(jobs[k], b)
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] round {r}: " + ", ".join(f"{k} cpu {row[k][0]:.2f}s wall {row[k][1]:.2f}s"
                                                                      for k in order), flush=True)
    med = {k: {"cpu_s": statistics.median(x[k][0] for x in rows[1:]),
               "wall_s": statistics.median(x[k][1] for x in rows[1:])} for k in order}   # round 0 = warm-up
    s = args.steps
    out: dict[str, Any] = {"rounds": rows, "median_per_2_batches": med, "steps": s, "batch": 128, "threads": 1}
    for clock in ("cpu_s", "wall_s"):
        haloc = s / 2 * med["search_pair"][clock] + s / 2 * med["finetune_2"][clock]
        plain = s * med["dense_2"][clock]
        out[f"haloc_{clock}"] = haloc
        out[f"train_same_length_{clock}"] = plain
        out[f"ratio_{clock}"] = haloc / plain
        out[f"search_batch_over_dense_batch_{clock}"] = med["search_pair"][clock] / med["dense_2"][clock]
        out[f"finetune_batch_over_dense_batch_{clock}"] = med["finetune_2"][clock] / med["dense_2"][clock]
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"HALOC ({s} search + {s} fine-tune batches) / training {2 * s} dense batches: "
          f"CPU {out['ratio_cpu_s']:.2f}x, wall {out['ratio_wall_s']:.2f}x; a search batch costs "
          f"{out['search_batch_over_dense_batch_cpu_s']:.2f}x a dense training batch (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
