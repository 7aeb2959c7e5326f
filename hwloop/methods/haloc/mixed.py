"""HALOC's over-parameterised layer: candidate low-rank branches of one layer mixed by architecture logits.

A :class:`MixedLowRank` replaces one dense conv (or linear) during the search. It holds

* ``branches``: one real sub-network per candidate level — ``("rank", r)``: the Tucker-2 triple
  ``1×1 C_in→r``, ``k×k r→r`` (stride/padding/dilation of the conv), ``1×1 r→C_out``, initialised by HOSVD of the
  trained kernel with equal ranks (HALOC's principle P2; :func:`hwloop.compress.lowrank.tucker2`), or for a
  linear layer the truncated-SVD pair; ``("dense",)``: a trainable copy of the layer (the "keep it" choice);
* ``alpha``: the architecture logits, one per branch;
* ``original``: a frozen copy of the trained layer, the target of the feature-map-approaching regulariser.

Forward modes: ``softmax`` (DARTS: ``y = Σ_k p_k·f_k(x)``, every branch runs), ``gumbel`` (straight-through
Gumbel-softmax: one sampled branch runs, scaled by ``1 − p̃_k.detach() + p̃_k`` so the logits get a gradient;
with :attr:`st_all` every branch runs as ``Σ_j h_j·f_j(x)``, ``h = onehot(k) − p̃.detach() + p̃``: the same forward
value, but the task loss's gradient compares the branches. The one-branch form gives the logits only the
gradient of the branch's output *scale*, which a following batch norm in training mode removes: on the digits CNN
its task gradient on the logits is ~1e-5 against ~4e-2 for ``st_all``, so the architecture steps use ``st_all``;
:attr:`st_paths` ``>= 2`` runs only branch k and ``st_paths − 1`` others drawn by ``p``, ``q`` renormalised over them),
and fixed probabilities (:attr:`MixedLowRank.fixed`, e.g. one-hot). With ``collect_fm`` the layer stores
``fm_loss``: the mean over the branches that ran of ``‖f_k(x) − W·x‖² / ‖W·x‖²``.

:func:`wrap_model` puts mixed layers into a copy of a model; :func:`extract` takes one branch per layer into a
plain model and the plan (:class:`~hwloop.compress.actions.LowRank` ``tucker2`` / ``svd`` actions) that rebuilds it.

Example:
    >>> conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    >>> mixed = MixedLowRank(conv, [("dense",), ("rank", 4), ("rank", 8)])
    >>> mixed.fixed = torch.tensor([0.0, 0.0, 1.0])
    >>> x = torch.randn(2, 8, 6, 6)
    >>> bool(torch.allclose(mixed(x), mixed.branches[2](x)))
    True
    >>> [m.weight.shape[0] for m in mixed.branches[1]]
    [4, 4, 8]
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwloop.compress.actions import Action, LowRank
from hwloop.compress.extract import get_module, set_module
from hwloop.compress.lowrank import factorize, full_rank, is_factorizable, tucker2, tucker2_full_ranks
from hwloop.errors import CompressionError, SearchError

__all__ = ["DENSE", "MODES", "Level", "LogitChoice", "MixedLowRank", "eligible_layers", "extract", "max_equal_rank",
           "mixed_layers", "rank_level", "wrap_model"]

Level = tuple[Any, ...]
#: the level of the uncompressed layer
DENSE: Level = ("dense",)
MODES = ("softmax", "gumbel")


def rank_level(r: int) -> Level:
    """The level key of rank ``r``: ``("rank", r)``."""
    return ("rank", int(r))


def max_equal_rank(layer: nn.Module) -> int:
    """The largest equal rank ``r`` a layer's low-rank form takes: ``min`` of the Tucker-2 full ranks for a conv
    (both factors must hold ``r``), the SVD full rank for a linear layer."""
    if isinstance(layer, nn.Conv2d):
        return min(tucker2_full_ranks(layer))
    return full_rank(layer)


def eligible_layers(model: nn.Module, ignored: Sequence[str] = ()) -> list[str]:
    """Layers HALOC factorises: dense k×k convs (k > 1, groups 1) and linear layers, except the first
    conv/linear (the stem) and ``ignored`` (the classifier)."""
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = weighted[0] if weighted else None
    out = []
    for n, m in model.named_modules():
        if n == first or n in ignored or not is_factorizable(m):
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size[0] * m.kernel_size[1] > 1):
            out.append(n)
    return out


def _branch(layer: nn.Module, level: Level) -> nn.Module:
    if level == DENSE:
        return copy.deepcopy(layer)
    if len(level) != 2 or level[0] != "rank":
        raise SearchError(f"level {level!r} is unknown; allowed: ('dense',) or ('rank', r)")
    r = int(level[1])
    top = max_equal_rank(layer)
    if not 1 <= r <= top:
        raise SearchError(f"rank {r} is outside [1, {top}] for this layer")
    if isinstance(layer, nn.Conv2d):
        return tucker2(layer, (r, r))
    return factorize(layer, r)[0]


class LogitChoice(nn.Module):
    """Architecture logits ``alpha`` over candidate levels, shared by the rank choice (:class:`MixedLowRank`) and the
    width choice (:class:`~hwloop.methods.haloc.joint.WidthGate`): :meth:`probs` (``softmax(α/τ)``, or
    :attr:`fixed`), :meth:`argmax`, and :meth:`gumbel_draw` (the Gumbel-softmax sample ``F.gumbel_softmax`` makes).
    Subclasses set ``alpha``, ``tau`` and ``fixed``."""

    alpha: nn.Parameter
    tau: float
    fixed: torch.Tensor | None

    def probs(self) -> torch.Tensor:
        """The candidates' probabilities ``softmax(α/τ)`` (or :attr:`fixed`)."""
        if self.fixed is not None:
            return self.fixed
        return F.softmax(self.alpha / self.tau, dim=0)

    def argmax(self) -> int:
        return int(torch.argmax(self.alpha.detach()))

    def gumbel_draw(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(noisy logits / τ, their softmax, the drawn index)``."""
        noisy = (self.alpha - torch.empty_like(self.alpha).exponential_().log()) / self.tau
        soft = F.softmax(noisy, dim=0)
        return noisy, soft, int(torch.argmax(soft.detach()))


class MixedLowRank(LogitChoice):
    """One layer's candidate branches and architecture logits (see the module docstring).

    Args:
        layer: the trained dense ``nn.Conv2d`` (groups 1) or ``nn.Linear``.
        levels: the candidate levels, ``("dense",)`` and/or ``("rank", r)``.
    """

    def __init__(self, layer: nn.Module, levels: Sequence[Level]) -> None:
        super().__init__()
        if not is_factorizable(layer):
            raise SearchError(f"cannot factorise {type(layer).__name__}; only dense Conv2d (groups=1) and Linear")
        if not levels:
            raise SearchError("a mixed layer needs at least one candidate level")
        self.levels: tuple[Level, ...] = tuple(tuple(lv) for lv in levels)
        self.branches = nn.ModuleList(_branch(layer, lv) for lv in self.levels)
        self.original = copy.deepcopy(layer)
        for p in self.original.parameters():
            p.requires_grad_(False)
        self.alpha = nn.Parameter(torch.zeros(len(self.levels)))
        self.mode = "softmax"
        self.tau = 1.0
        self.fixed: torch.Tensor | None = None
        self.collect_fm = False
        self.st_all = False
        self.st_paths = 0
        self.fm_loss: torch.Tensor | None = None
        self.last_index: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sampled: int | None = None
        if self.fixed is not None:
            weights = [(k, self.fixed[k]) for k in range(len(self.branches)) if float(self.fixed[k]) != 0.0]
        elif self.mode == "gumbel" and self.training:
            noisy, soft, k = self.gumbel_draw()
            sampled = k
            if self.st_all:   # forward = branch k; backward compares the branches (y = Σ_j h_j f_j, h = 1_k − q + q)
                n = len(self.branches)
                idx = list(range(n))
                if 2 <= self.st_paths < n:   # k and st_paths − 1 others drawn by p (ProxylessNAS-style paths)
                    rest = self.probs().detach().clone()
                    rest[k] = 0.0
                    idx = [k, *torch.multinomial(rest, self.st_paths - 1).tolist()]
                q = F.softmax(noisy[idx], dim=0)   # only the logits of the branches that ran get a gradient
                h = (torch.tensor(idx) == k).to(q) - q.detach() + q
                weights = [(j, h[i]) for i, j in enumerate(idx)]
            else:
                weights = [(k, 1.0 - soft[k].detach() + soft[k])]
        else:
            p = self.probs()
            weights = [(k, p[k]) for k in range(len(self.branches))]
        outs = [(self.branches[k](x), w) for k, w in weights]
        self.last_index = weights[0][0] if len(weights) == 1 else sampled
        if self.collect_fm:
            with torch.no_grad():
                ref = self.original(x)
            denom = ref.pow(2).mean().clamp_min(1e-12)
            self.fm_loss = torch.stack([(o - ref).pow(2).mean() / denom for o, _ in outs]).mean()
        else:
            self.fm_loss = None
        y = outs[0][0] * outs[0][1]
        for o, w in outs[1:]:
            y = y + o * w
        return y


def wrap_model(model: nn.Module, levels: Mapping[str, Sequence[Level]]) -> nn.Module:
    """A copy of ``model`` whose layers named in ``levels`` are :class:`MixedLowRank` over those levels."""
    net = copy.deepcopy(model)
    for name, lv in levels.items():
        set_module(net, name, MixedLowRank(get_module(net, name), lv))
    return net


def mixed_layers(model: nn.Module) -> dict[str, MixedLowRank]:
    """The mixed layers of a wrapped model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MixedLowRank)}


def extract(model: nn.Module, choice: Mapping[str, Level] | None = None) -> tuple[nn.Module, list[Action]]:
    """A plain model with one branch per mixed layer (``choice``: name → level; default each layer's argmax)
    and the plan actions that rebuild its structure from the base model.

    The chosen branch's weights are copied as they are (they are what the search trained); a ``dense`` choice
    puts the trained dense copy back and adds no action.
    """
    net = copy.deepcopy(model)
    actions: list[Action] = []
    for name, m in mixed_layers(net).items():
        level = tuple(choice[name]) if choice is not None and name in choice else m.levels[m.argmax()]
        if level not in m.levels:
            raise CompressionError(f"level {level!r} is not a candidate of {name!r}; candidates: {list(m.levels)}")
        branch = m.branches[m.levels.index(level)]
        set_module(net, name, branch)
        if level != DENSE:
            r = int(level[1])
            if isinstance(branch[0], nn.Conv2d):  # type: ignore[index]  # a branch is an nn.Sequential
                actions.append(LowRank(name, "tucker2", (r, r)))
            else:
                actions.append(LowRank(name, "svd", (r,)))
    return net, actions
