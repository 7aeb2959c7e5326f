"""Which norm lets a CIFAR-10 ResNet-20 width family learn within a short schedule (issue 20, docs/lcs.md)?

From the converged batch-norm checkpoint, a width family (shared convs, norms on the line, sandwich of 3 α per batch,
batch 128, one cosine lr schedule over ``--steps``) with ``--norm in`` (instance norm: the checkpoint's γ/β,
statistics computed per image) or ``--norm frozen_bn`` (the checkpoint's batch-norm statistics frozen for every α, γ/β on the line);
validation accuracy (held-out training images, the evidence harness's split) at widths 0.25 / 0.5 / 1.0 before
and after training. Run::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_norm_pilot.py --norm in --lr 0.05 \\
        --out search/results/lcs_cifar/pilot/in_lr0.05.json
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

from hwloop.methods.lcs import LcsFamily, train_lines
from hwloop.models import ModelRef
from hwloop.search.train import evaluate

CKPT = ROOT / "search" / "checkpoints" / "resnet20_cifar10_converged.safetensors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--norm", default="in", choices=["in", "frozen_bn"])
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--val-limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-start", type=int, default=0, metavar="BATCHES",
                    help="frozen_bn: LcsFamily.fold_statistics on this many training batches before training")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader, Subset

    from hwloop.data import make_loaders

    tr, va = make_loaders("cifar10", 128, seed=0, holdout=5000)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(Subset(tr.dataset, torch.randperm(len(tr.dataset), generator=g)[:20000].tolist()),
                       batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(Subset(va.dataset, torch.randperm(len(va.dataset), generator=torch.Generator().manual_seed(1))
                            [:args.val_limit].tolist()), batch_size=256)
    fbn = args.norm == "frozen_bn"
    torch.manual_seed(args.seed)
    fam = LcsFamily.create(ModelRef("resnet20", {} if fbn else {"norm": "in"}), "width", line_convs=False,
                           init=load_file(str(CKPT)), frozen_bn=fbn)
    if args.fold_start:
        print(json.dumps({"fold": fam.fold_statistics(train, alpha=0.0, batches=args.fold_start)}), flush=True)
    alphas = {0.25: 0.0, 0.5: 1 / 3, 1.0: 1.0}
    rows = []

    def record(step: int, seconds: float) -> None:
        accs = {w: evaluate(fam.line_at(a), val) for w, a in alphas.items()}
        rows.append({"step": step, "seconds": seconds, "val_accuracy": accs})
        print(json.dumps(rows[-1]), flush=True)

    record(0, 0.0)
    h = train_lines(fam.net, fam.state, train, epochs=1, lr=args.lr, n_samples=3, seed=args.seed,
                    max_steps=args.steps)
    record(args.steps, h["seconds"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "train": h}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
