"""Train a CIFAR-10 checkpoint for the search benchmark (issue 7: "pretrain or load the user's checkpoint").

SGD (Nesterov momentum 0.9, weight decay 5e-4) with a OneCycle learning rate, batch 128, the standard
augmentation of :func:`hwloop.data.make_loaders` (4-pixel padded random crop + horizontal flip), on the
CIFAR-10 training images (all 50,000 unless ``--train-limit``); scored on the 10,000 test images. Writes
``<out>.safetensors`` (the ``state_dict``, no pickle) and ``<out>.json`` (how it was trained, per-epoch
loss/accuracy/wall time, final test accuracy). ``--time-steps N`` only times N training steps and prints
the extrapolated epoch time (to pick a schedule that fits).

What search/checkpoints/resnet20_cifar10.safetensors was made with (see its JSON)::

    nice -n 10 python benchmarks/train_checkpoint.py --model resnet20 --epochs 9 --threads 1 \
        --out search/checkpoints/resnet20_cifar10

Example (timing only)::

    python benchmarks/train_checkpoint.py --time-steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch
from torch import nn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2, help="OneCycle peak learning rate")
    ap.add_argument("--train-limit", type=int, default=0, help="training images (0: all 50,000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps and extrapolate")
    ap.add_argument("--out", default="search/checkpoints/resnet20_cifar10")
    args = ap.parse_args()

    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from hwloop.search.train import evaluate, make_optimizer, make_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = make_task("cifar10", args.model, batch_size=args.batch_size, train_limit=args.train_limit or None,
                     seed=args.seed)
    model = task.ref.build().train()
    loss_fn = nn.CrossEntropyLoss()
    if args.time_steps:
        opt = make_optimizer(model.parameters(), args.lr)
        it = iter(task.train)
        for _ in range(3):  # warm-up
            x, y = next(it)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(args.time_steps):
            x, y = next(it)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        per_step = (time.perf_counter() - t0) / args.time_steps
        print(f"{args.model}: {per_step * 1000:.0f} ms/step at batch {args.batch_size}, {args.threads} threads; "
              f"one epoch of {len(task.train.dataset)} images ≈ {per_step * len(task.train):.0f} s "
              f"({len(task.train)} steps)")
        return 0

    opt = make_optimizer(model.parameters(), args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=len(task.train), pct_start=0.25)
    history = []
    t_all = time.perf_counter()
    for ep in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        run, n = 0.0, 0
        bar = tqdm(task.train, desc=f"epoch {ep + 1}/{args.epochs}", leave=False)
        for x, y in bar:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach())
            n += 1
            if n % 20 == 0:
                bar.set_postfix_str(f"loss {run / n:.3f}")
        train_s = time.perf_counter() - t0
        acc = evaluate(model, task.val)
        history.append({"epoch": ep + 1, "loss": run / max(1, n), "test_accuracy": acc, "train_s": train_s})
        print(f"epoch {ep + 1}/{args.epochs}: loss {run / max(1, n):.3f}, test accuracy {acc:.2f}%, "
              f"{train_s:.0f} s", flush=True)
    model.eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out.with_suffix(".safetensors")), metadata={"model": args.model, "task": "cifar10"})
    meta = {"model": task.ref.to_dict(), "task": "cifar10", "train_images": len(task.train.dataset),
            "test_images": len(task.val.dataset), "epochs": args.epochs, "batch_size": args.batch_size,
            "optimizer": "SGD nesterov momentum 0.9 weight_decay 5e-4", "schedule": "OneCycleLR pct_start 0.25",
            "peak_lr": args.lr, "augmentation": "pad-4 random crop + horizontal flip", "seed": args.seed,
            "threads": args.threads, "torch": torch.__version__, "test_accuracy": history[-1]["test_accuracy"],
            "wall_s": time.perf_counter() - t_all, "history": history,
            "command": "python benchmarks/train_checkpoint.py " + " ".join(sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"saved {out.with_suffix('.safetensors')}: test accuracy {history[-1]['test_accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
