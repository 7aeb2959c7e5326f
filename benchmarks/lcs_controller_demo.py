"""LCS run-time controller demo: one family, a changing latency budget, α switched at every step.

Loads an exported family (``--family DIR``, e.g. ``search/results/lcs/family`` from ``bench_lcs.py``) or trains a
small width family on digits in seconds; fills its α → latency table on the device from the shared layer cost
table; then follows a budget trace (a slow sine for battery/thermal state plus load spikes from
:func:`~hwloop.methods.lcs.controller.budgets_from_load`). Misses are counted on latencies measured live on the device
(whole member), not on the table ``select`` used. Writes ``<out>.json`` and ``<out>.png``.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lcs_controller_demo.py --device asic-tpu32 --out /tmp/lcs_demo
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwloop.methods.lcs import LcsFamily, default_grid, train_lines
from hwloop.methods.lcs.controller import LcsController, budgets_from_load, plot_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", help="an exported family directory (default: train one on digits)")
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--grid", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="lcs_controller_demo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    grid = default_grid(args.grid)
    if args.family:
        fam = LcsFamily.load(args.family)
        missing = [a for a in grid if a not in fam.accuracy]
        if missing:
            print(f"note: no recorded accuracy for alpha {missing}; select falls back to the largest alpha that fits")
    else:
        from hwloop.search.train import make_task

        task = make_task("digits", "small_cnn", model_kwargs={"norm": "in"}, seed=args.seed)
        torch.manual_seed(args.seed)
        fam = LcsFamily.create(task.ref, "width")
        h = train_lines(fam.net, fam.state, task.train, epochs=args.epochs, lr=0.05, seed=args.seed)
        print(f"trained a digits width family: {h['seconds']:.0f} s, loss {h['loss']:.3f}")
        fam.evaluate(task.eval_fn, grid)
    table = fam.measure(args.device, grid, source="table")
    print("alpha -> table ms / accuracy:", {a: (round(table[a], 5), fam.accuracy.get(a)) for a in grid})
    lo, hi = min(table.values()), max(table.values())
    g = torch.Generator().manual_seed(args.seed)
    load = [min(0.9, max(0.0, 0.35 + 0.3 * math.sin(2 * math.pi * t / args.steps)
                          + (0.35 if float(torch.rand((), generator=g)) < 0.15 else 0.0)))
            for t in range(args.steps)]
    budgets = budgets_from_load(load, hi * 1.05)
    budgets = [max(b, lo * 0.95) for b in budgets]
    ctl = LcsController(fam, args.device)
    run = ctl.run(budgets)
    s = run.summary()
    print(json.dumps(s))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"load": load, **run.to_dict()}, indent=1) + "\n")
    plot_run(run, str(out.with_suffix(".png")))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
