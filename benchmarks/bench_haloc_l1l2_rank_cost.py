"""Does the l1l2 search with rank gates end at the latency of the model it exports? (issue 18)

A short l1l2 search (channels + rank gates, hinge, target warm-up, ``prune_after_warmup``) on digits + small CNN with
the asic-tpu32 predictor, then three numbers as ratios of the dense model: where the search ended in its own latency
model (``search_end``, the hard sizes of its final gates), the predictor on the extracted model's plan
(``predicted``) and the simulated device (``measured``). Before the fix of ``hwloop/search/lowrank_cost.py`` the
first was far above the other two (the search costed a rank-gated conv factorised, extraction merged it back to
dense). Run it on an older checkout with ``PYTHONPATH=<that checkout>`` to see the difference.

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc_l1l2_rank_cost.py --targets 0.7,0.6 \\
        --out search/results/haloc/l1l2_rank_cost_digits.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.7,0.6", help="comma-separated latency targets (fractions of dense)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--steps", type=int, default=8, help="search batches per epoch (2 epochs)")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    a = ap.parse_args(argv)
    try:
        targets = [float(t) for t in a.targets.split(",")]
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError as e:
        print(f"error: --targets/--seeds must be comma-separated numbers ({e})", file=sys.stderr)
        return 2
    if not all(0 < t <= 1 for t in targets) or a.steps < 2:
        print(f"error: targets must be in (0, 1] (got {targets}) and --steps >= 2 (got {a.steps})", file=sys.stderr)
        return 2

    import hwloop
    from hwloop.search.differentiable import SearchConfig, differentiable_search
    from hwloop.search.latency import select_latency_model
    from hwloop.search.report import measure_compressed
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task

    task = make_task("digits", "small_cnn", train_limit=512, val_limit=128, seed=0)
    space = SearchSpace.from_ref(task.ref, SpaceOptions(channels=True, lowrank=True))
    lat = select_latency_model(space, predictor_path=str(REPO / "measurements" / "asic-tpu32" / "predictor.json"),
                               device="asic-tpu32", objective="learned")
    l0 = lat.original()
    dense = measure_compressed("asic-tpu32", task.ref.build().eval(), None, example=task.ref.example_input())
    try:
        commit = subprocess.run(["git", "-C", str(Path(hwloop.__file__).resolve().parents[1]), "rev-parse", "--short",
                                 "HEAD"], capture_output=True, text=True, check=False).stdout.strip() or None
    except OSError:
        commit = None
    rows = []
    for seed in seeds:
        for t in targets:
            sc = SearchConfig(search_epochs=2, finetune_epochs=0, target=t, target_warmup=0.5, latency_penalty="hinge",
                              prune_after_warmup=True, max_steps=a.steps, seed=seed)
            res = differentiable_search(space, lat, task.train, None, sc)
            m = measure_compressed("asic-tpu32", res.model, res.plan)
            assert res.hard_search is not None   # set by every differentiable_search
            row = {"target": t, "seed": seed, "search_end": res.hard_search / l0, "predicted": res.predicted / l0,
                   "measured": m["latency_ms"] / dense["latency_ms"], "factorised": dict(res.plan.lowrank)}
            rows.append(row)
            print(f"target {t} seed {seed}: search ended at {row['search_end']:.3f}x, extracted model predicted "
                  f"{row['predicted']:.3f}x, measured {row['measured']:.3f}x; factorised {row['factorised']}")
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"hwloop": str(Path(hwloop.__file__).resolve().parent), "commit": commit,
                                   "device": "asic-tpu32", "task": "digits/small_cnn", "steps": a.steps,
                                   "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
