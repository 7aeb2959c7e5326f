"""Diagnostic of HALOC's architecture search (issue 18): per architecture step, ``E[LAT]/LAT₀``, the argmax
ratio, ``λ`` and the logits' gradient norms from the task loss (CE) and from the latency term.

Digits + the small CNN (pre-trained 2 epochs on 512 images), a synthetic cost table shaped like asic-tpu32's
(a Tucker-2 branch costs ``0.15 + 1.2·r/r_max`` of the dense layer: the full rank costs more than dense), a
passive rest of 0.5 of one layer. Run::

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/diag_haloc.py --target 0.9 > diag.log
"""

from __future__ import annotations

import argparse
import sys

import torch

from hwloop.methods.haloc.costs import ExpectedLatency
from hwloop.methods.haloc.mixed import DENSE, mixed_layers, rank_level, wrap_model
from hwloop.methods.haloc.search import alternate
from hwloop.search.train import make_task, train_epochs

LEVELS = {"features.3": [DENSE, *[rank_level(r) for r in (2, 4, 6, 8, 10, 12, 14, 16)]],
          "features.7": [DENSE, *[rank_level(r) for r in (4, 8, 12, 16, 20, 24, 28, 32)]]}
RMAX = {"features.3": 16, "features.7": 32}


class Table:
    unit, source = "ms", "synthetic"

    def cost(self, layer: str, level: tuple) -> float:
        return 1.0 if tuple(level) == DENSE else 0.15 + 1.2 * level[1] / RMAX[layer]

    def model_cost(self, choice: dict, base: float = 0.0) -> float:
        return 0.5 + sum(self.cost(n, lv) for n, lv in choice.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--sampling", default="gumbel")
    ap.add_argument("--arch-lr", type=float, default=0.1)
    ap.add_argument("--dual-lr", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch-paths", type=int, default=0, help="gumbel: branches per architecture step (0: all)")
    ap.add_argument("--init-scale", type=float, default=2.0, help="0: uniform initial logits")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = make_task("digits", "small_cnn", train_limit=512, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    torch.manual_seed(a.seed)
    wrapped = wrap_model(model.eval(), LEVELS)
    layers = mixed_layers(wrapped)
    for m in layers.values():
        m.mode = a.sampling
    exp = ExpectedLatency(Table(), layers)
    trace: list[dict[str, float]] = []
    alternate(wrapped, exp, task.train, epochs=a.epochs, lr=0.01, arch_lr=a.arch_lr, momentum=0.9,
              weight_decay=5e-4, lam=1.0, dual_lr=a.dual_lr, mu=1.0, target=a.target, trace=trace,
              init_scale=a.init_scale, arch_paths=a.arch_paths)
    print(f"target {a.target} sampling {a.sampling} arch_lr {a.arch_lr} dual_lr {a.dual_lr} init_scale {a.init_scale} arch_paths {a.arch_paths}")
    print("step  E[LAT]/LAT0  argmax  lambda   |g_CE|     |g_lat|   cos")
    for t in trace:
        print(f"{int(t['step']):4d}  {t['expected_ratio']:.3f}        {t['argmax_ratio']:.3f}   {t['lam']:.3g}"
              f"  {t['grad_ce']:.2e}  {t['grad_lat']:.2e}  {t['cos_ce_lat']:+.2f}")
    print("final argmax:", {n: m.levels[m.argmax()] for n, m in layers.items()},
          "cheapest ratio", f"{exp.choice_cost({n: m.levels[int(exp.costs[n].argmin())] for n, m in layers.items()}) / exp.original:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
