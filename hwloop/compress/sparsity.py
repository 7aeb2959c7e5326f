"""Sparsity masks and the ``Sparsify`` handler: weights zeroed by magnitude in three patterns.

* ``unstructured``: keep the ``round(density·numel)`` weights of largest magnitude in the layer;
* ``n:m``: in every run of ``m`` consecutive input channels (per output channel and kernel position) keep the
  ``n`` largest (the NVIDIA 2:4 layout when ``n=2, m=4``); a last, shorter run keeps ``n`` too;
* ``block``: tile the (out, in) channel plane in ``block=(bo, bi)`` tiles (each with all kernel positions;
  edge tiles may be smaller) and keep the ``round(density·tiles)`` tiles of largest L2 norm.

At least one weight (one tile) is always kept; ties keep the lower index. Masking is idempotent: replaying the
action on weights it already masked changes nothing.

Example:
    >>> import torch
    >>> from hwloop.compress.sparsity import sparsity_mask
    >>> w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 0.3, 0.0, -0.4, 0.8]])
    >>> sparsity_mask(w, "n:m", n=2, m=4).int().tolist()
    [[0, 1, 1, 0, 0, 0, 1, 1]]
    >>> sparsity_mask(w, "unstructured", density=0.25).int().tolist()
    [[0, 1, 0, 0, 0, 0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hwloop.compress.actions import Sparsify
from hwloop.compress.extract import get_module
from hwloop.errors import CompressionError

__all__ = ["SparsifyHandler", "sparsity_kept", "sparsity_mask"]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of a 1-D tensor (stable: ties keep the lower index)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return mask


def sparsity_mask(w: torch.Tensor, pattern: str, *, density: float | None = None, n: int | None = None,
                  m: int | None = None, block: tuple[int, ...] | None = None) -> torch.Tensor:
    """The keep-mask (same shape as ``w``, output channels first) of one :class:`Sparsify` pattern."""
    w = w.detach()
    if w.dim() < 2:
        raise CompressionError(f"sparsity needs a weight of at least 2 dims (out, in, ...), got {list(w.shape)}")
    mag = w.abs().float()
    if pattern == "unstructured":
        assert density is not None
        k = max(1, round(density * w.numel()))
        return _top(mag.reshape(-1), k).reshape(w.shape)
    if pattern == "n:m":
        assert n is not None and m is not None
        moved = mag.movedim(1, -1)                              # (out, ..., in)
        cin = moved.shape[-1]
        pad = (-cin) % m
        padded = torch.nn.functional.pad(moved, (0, pad), value=-1.0)   # padding never wins a slot
        runs = padded.reshape(-1, m)
        order = torch.argsort(runs, dim=1, descending=True, stable=True)
        keep = torch.zeros_like(runs, dtype=torch.bool)
        keep.scatter_(1, order[:, :n], True)
        keep = keep.reshape(padded.shape)[..., :cin]
        return keep.movedim(-1, 1).contiguous()
    if pattern == "block":
        assert density is not None and block is not None
        bo, bi = int(block[0]), int(block[1])
        out_c, in_c = w.shape[0], w.shape[1]
        sq = (mag ** 2).reshape(out_c, in_c, -1).sum(-1)       # (out, in)
        po, pi = (-out_c) % bo, (-in_c) % bi
        tiles = torch.nn.functional.pad(sq, (0, pi, 0, po)).reshape((out_c + po) // bo, bo, (in_c + pi) // bi, bi)
        norms = tiles.sum((1, 3))                               # (tiles_out, tiles_in)
        k = max(1, round(density * norms.numel()))
        kept = _top(norms.reshape(-1), k).reshape(norms.shape)
        plane = kept.repeat_interleave(bo, 0).repeat_interleave(bi, 1)[:out_c, :in_c]
        return plane.reshape(out_c, in_c, *([1] * (w.dim() - 2))).expand(w.shape).contiguous()
    raise CompressionError(f"sparsity pattern {pattern!r} is unknown; allowed: unstructured, n:m, block")


class SparsifyHandler:
    """Zeroes each listed layer's weight outside its mask (the bias is kept)."""

    action = Sparsify

    def apply(self, model: nn.Module, actions: Sequence[Sparsify], state: object) -> None:
        with torch.no_grad():
            for a in actions:
                mod = get_module(model, a.layer)
                w = getattr(mod, "weight", None)
                if not isinstance(w, torch.Tensor) or w.dim() < 2:
                    raise CompressionError(f"layer {a.layer!r} has no conv/linear weight to sparsify")
                groups = getattr(mod, "groups", 1)
                if a.pattern != "unstructured" and groups != 1:
                    raise CompressionError(f"sparsify[{a.layer!r}] pattern {a.pattern!r} needs a dense layer "
                                           f"(groups=1), this one has groups={groups}")
                mask = sparsity_mask(w, a.pattern, density=a.density, n=a.n, m=a.m, block=a.block)
                w.copy_(torch.where(mask, w, torch.zeros_like(w)))


@contextmanager
def sparsity_kept(model: nn.Module, actions: Iterable[object]) -> Iterator[list[str]]:
    """Inside the block, every layer a :class:`Sparsify` in ``actions`` keeps that action's zeros.

    For fine-tuning a sparsified model: a plain optimizer step (momentum, weight decay, any gradient) regrows the
    zeros, and the plan's replay would then zero different weights than the ones trained. Each layer's mask is the
    action's own pattern on the current weight (what the replay keeps), held with
    :func:`torch.nn.utils.prune.custom_from_mask` (``weight = weight_orig * weight_mask``, so the zeroed weights
    get no update and stay zero); on exit the reparametrisation is removed and ``weight`` is a plain parameter again
    (masked). Other actions are ignored. Yields the names of the held layers.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hwloop.compress.actions import Sparsify
        >>> net = nn.Sequential(nn.Linear(8, 4))
        >>> a = Sparsify("0", "n:m", n=2, m=4)
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.where(sparsity_mask(net[0].weight, "n:m", n=2, m=4),
        ...                                         net[0].weight, torch.zeros(())))
        >>> with sparsity_kept(net, [a]) as held:
        ...     opt = torch.optim.SGD(net.parameters(), lr=0.5, weight_decay=0.1)
        ...     net(torch.randn(16, 8)).pow(2).sum().backward()
        ...     opt.step()
        >>> held, int((net[0].weight == 0).sum()), isinstance(net[0].weight, nn.Parameter)
        (['0'], 16, True)
    """
    from torch.nn.utils import prune

    held: list[str] = []
    try:
        for a in actions:
            if not isinstance(a, Sparsify):
                continue
            mod = get_module(model, a.layer)
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2:
                raise CompressionError(f"layer {a.layer!r} has no conv/linear weight to keep sparse")
            prune.custom_from_mask(mod, "weight", sparsity_mask(w, a.pattern, density=a.density, n=a.n, m=a.m,
                                                                block=a.block))
            held.append(a.layer)
        yield held
    finally:   # one removal per layer (a second Sparsify on a layer was combined into its mask by torch's container)
        for name in dict.fromkeys(held):
            prune.remove(get_module(model, name), "weight")
