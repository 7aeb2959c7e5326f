"""Why an instance-norm ResNet-20 stays at chance on CIFAR-10 for its first SGD steps (issue 20, docs/lcs.md).

Two parts, both on the 1,600 CIFAR-10 training images that ``make_task(train_limit=1600, seed=0)`` draws at random
(``random_subset``; never the first N: the stored arrays are sorted by class):

* ``steps VARIANT STEPS LR`` — plain SGD (hwloop's recipe: Nesterov 0.9, weight decay 5e-4, cosine lr, batch 64)
  of a ResNet-20, loss / batch accuracy / gradient norm per step, then accuracy on 500 test images. VARIANT:
  ``bn``, ``in``, ``in_0.25`` (width 0.25), ``ln`` (width 0.25, GroupNorm(1, C) for every instance norm),
  ``warm`` (instance norm, started from ``--checkpoint``'s weights and γ/β; BN statistics dropped);
* ``features`` — one training batch through a fresh BN and a fresh IN ResNet-20 (train mode): how much the pooled
  features and the logits differ between images, and the gradient norms that reach the convs.

Run: ``OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_cifar_diagnose.py steps in 50 0.05``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwloop.models import ModelRef
from hwloop.search.train import cosine_lr, make_optimizer, make_task

CKPT = ROOT / "search" / "checkpoints" / "resnet20_cifar10_converged.safetensors"


def steps(variant: str, n_steps: int, lr: float, checkpoint: str) -> None:
    norm = "bn" if variant == "bn" else "in"
    width = 0.25 if variant in ("in_0.25", "ln") else 1.0
    task = make_task("cifar10", "resnet20", model_kwargs={"norm": norm, "width_mult": width}, batch_size=64,
                     train_limit=1600, val_limit=500, seed=0)
    torch.manual_seed(0)
    m = task.ref.build()
    if variant == "ln":
        for mod in list(m.modules()):
            for cn, ch in list(mod.named_children()):
                if isinstance(ch, nn.InstanceNorm2d):
                    setattr(mod, cn, nn.GroupNorm(1, ch.num_features))
    if variant == "warm":
        from safetensors.torch import load_file

        from hwloop.methods.lcs.family import init_from_state

        init_from_state(m, load_file(checkpoint))
        print(f"warm: accuracy at 0 steps {task.eval_fn(m)}", flush=True)
    m.train()
    opt = make_optimizer(m.parameters(), lr)
    loss_fn, s, t0 = nn.CrossEntropyLoss(), 0, time.time()
    while s < n_steps:
        for x, y in task.train:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(lr, s, n_steps)
            out = m(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            gn = float(sum(p.grad.norm() ** 2 for p in m.parameters() if p.grad is not None) ** 0.5)
            opt.step()
            s += 1
            print(f"{variant} step {s} loss {loss.item():.3f} acc {(out.argmax(1) == y).float().mean().item():.2f} "
                  f"gnorm {gn:.3f} t {time.time() - t0:.0f}", flush=True)
            if s >= n_steps:
                break
    print(f"{variant} val {task.eval_fn(m)}", flush=True)


def features() -> None:
    task = make_task("cifar10", "resnet20", batch_size=64, train_limit=256, val_limit=64, seed=0)
    x, y = next(iter(task.train))
    for norm in ("bn", "in"):
        torch.manual_seed(0)
        m = ModelRef("resnet20", {"norm": norm}).build().train()
        feats: dict[str, torch.Tensor] = {}
        m.pool.register_forward_hook(lambda mod, i, o, f=feats: f.__setitem__("p", o.flatten(1)))
        logits = m(x)
        p = feats["p"].detach()
        print(f"{norm}: pooled features, between-image std / mean {float(p.std(0).mean() / p.mean()):.3f}; "
              f"logit std across images {float(logits.detach().std(0).mean()):.4f}")
        nn.CrossEntropyLoss()(logits, y).backward()
        for n, q in m.named_parameters():
            if n in ("conv1.weight", "layers.0.conv1.weight", "layers.8.conv2.weight", "fc.weight"):
                print(f"  grad norm {n} {float(q.grad.norm()):.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["steps", "features"])
    ap.add_argument("variant", nargs="?", default="in", choices=["bn", "in", "in_0.25", "ln", "warm"])
    ap.add_argument("n_steps", nargs="?", type=int, default=50)
    ap.add_argument("lr", nargs="?", type=float, default=0.05)
    ap.add_argument("--checkpoint", default=str(CKPT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part == "features":
        features()
    else:
        steps(args.variant, args.n_steps, args.lr, args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
