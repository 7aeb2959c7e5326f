"""Train (or train on) a CIFAR-10 checkpoint for the search benchmarks; resumable.

SGD (Nesterov momentum 0.9, weight decay 5e-4), batch 128, the standard augmentation of
:func:`hwloop.data.make_loaders` (4-pixel padded random crop + horizontal flip). Two schedules:
``onecycle`` (from scratch, as the 35-epoch checkpoint was made) and ``cosine`` (train on from
``--init`` weights: a short linear warm-up to ``--lr``, then cosine decay to 0).

``--holdout N`` keeps ``N`` training images (chosen by ``--seed``) out of training as a validation
split: every per-epoch figure and every choice uses it; the 10,000 test images are scored once, at the
end. (Weights from ``--init`` may have seen those images earlier: the JSON says so.)

Resumable: after every epoch the weights, the SGD momentum buffers (safetensors, no pickle) and the
progress (JSON) are written to ``<out>.state/``; run the same command again and it continues from the
last finished epoch (the data order and augmentation of epoch ``e`` depend only on ``seed`` and ``e``).
At the end it writes ``<out>.safetensors`` (the ``state_dict``) and ``<out>.json`` (how it was trained,
per-epoch loss / validation accuracy / wall time, final test accuracy). ``--time-steps N`` only times N
training steps and prints the extrapolated epoch time.

The converged ResNet-20 (issue 16), trained on from the 35-epoch checkpoint in ``../shared``::

    nice -n 10 python benchmarks/train_checkpoint.py --init ../shared/checkpoints/resnet20_cifar10_e35.safetensors \\
        --schedule cosine --epochs 40 --lr 0.05 --holdout 5000 --threads 1 \\
        --out search/checkpoints/resnet20_cifar10_converged

What search/checkpoints/resnet20_cifar10.safetensors was made with (see its JSON)::

    nice -n 10 python benchmarks/train_checkpoint.py --model resnet20 --epochs 9 --threads 1 \\
        --out search/checkpoints/resnet20_cifar10

Example (timing only)::

    python benchmarks/train_checkpoint.py --time-steps 30
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch
from torch import nn


def _lr_at(args: argparse.Namespace, step: int, total: int, steps_per_epoch: int) -> float:
    if args.schedule == "onecycle":  # torch's OneCycleLR (cos annealing, pct_start 0.25), closed form
        up = int(0.25 * total)
        init, final = args.lr / 25.0, args.lr / 25.0 / 1e4
        if step < up:
            return init + (args.lr - init) * (1 - math.cos(math.pi * step / max(1, up))) / 2
        return final + (args.lr - final) * (1 + math.cos(math.pi * (step - up) / max(1, total - up))) / 2
    warm = int(args.warmup_epochs * steps_per_epoch)
    if step < warm:
        return args.lr * (step + 1) / warm
    return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _save_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, progress: dict) -> None:
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = dict(model.named_parameters())
    momentum = {}
    for name, p in names.items():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            momentum[name] = buf.detach().contiguous()
    tmp = state_dir / "progress.json.tmp"
    save_file(weights, str(state_dir / "weights.safetensors"))
    save_file(momentum, str(state_dir / "momentum.safetensors"))
    tmp.write_text(json.dumps(progress, indent=1) + "\n", encoding="utf-8")
    tmp.replace(state_dir / "progress.json")  # the epoch counts as done only once this lands


def _load_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    from safetensors.torch import load_file

    if not (state_dir / "progress.json").is_file():
        return None
    progress = json.loads((state_dir / "progress.json").read_text(encoding="utf-8"))
    model.load_state_dict(load_file(str(state_dir / "weights.safetensors")))
    momentum = load_file(str(state_dir / "momentum.safetensors"))
    for name, p in model.named_parameters():
        if name in momentum:
            opt.state[p]["momentum_buffer"] = momentum[name].clone()
    return progress


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2, help="peak learning rate")
    ap.add_argument("--schedule", choices=("onecycle", "cosine"), default="onecycle")
    ap.add_argument("--warmup-epochs", type=float, default=1.0, help="cosine: linear warm-up length")
    ap.add_argument("--init", default="", help="start from these safetensors weights")
    ap.add_argument("--holdout", type=int, default=0, help="training images held out as the validation split")
    ap.add_argument("--train-limit", type=int, default=0, help="training images (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps and extrapolate")
    ap.add_argument("--out", default="search/checkpoints/resnet20_cifar10")
    args = ap.parse_args()

    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from hwloop.data import make_loaders
    from hwloop.models import ModelRef
    from hwloop.search.train import _subset, evaluate, make_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ref = ModelRef(args.model, {}, input_shape=(3, 32, 32))
    train, val = make_loaders("cifar10", args.batch_size, seed=args.seed, holdout=args.holdout)
    train = _subset(train, args.train_limit or None, args.seed, shuffle=True)
    model = ref.build().train()
    if args.init:
        model.load_state_dict(load_file(args.init))
    loss_fn = nn.CrossEntropyLoss()
    opt = make_optimizer(model.parameters(), args.lr)
    if args.time_steps:
        it = iter(train)
        for i in range(3 + args.time_steps):
            if i == 3:
                t0 = time.perf_counter()
            x, y = next(it)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        per_step = (time.perf_counter() - t0) / args.time_steps
        print(f"{args.model}: {per_step * 1000:.0f} ms/step at batch {args.batch_size}, {args.threads} threads; "
              f"one epoch of {len(train.dataset)} images ≈ {per_step * len(train):.0f} s ({len(train)} steps)")
        return 0

    out = Path(args.out)
    state_dir = out.with_name(out.name + ".state")
    progress = _load_state(state_dir, model, opt)
    if progress is not None and progress.get("args") != vars(args):
        print(f"error: {state_dir} was written by another command ({progress.get('args')}); "
              "remove it or run that command", file=sys.stderr)
        return 2
    if progress is None:
        progress = {"args": vars(args), "history": [], "wall_s": 0.0}
    steps_per_epoch = len(train)
    total = args.epochs * steps_per_epoch
    done = len(progress["history"])
    if done:
        print(f"resuming {state_dir} after epoch {done}/{args.epochs}", flush=True)
    for ep in range(done, args.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(args.seed * 100_003 + ep)  # augmentation of epoch ep
        train.generator.manual_seed(args.seed * 100_003 + ep) if train.generator is not None else None
        model.train()
        run, n = 0.0, 0
        bar = tqdm(train, desc=f"epoch {ep + 1}/{args.epochs}", leave=False)
        for i, (x, y) in enumerate(bar):
            for g in opt.param_groups:
                g["lr"] = _lr_at(args, ep * steps_per_epoch + i, total, steps_per_epoch)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.detach())
            n += 1
            if n % 20 == 0:
                bar.set_postfix_str(f"loss {run / n:.3f}")
        train_s = time.perf_counter() - t0
        acc = evaluate(model, val)
        key = "val_accuracy" if args.holdout else "test_accuracy"
        progress["history"].append({"epoch": ep + 1, "loss": run / max(1, n), key: acc, "train_s": train_s})
        progress["wall_s"] += time.perf_counter() - t0
        _save_state(state_dir, model, opt, progress)
        print(f"epoch {ep + 1}/{args.epochs}: loss {run / max(1, n):.3f}, {key.replace('_', ' ')} {acc:.2f}%, "
              f"{train_s:.0f} s", flush=True)
    model.eval()
    test_acc = evaluate(model, make_loaders("cifar10", 256, seed=args.seed)[1]) if args.holdout else \
        progress["history"][-1]["test_accuracy"]
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out.with_suffix(".safetensors")), metadata={"model": args.model, "task": "cifar10"})
    meta = {"model": ref.to_dict(), "task": "cifar10", "train_images": len(train.dataset),
            "validation": (f"{args.holdout} training images held out (seed {args.seed})" if args.holdout
                           else "none (per-epoch figures are on the test set)"),
            "test_images": 10_000, "epochs": args.epochs, "batch_size": args.batch_size,
            "init": args.init or None,
            "init_note": ("the --init weights were trained on all 50,000 training images, the held-out ones "
                          "included" if args.init and args.holdout else None),
            "optimizer": "SGD nesterov momentum 0.9 weight_decay 5e-4",
            "schedule": (f"cosine, {args.warmup_epochs} warm-up epoch(s)" if args.schedule == "cosine"
                         else "OneCycleLR pct_start 0.25"),
            "peak_lr": args.lr, "augmentation": "pad-4 random crop + horizontal flip", "seed": args.seed,
            "threads": args.threads, "torch": torch.__version__, "test_accuracy": test_acc,
            "wall_s": progress["wall_s"], "history": progress["history"],
            "command": "python benchmarks/train_checkpoint.py " + " ".join(sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"saved {out.with_suffix('.safetensors')}: test accuracy {test_acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
