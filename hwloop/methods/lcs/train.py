"""Training a line of networks: α sampled per batch, the task loss at each α, plus β·cos²(ω₀, ω₁).

:func:`train_lines` is LCS+L's loop (``train_curve.py`` of the reference code, rewritten): for every batch the
sampler of the mode gives the α values (the sandwich rule for width, biased endpoint sampling for top-k, a
discrete bin for bits); each α's cross-entropy is back-propagated (gradients summed, as the reference sums the
losses); the diversity regulariser adds ``beta · cos²``; one SGD step (Nesterov momentum, cosine learning rate).
Every endpoint receives gradient at every step except at an exact endpoint α (where ω(α) is that endpoint).

Opt-in ``distill`` (width mode; in-place distillation of Yu & Huang's universally slimmable networks, not part of
LCS): α = 1 runs first in each batch on the labels, and every member with α < 1 is trained on
``(1 − distill)·CE + distill·KL(p₁ ‖ p_α)``, ``p₁`` the α = 1 member's *detached* softmax of the same batch (the
widest member gets no gradient through its targets). ``distill = 0`` is the loop above, unchanged.

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.train import make_task
    >>> from hwloop.methods.lcs.lines import to_lines
    >>> task = make_task("digits", "small_cnn", model_kwargs={"norm": "in"}, train_limit=64)
    >>> net, state = to_lines(task.ref.build(), "width")
    >>> h = train_lines(net, state, task.train, epochs=1, lr=0.05, max_steps=1)
    >>> h["steps"], h["forward_passes"]
    (1.0, 4.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hwloop.errors import SearchError
from hwloop.methods.lcs.lines import LineState, cos2_regularizer, sample_alphas
from hwloop.search.train import cosine_lr, make_optimizer

__all__ = ["distill_loss", "train_lines"]


def distill_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, distill: float) -> torch.Tensor:
    """One member's loss: cross-entropy, or with a ``teacher`` (probabilities) ``(1 − d)·CE + d·KL(teacher ‖ p)``.

    ``teacher`` is detached here (no gradient flows into whoever produced it); KL is averaged over the batch
    (``batchmean``), i.e. the soft-target cross-entropy minus the teacher's entropy: the same gradient as soft CE.
    ``distill = 1`` returns the KL term alone (no cross-entropy is computed).
    """
    if teacher is None or distill == 0:
        return F.cross_entropy(logits, y)
    kl = F.kl_div(F.log_softmax(logits, dim=1), teacher.detach(), reduction="batchmean")
    if distill == 1:
        return kl
    return (1.0 - distill) * F.cross_entropy(logits, y) + distill * kl


def train_lines(model: nn.Module, state: LineState, loader: DataLoader[Any], *, epochs: int, lr: float,
                momentum: float = 0.9, weight_decay: float = 5e-4, beta: float = 1.0, beta_norms: bool = False,
                n_samples: int = 4, endpoint_prob: float = 0.5, warmup: float = 0.0, seed: int = 0,
                max_steps: int | None = None, progress: bool = False, clip_grad: float = 0.0,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                distill: float = 0.0) -> dict[str, float]:
    """Train both endpoints of ``model`` (line layers from :func:`~hwloop.methods.lcs.lines.to_lines`).

    Args:
        epochs / lr / momentum / weight_decay: the SGD schedule (cosine decay over all steps).
        beta: weight of the cos² regulariser (0: off); ``beta_norms``: include the norm weights in it.
        n_samples: α values per batch in width mode (sandwich: 0, 1 and ``n_samples − 2`` uniform).
        endpoint_prob: top-k mode's chance of an endpoint α.
        warmup: share of the steps over which top-k's kept fraction anneals from dense (0..1).
        max_steps: batches per epoch at most (quick runs).
        clip_grad: clip the total gradient norm of each step to this (0: off). Opt-in for ``frozen_bn`` families,
            whose narrow and interior members start with gradients 8–50× the full width's (docs/lcs.md).
        on_epoch: called after each epoch with its index and the running figures (checkpointing).
        distill: width mode, opt-in: in-place distillation (Yu & Huang 2019). α = 1 runs first on the labels; each
            α < 1 is trained on ``(1 − distill)·CE + distill·KL`` to the α = 1 member's detached softmax of the same
            batch (:func:`distill_loss`). 0 (default): cross-entropy at every α, the loop unchanged.

    Returns:
        ``{"loss", "cos2", "seconds", "steps", "images", "forward_passes", "train_image_passes"}``; images are
        batches × batch size, ``train_image_passes`` counts each image once per α it was run at.
    """
    if epochs < 0:
        raise SearchError(f"epochs={epochs} must be >= 0")
    if not clip_grad >= 0:
        raise SearchError(f"clip_grad={clip_grad} must be >= 0 (0: off)")
    if isinstance(distill, bool) or not (isinstance(distill, (int, float)) and math.isfinite(distill)
                                         and 0 <= distill <= 1):
        raise SearchError(f"distill={distill!r} must be a number in [0, 1] (0: off)")
    if distill > 0 and state.mode != "width":
        raise SearchError(f"distill={distill} is for mode 'width' (in-place distillation from the widest member); "
                          f"mode={state.mode!r} needs distill=0")
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], lr, momentum, weight_decay)
    per_epoch = min(len(loader), max_steps) if max_steps else len(loader)
    total = epochs * per_epoch
    state.warmup_steps = round(warmup * total)
    loss_fn = nn.CrossEntropyLoss()
    step, t0 = 0, time.perf_counter()
    out = {"loss": float("nan"), "cos2": float("nan"), "seconds": 0.0, "steps": 0.0, "images": 0.0,
           "forward_passes": 0.0, "train_image_passes": 0.0}
    model.train()
    for ep in range(epochs):
        running, n = 0.0, 0
        for i, (x, y) in enumerate(tqdm(loader, desc=f"lcs {ep + 1}/{epochs}", disable=not progress, leave=False,
                                        total=per_epoch)):
            if i >= per_epoch:
                break
            for g in opt.param_groups:
                g["lr"] = cosine_lr(lr, step, total)
            opt.zero_grad(set_to_none=True)
            alphas = sample_alphas(state.mode, gen, n_samples=n_samples, endpoint_prob=endpoint_prob,
                                   bits_lo=state.bits_lo, bits_hi=state.bits_hi)
            if distill > 0:   # the widest member first: its detached softmax is the narrow members' target
                alphas = [a for a in alphas if a == 1.0] + [a for a in alphas if a != 1.0]
            teacher: torch.Tensor | None = None
            batch_loss = 0.0
            for a in alphas:
                state.set(a, step)
                if distill > 0:
                    logits = model(x)
                    loss = distill_loss(logits, y, teacher if a < 1.0 else None, distill)
                    if a == 1.0 and teacher is None:
                        teacher = F.softmax(logits.detach(), dim=1)
                else:
                    loss = loss_fn(model(x), y)
                loss.backward()
                batch_loss += float(loss.detach())
                out["forward_passes"] += 1
                out["train_image_passes"] += int(y.shape[0])
            if beta > 0:
                reg = beta * cos2_regularizer(model, norms=beta_norms)
                if reg.requires_grad:
                    reg.backward()
                out["cos2"] = float(reg.detach()) / beta
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip_grad)
            opt.step()
            running += batch_loss / len(alphas)
            n += 1
            step += 1
            out["images"] += int(y.shape[0])
        out["loss"] = running / max(1, n)
        out["steps"] = float(step)
        out["seconds"] = time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(ep, dict(out))
    state.set(1.0, step)
    model.eval()
    return out
