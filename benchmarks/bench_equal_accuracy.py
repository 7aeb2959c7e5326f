"""Cost at equal accuracy (issue 16, "Cost is reported at equal accuracy, not only at equal epochs").

The evidence harness gives every entry the same training images (equal compute). This benchmark asks the other
question: how many training images does a control (uniform width scaling or global magnitude pruning, at the
width its harness cell chose to match the method's measured latency) need to reach the method's validation
accuracy? It rebuilds the control's model exactly as its cell did (the same knob on the same starting weights),
fine-tunes it with the harness's schedule (SGD, cosine, the spec's lr) for each budget in ``--images`` (a
separate run per budget: cosine depends on the length), and scores validation and test. Each finished run is
kept in ``--out`` and skipped on a rerun (resumable).

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_equal_accuracy.py \
        --spec search/bench-methods-cifar10-resnet20-v4.toml --control uniform --target 0.6 --seed 0 \
        --images 80000,160000 --out search/results/equal_accuracy
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--results", type=Path, help="the spec's harness folder (default search/results/<name>)")
    ap.add_argument("--method", default=None, help="the method entry (default: the spec's first)")
    ap.add_argument("--control", choices=("uniform", "magnitude"), required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", default="80000,160000", help="comma list of training-image budgets")
    ap.add_argument("--out", type=Path, default=Path("search/results/equal_accuracy"))
    args = ap.parse_args()

    import torch

    from hwloop.search.controls import channel_scores, magnitude_config, train_images, uniform_config
    from hwloop.search.harness import Cell, Harness
    from hwloop.search.harness_spec import load_harness_spec

    spec = load_harness_spec(args.spec)
    res_dir = args.results or Path("search/results") / spec.name
    method = args.method or spec.methods[0].label
    device = args.device or spec.devices[0]
    h = Harness(spec, res_dir, progress=False)
    ctl_cell = h.done(Cell(args.control, "control", method, device, args.target, args.seed))
    if ctl_cell is None:
        raise SystemExit(f"no finished {args.control} cell for {method} on {device} at {args.target}, seed {args.seed} "
                         f"in {res_dir}")
    method_rows = [r for s in spec.seeds
                   if (r := h.done(Cell(method, "method", method, device, args.target, s))) is not None]
    knob = float(ctl_cell["knob"])
    args.out.mkdir(parents=True, exist_ok=True)
    h.setup()
    out_rows = []
    for n in [int(x) for x in args.images.split(",") if x.strip()]:
        key = f"{spec.name}__{args.control}__{device}__t{args.target}__s{args.seed}__{n}"
        path = args.out / f"{key}.json"
        if path.is_file():
            out_rows.append(json.loads(path.read_text()))
            print(f"skip {key} (done)")
            continue
        torch.manual_seed(args.seed)
        if args.control == "uniform":
            cfg = uniform_config(h.space, knob)
        else:
            cfg = magnitude_config(h.space, knob, channel_scores(h.space))
        net, plan = h.space.compress(cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        seen = train_images(net, h.loader(args.seed), n, spec.schedule.lr, weight_decay=spec.schedule.weight_decay)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"spec": spec.name, "control": args.control, "method": method, "device": device, "target": args.target,
               "seed": args.seed, "knob": knob, "cell_measured_ratio": ctl_cell.get("measured_ratio"),
               "train_images": seen, "train_wall_s": wall, "train_cpu_s": cpu, "val_accuracy": h.val_eval(net),
               "test_accuracy": h.test_eval(net), "load": os.getloadavg()[0],
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
               "plan_widths_equal_cell": plan.to_dict().get("widths") == (ctl_cell.get("plan") or {}).get("widths")}
        path.write_text(json.dumps(row, indent=1) + "\n")
        out_rows.append(row)
        print(f"{key}: val {row['val_accuracy']:.2f} test {row['test_accuracy']:.2f} ({seen} images, {wall:.0f} s)")
    mv = [float(r["val_accuracy"]) for r in method_rows]
    print(f"\n{method} at {args.target} on {device}: val {statistics.mean(mv):.2f} over seeds "
          f"{[r['seed'] for r in method_rows]} with {method_rows[0].get('train_images') if method_rows else '?'} images")
    print(f"{args.control} seed {args.seed}, knob {knob:.4f}, cell (equal images): val {ctl_cell['val_accuracy']:.2f} "
          f"test {ctl_cell['test_accuracy']:.2f} with {ctl_cell.get('train_images')} images")
    for r in out_rows:
        print(f"  {r['train_images']:>7} images: val {r['val_accuracy']:.2f} test {r['test_accuracy']:.2f} "
              f"(train {r['train_wall_s']:.0f} s wall; same widths as the cell: {r['plan_widths_equal_cell']})")


if __name__ == "__main__":
    main()
