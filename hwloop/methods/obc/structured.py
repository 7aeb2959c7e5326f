"""Structured ExactOBS: whole input channels removed with the block OBS update, coupled channel groups.

A coupled channel group (:class:`~hwloop.compress.extract.ChannelGroup`: residual-tied layers share one) is
removed channel by channel. Removing channel ``c`` deletes the output channel ``c`` of every producer (its
conv/linear rows and batch-norm entries) and the input columns ``P_c`` of every consumer (``kh·kw`` columns of
a conv, ``H·W`` of a linear after a flatten, one after a global pool). Each consumer ``L`` compensates with the
block OBS update ``W_L ← W_L − W_L[:, P](H⁻¹_L[P, P])⁻¹H⁻¹_L[P, :]`` and its inverse Hessian is downdated the
same way; the channel removed next is the one with the smallest summed output error
``½·Σ_L tr(W_L[:, P](H⁻¹_L[P, P])⁻¹W_L[:, P]ᵀ)`` over the group's consumers, so residual-tied layers decide
together. One greedy pass gives every level (channels kept) of a group; its loss is the exact summed output
error of the consumers at the dense model's inputs.

:func:`apply_group_` puts one level into a dense model by masking (zero producer rows, zero batch-norm
scale and shift, the compensated consumer weights), which computes exactly what the physically pruned model
computes; :func:`physical_prune` removes the masked channels for real (Torch-Pruning, explicit masks), and
:func:`reestimate_bn` recomputes batch-norm statistics on calibration batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hwloop.compress.extract import ChannelGroup, analyze, get_module, prune_groups_
from hwloop.errors import SearchError
from hwloop.methods.obc.exactobs import layer_weight, prepare_hessian

__all__ = ["GroupDatabase", "GroupInfo", "apply_group_", "group_infos", "physical_prune", "reestimate_bn",
           "structured_database"]

_WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class GroupInfo:
    """A prunable group: its producers (conv/linear rows), batch-norms and consumers (input columns)."""

    key: str
    channels: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[str, ...]


@dataclass
class GroupDatabase:
    """Every level of one group: ``masks[k]`` (channels kept), ``weights[k]`` (consumer → compensated
    weight) and ``loss[k]`` (the consumers' summed output error), for each number of channels kept ``k``."""

    info: GroupInfo
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    weights: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    loss: dict[int, float] = field(default_factory=dict)


def group_infos(model: nn.Module, groups: Iterable[ChannelGroup]) -> tuple[list[GroupInfo], list[str]]:
    """The groups structured OBS can take (``channel`` groups whose consumers are dense conv/linear layers whose
    input columns split evenly by channel), and one line per group left out and why."""
    out, skipped = [], []
    for g in groups:
        if g.kind != "channel":
            continue
        prods = [n for n in g.out_layers if isinstance(get_module(model, n), _WEIGHTED)]
        norms = [n for n in g.out_layers if isinstance(get_module(model, n), nn.modules.batchnorm._BatchNorm)]
        why = None
        for n in g.in_layers:
            m = get_module(model, n)
            if getattr(m, "groups", 1) != 1:
                why = f"consumer {n} is a grouped conv"
            elif layer_weight(m)[0].numel() % g.channels:
                why = f"consumer {n}'s {layer_weight(m)[0].numel()} inputs do not split over {g.channels} channels"
        if any(n in g.in_layers for n in prods):
            why = "a layer both produces and consumes the group"
        if not g.in_layers:
            why = "no consumer"
        if why:
            skipped.append(f"{g.key}: {why}")
            continue
        out.append(GroupInfo(g.key, g.channels, tuple(prods), tuple(norms), tuple(g.in_layers)))
    return out, skipped


def structured_database(model: nn.Module, info: GroupInfo, hessians: Mapping[str, torch.Tensor],
                        keeps: Sequence[int], *, rel_damp: float = 0.0, dtype: torch.dtype = torch.float64
                        ) -> GroupDatabase:
    """One greedy block-OBS pass over the group's channels, recording the levels ``keeps`` (channels kept)."""
    C = info.channels
    Ws, Hinvs, bss = [], [], []
    for n in info.consumers:
        w = layer_weight(get_module(model, n)).detach()
        W0 = w.reshape(w.shape[0], -1).to(torch.float64)
        _, W, Hinv = prepare_hessian(hessians[n], W0, rel_damp)
        Ws.append(W.to(dtype))
        Hinvs.append(Hinv.to(dtype))
        bss.append(W.shape[1] // C)
    dev = Ws[0].device
    db = GroupDatabase(info)
    removed = torch.zeros(C, dtype=torch.bool, device=dev)
    want = {int(k) for k in keeps if 1 <= int(k) <= C}
    total = 0.0

    def record(k: int) -> None:
        db.masks[k] = (~removed).cpu().clone()
        db.weights[k] = {n: W.reshape(layer_weight(get_module(model, n)).shape)
                         .to(layer_weight(get_module(model, n)).dtype).clone() for n, W in zip(info.consumers, Ws)}
        db.loss[k] = total

    if C in want:
        record(C)
    for step in range(C - min(want, default=C)):
        scores = torch.zeros(C, dtype=dtype, device=dev)
        invs = []
        for W, Hinv, bs in zip(Ws, Hinvs, bss):
            blocks = Hinv.reshape(C, bs, C, bs).diagonal(dim1=0, dim2=2).permute(2, 0, 1)   # (C, bs, bs)
            eye = torch.eye(bs, dtype=dtype, device=dev)
            blocks = torch.where(removed[:, None, None], eye, blocks)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(blocks))
            wb = W.reshape(W.shape[0], C, bs)
            scores += torch.einsum("rcb,cbe,rce->c", wb, inv, wb)
            invs.append(inv)
        scores = scores.masked_fill(removed, float("inf"))
        c = int(torch.argmin(scores))
        total += float(scores[c]) / 2
        for i, (W, Hinv, bs) in enumerate(zip(Ws, Hinvs, bss)):
            P = slice(c * bs, (c + 1) * bs)
            hrows = Hinv[P, :]                                # (bs, d)
            W -= W[:, P] @ invs[i][c] @ hrows
            Hinv -= hrows.t() @ invs[i][c] @ hrows
            W[:, P] = 0.0
            Hinv[P, :] = 0.0
            Hinv[:, P] = 0.0
            Hinv[P, P] = torch.eye(bs, dtype=dtype, device=dev)
        removed[c] = True
        if C - step - 1 in want:
            record(C - step - 1)
    return db


@torch.no_grad()
def apply_group_(model: nn.Module, info: GroupInfo, mask: torch.Tensor,
                 weights: Mapping[str, torch.Tensor] | None) -> None:
    """Put one level of a group into a dense model by masking (in place): producer rows, biases and batch-norm
    scale/shift of removed channels set to zero, consumer weights replaced by their compensated ones."""
    drop = ~mask.to(torch.bool)
    for n in [*info.producers, *info.norms]:
        m = get_module(model, n)
        if getattr(m, "weight", None) is None:
            continue
        w = layer_weight(m)
        w[drop.to(w.device)] = 0.0
        b = getattr(m, "bias", None)
        if isinstance(b, torch.Tensor):
            b[drop.to(w.device)] = 0.0
    for n, wt in (weights or {}).items():
        layer_weight(get_module(model, n)).copy_(wt)


def physical_prune(model: nn.Module, example: torch.Tensor, masks: Mapping[str, torch.Tensor],
                   ignored: Sequence[str]) -> nn.Module:
    """Remove the masked channels of each group for real (in place; returned)."""
    keep = {k: m.to(torch.bool) for k, m in masks.items() if not bool(m.all())}
    if keep:
        graph = analyze(model, example, ignored=list(ignored))
        prune_groups_(graph, keep)
    return model


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Sequence[torch.Tensor], mode: str = "reset") -> int:
    """Batch-norm running statistics recomputed over ``batches``; returns how many layers.

    ``mode="reset"``: the statistics are reset and become the cumulative average over the batches;
    ``"blend"``: not reset, updated with each layer's own momentum (the trained statistics are the prior)."""
    if mode not in ("reset", "blend"):
        raise SearchError(f"batch-norm re-estimation mode={mode!r} is unknown; allowed: reset, blend")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return 0
    saved = [(m, m.momentum) for m in bns]
    if mode == "reset":
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
    was = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)
    return len(bns)
