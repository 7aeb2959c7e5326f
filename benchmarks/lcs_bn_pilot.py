"""Do the narrow members of a CIFAR-10 ResNet-20 frozen-BN width family learn in a short schedule (issue 20)?

From the converged batch-norm checkpoint, a width family (shared convs, γ/β on the line, sandwich of 3 α per batch,
batch 128, one cosine lr schedule over ``--steps``) on the evidence harness's split (5,000 training images held
out by split seed 0; training batches from 10,000 random images of the rest; validation ``--val-limit`` random
held-out images). Variants: ``--train-stats frozen`` (the checkpoint's statistics for every α, the 2026-12-07 runs)
or ``batch`` (each α normalised by its batch's statistics, then a per-α statistics table calibrated on
``--calib-batches`` training batches at the 7 grid α); ``--sort`` (channels ordered by magnitude before training);
``--clip-grad``. Validation accuracy at widths 0.25 / 0.5 / 1.0 before (frozen statistics, and with a table
calibrated on the start when ``batch``) and after training. Run::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_bn_pilot.py --train-stats batch --sort \\
        --steps 30 --out search/results/lcs_cifar/bn_pilot/batch_sort_30.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwloop.methods.lcs import LcsFamily, default_grid, train_lines
from hwloop.models import ModelRef
from hwloop.search.train import evaluate

CKPT = ROOT / "search" / "checkpoints" / "resnet20_cifar10_converged.safetensors"
WIDTHS = {0.25: 0.0, 0.5: 1 / 3, 1.0: 1.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-stats", default="frozen", choices=["frozen", "batch"])
    ap.add_argument("--sort", action="store_true")
    ap.add_argument("--clip-grad", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--val-limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader, Subset

    from hwloop.data import make_loaders

    tr, va = make_loaders("cifar10", 128, seed=0, holdout=5000)
    g = torch.Generator().manual_seed(0)
    train_ds = Subset(tr.dataset, sorted(torch.randperm(len(tr.dataset), generator=g)[:10000].tolist()))
    train = DataLoader(train_ds, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    calib = DataLoader(train_ds, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(1000))
    val = DataLoader(Subset(va.dataset, sorted(torch.randperm(len(va.dataset), generator=torch.Generator()
                                                              .manual_seed(1))[:args.val_limit].tolist())),
                     batch_size=256)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    fam = LcsFamily.create(ModelRef("resnet20"), "width", line_convs=False, init=load_file(str(CKPT)), frozen_bn=True,
                           sort_channels=args.sort, train_stats=args.train_stats)
    rows: list[dict[str, object]] = []

    def record(label: str, **extra: object) -> None:
        accs = {w: evaluate(fam.at(a).model, val) for w, a in WIDTHS.items()}
        rows.append({"at": label, "val_accuracy": accs, "wall_s": round(time.perf_counter() - t0, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)

    if args.train_stats == "frozen":
        record("start (frozen checkpoint statistics)")
    else:
        cal = fam.calibrate_statistics(calib, default_grid(7), batches=args.calib_batches)
        record("start (statistics table calibrated on the start)", calibration=cal)
    h = train_lines(fam.net, fam.state, train, epochs=1, lr=args.lr, n_samples=3, seed=args.seed,
                    max_steps=args.steps, clip_grad=args.clip_grad)
    cal = None
    if args.train_stats == "batch":
        cal = fam.calibrate_statistics(calib, default_grid(7), batches=args.calib_batches)
    record(f"after {args.steps} steps", train=h, calibration=cal)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
