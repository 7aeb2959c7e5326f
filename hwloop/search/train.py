"""Training helpers and built-in tasks (model + data + evaluation) for the search.

Built-in tasks:

* ``digits`` — scikit-learn's 8×8 digits with ``small_cnn`` (CPU, seconds);
* ``cifar10`` — CIFAR-10 (JPEG) with ``resnet20``, ``resnet56``, ``vgg16`` or ``mobilenetv2``;
  ``train_limit``/``val_limit`` take a fixed random subset for reduced schedules.

Example:
    >>> from hwloop.search.train import make_task, train_epochs, evaluate
    >>> task = make_task("digits", "small_cnn", batch_size=64)
    >>> model = task.ref.build().train()
    >>> _ = train_epochs(model, task.train, epochs=1, lr=0.05)
    >>> evaluate(model, task.val) > 30.0
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from hwloop.errors import SearchError
from hwloop.models import ModelRef

__all__ = ["TASKS", "Task", "cosine_lr", "evaluate", "make_optimizer", "make_task", "train_epochs"]

#: task name -> models it supports.
TASKS = {"digits": ("small_cnn",), "cifar10": ("resnet20", "resnet56", "vgg16", "mobilenetv2", "small_cnn")}


@dataclass
class Task:
    """A model to compress, its data and how to score it.

    Attributes:
        name: the data set name.
        ref: the model's :class:`ModelRef` (batch 1, for latency).
        train / val: data loaders.
        eval_fn: ``model -> accuracy in %`` on the validation loader.
    """

    name: str
    ref: ModelRef
    train: DataLoader[Any]
    val: DataLoader[Any]
    eval_fn: Callable[[nn.Module], float]


def random_subset(loader: DataLoader[Any], limit: int | None, seed: int, shuffle: bool = False,
                  batch_size: int | None = None) -> DataLoader[Any]:
    """A loader over ``limit`` images of ``loader``'s data set drawn at random by ``seed`` (``loader`` itself when
    ``limit`` is None or not smaller). Score a subset this way, never as a loader's first N images: the stored
    CIFAR-10 arrays are sorted by class."""
    if limit is None or limit >= len(loader.dataset):  # type: ignore[arg-type]
        return loader
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(loader.dataset), generator=g)[:limit].tolist()  # type: ignore[arg-type]
    return DataLoader(Subset(loader.dataset, idx), batch_size=batch_size or loader.batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


_subset = random_subset  # the old private name (benchmarks of earlier sessions import it)


def make_task(name: str, model: str, *, batch_size: int = 64, train_limit: int | None = None,
              val_limit: int | None = None, seed: int = 0, model_kwargs: dict[str, Any] | None = None,
              data_root: str | None = None) -> Task:
    """Build a built-in task (see the module docstring)."""
    if name not in TASKS:
        raise SearchError(f"task {name!r} is unknown; allowed: {', '.join(TASKS)}")
    if model not in TASKS[name]:
        raise SearchError(f"model {model!r} is not available for task {name!r}; allowed: {', '.join(TASKS[name])}")
    from hwloop.data import make_loaders

    kwargs = dict(model_kwargs or {})
    if name == "digits":
        ref = ModelRef(model, kwargs, input_shape=(1, 8, 8))
    else:
        if model == "small_cnn":
            kwargs.setdefault("in_channels", 3)
        ref = ModelRef(model, kwargs, input_shape=(3, 32, 32))
    train, val = make_loaders(name, batch_size, root=data_root, seed=seed)
    train = random_subset(train, train_limit, seed, shuffle=True)
    val = random_subset(val, val_limit, seed + 1)
    return Task(name=name, ref=ref, train=train, val=val, eval_fn=lambda m: evaluate(m, val))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader[Any], limit: int | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on ``loader`` (the model's train/eval mode is restored); with ``limit``,
    on whole batches until at least ``limit`` images were scored. ``limit`` takes the loader's first images: give
    it a loader over a random subset (``make_task``'s ``val_limit``, ``make_loaders``'s ``limit``), since an
    unshuffled CIFAR-10 loader is sorted by class."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
        if limit is not None and total >= limit:
            break
    model.train(was)
    return 100.0 * correct / max(1, total)


def make_optimizer(params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
                   ) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, the usual CIFAR recipe."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps."""
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def train_epochs(model: nn.Module, loader: DataLoader[Any], epochs: int, lr: float, *, momentum: float = 0.9,
                 weight_decay: float = 5e-4, progress: bool = False, desc: str = "train",
                 max_steps: int | None = None, w_bits: Mapping[str, int] | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Plain supervised training with cosine LR (SGD, Nesterov momentum): hwloop's one training loop.

    Each epoch iterates ``loader`` exactly once, so a shuffling loader draws one permutation per epoch (the
    progress bar is advanced by hand: ``tqdm(loader)`` from ``tqdm.auto`` would call ``iter(loader)`` a second
    time and draw the shuffle twice).

    Args:
        model / loader / epochs / lr / momentum / weight_decay: what to train, on what, how long, how.
        progress / desc: a progress bar per epoch.
        max_steps: at most this many batches per epoch.
        w_bits: weights fake-quantized to these bits (layer name -> bits) while training.
        on_epoch: called with the epoch index after each epoch, the model in eval mode (e.g. to report
            intermediate accuracy; it may raise ``optuna.TrialPruned``).

    Returns:
        ``{"loss": last epoch mean, "seconds": wall, "images": training images processed, "epochs": epochs}``.
    """
    if epochs < 0:
        raise SearchError(f"epochs={epochs} must be >= 0")
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    quant: Any = nullcontext()
    if w_bits:
        from hwloop.compress.gated import quantized_weights

        quant = quantized_weights(model, dict(w_bits))
    steps_per_epoch = min(len(loader), max_steps) if max_steps else len(loader)
    total, step, t0, mean = epochs * steps_per_epoch, 0, time.perf_counter(), float("nan")
    images = 0
    loss_fn = nn.CrossEntropyLoss()
    with quant:
        opt = make_optimizer(model.parameters(), lr, momentum, weight_decay)
        for ep in range(epochs):
            model.train()
            running, n = 0.0, 0
            with tqdm(total=steps_per_epoch, desc=f"{desc} {ep + 1}/{epochs}", disable=not progress,
                      leave=False) as bar:
                for i, (x, y) in enumerate(loader):
                    if i >= steps_per_epoch:
                        break
                    for group in opt.param_groups:
                        group["lr"] = cosine_lr(lr, step, total)
                    loss = loss_fn(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    running += float(loss.detach())
                    images += int(y.shape[0])
                    n += 1
                    step += 1
                    bar.update(1)
            mean = running / max(1, n)
            if on_epoch is not None:
                model.eval()
                on_epoch(ep)
    model.eval()
    return {"loss": mean, "seconds": time.perf_counter() - t0, "images": float(images), "epochs": float(epochs)}
