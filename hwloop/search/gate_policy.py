"""Opt-in gate policies of the differentiable search (``l1l2``): width floors, magnitude-chosen channels, the gate
optimiser.

The evidence harness showed where ``l1l2`` loses against uniform width scaling and global magnitude pruning on
CIFAR-10 ResNet-20 (``docs/methods.md``, "Why l1l2 lost"): the gates cut the first stage to 3-4 of 16 channels
(the allocation), and the channels they keep are close to random with respect to weight magnitude (the choice).
Each policy here addresses one of these, is off by default (the search then behaves exactly as before) and is a
:class:`~hwloop.search.differentiable.SearchConfig` / ``l1l2`` key:

* ``min_width`` (:func:`apply_width_floor`, :func:`floored_sizes`): every channel (and rank) group keeps at least
  ``ceil(min_width · channels)``: the floor is the gates' ``min_keep`` (so hard sizes, :func:`~hwloop.methods.
  budget.enforce_budget` and extraction respect it), and inside the search the latency sees
  ``max(s(a), floor)``: a group at its floor saves nothing more, so the latency term stops pulling its gates
  down and the budget is found in the other groups.
* ``keep_by = "magnitude"`` (:func:`magnitude_scores`, :func:`keep_by_magnitude_`): the gates decide *how many*
  channels each group keeps, the starting model's group L2 magnitude (the magnitude control's criterion,
  :func:`hwloop.search.controls.channel_scores`) decides *which*. When the channels are fixed (the warm-up end with
  ``prune_after_warmup``, else extraction) the chosen channels' gates go back to their starting values and the
  others to zero.
* ``gate_optimizer = "sgd"`` (:func:`make_gate_optimizer`): plain SGD on the gates at ``gate_lr``: a gate moves in
  proportion to its gradient, so an expensive channel's larger latency gradient moves it more; Adam (the default)
  normalises every gate's step to about ``gate_lr`` whatever its gradient's size.

Example:
    >>> import torch
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> from hwloop.compress.gated import GatedModel
    >>> gm = GatedModel(SearchSpace.from_ref(ModelRef("small_cnn")))
    >>> floors = apply_width_floor(gm, 0.5)
    >>> [(gm.channel_gates[k].max_size, f, gm.channel_gates[k].min_keep) for k, f in floors.items()]
    [(16, 8, 8), (32, 16, 16), (64, 32, 32)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from hwloop.compress.gated import GatedModel
from hwloop.compress.keys import SizeKey
from hwloop.errors import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from hwloop.search.space import SearchSpace

__all__ = ["GATE_OPTIMIZERS", "KEEP_BY", "apply_width_floor", "check_gate_policy", "describe", "floored_sizes",
           "keep_by_magnitude_", "magnitude_scores", "make_gate_optimizer"]

KEEP_BY = ("gate", "magnitude")
GATE_OPTIMIZERS = ("adam", "sgd")


def check_gate_policy(min_width: object, keep_by: object, gate_optimizer: object) -> None:
    """One-line :class:`SearchError` naming the bad value and what is allowed.

    Example:
        >>> check_gate_policy(0.25, "magnitude", "sgd")
        >>> check_gate_policy(1.0, "gate", "adam")
        Traceback (most recent call last):
        ...
        hwloop.errors.SearchError: min_width=1.0 must be a fraction of each group's channels in [0, 1)
    """
    if not isinstance(min_width, (int, float)) or isinstance(min_width, bool) or not 0.0 <= min_width < 1.0:
        raise SearchError(f"min_width={min_width!r} must be a fraction of each group's channels in [0, 1)")
    if keep_by not in KEEP_BY:
        raise SearchError(f"keep_by={keep_by!r} is unknown; allowed: {', '.join(KEEP_BY)}")
    if gate_optimizer not in GATE_OPTIMIZERS:
        raise SearchError(f"gate_optimizer={gate_optimizer!r} is unknown; allowed: {', '.join(GATE_OPTIMIZERS)}")


def describe(min_width: float, keep_by: str, gate_optimizer: str, gate_lr: float) -> str:
    """The search log's words for the policies in force ('' when all are off).

    Example:
        >>> describe(0.375, "magnitude", "adam", 0.05)
        ', every group keeps >= 37.5% of its channels, channels chosen by starting-weight magnitude'
    """
    out = ""
    if min_width > 0:
        out += f", every group keeps >= {min_width:.1%} of its channels"
    if keep_by == "magnitude":
        out += ", channels chosen by starting-weight magnitude"
    if gate_optimizer == "sgd":
        out += f", plain SGD on the gates (lr {gate_lr:g})"
    return out


def apply_width_floor(gm: GatedModel, min_width: float) -> dict[str, int]:
    """Raise every channel (and rank) gate's ``min_keep`` to ``ceil(min_width · channels)``; returns the floors
    ``{group: channels}`` of the groups it raised (empty for ``min_width = 0``: nothing changes)."""
    floors: dict[str, int] = {}
    if min_width <= 0:
        return floors
    for key, gate in gm.channel_gates.items():
        floor = min(gate.max_size, max(gate.min_keep, math.ceil(min_width * gate.max_size - 1e-9)))
        if floor > gate.min_keep:
            gate.min_keep = floor
            floors[key] = floor
    return floors


def floored_sizes(sizes: Mapping[str, torch.Tensor], floors: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """``sizes`` with each floored group's width at ``max(s(a), floor)``: no latency gradient below the floor.

    Example:
        >>> a = torch.tensor(2.0, requires_grad=True)
        >>> s = floored_sizes({"ch:g": a * 1.0}, {"g": 3})["ch:g"]
        >>> s.backward(); float(s.detach()), float(a.grad)
        (3.0, 0.0)
    """
    out = dict(sizes)
    for key, floor in floors.items():
        k = SizeKey.channels(key)
        if k in out:
            out[k] = torch.clamp(out[k], min=float(floor))
    return out


def make_gate_optimizer(params: list[nn.Parameter], kind: str, lr: float) -> torch.optim.Optimizer:
    """Adam (the default) or plain SGD (no momentum, no weight decay) on the gate parameters.

    Example:
        >>> p = nn.Parameter(torch.zeros(1)); opt = make_gate_optimizer([p], "sgd", 0.5)
        >>> p.grad = torch.tensor([1e-3]); opt.step(); round(float(p), 7)   # moves by lr * gradient
        -0.0005
    """
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise SearchError(f"gate_optimizer={kind!r} is unknown; allowed: {', '.join(GATE_OPTIMIZERS)}")


def magnitude_scores(space: SearchSpace, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Group L2 magnitude of every channel of every channel group of ``model`` (default: the space's), the
    magnitude control's scores (:func:`hwloop.search.controls.channel_scores`)."""
    from hwloop.search.controls import channel_scores
    from hwloop.search.space import SearchSpace as _Space

    if model is not None and model is not space.model:
        space = _Space(model, space.example, space.options, ref=space.ref)
    try:
        return channel_scores(space)
    except SearchError as e:
        raise SearchError(f"keep_by='magnitude' needs channel groups ([space] channels = true): {e}") from e


def keep_by_magnitude_(gm: GatedModel, widths: Mapping[str, int], scores: Mapping[str, torch.Tensor],
                       start: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep, in each group with a score, the ``widths[group]`` channels of largest score: their gates are set to
    their starting values ``start[group]`` (clamped > 0), the others to 0, so every later
    ``keep_mask(widths[group])`` (:func:`~hwloop.compress.gated.extract`, :func:`~hwloop.compress.gated.rewind`)
    selects exactly them. Groups without a score (rank groups) keep the gates' choice. Returns the masks."""
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, gate in gm.channel_gates.items():
            width = int(min(gate.max_size, max(1, widths.get(key, gate.hard_size()))))
            sc = scores.get(key)
            if sc is None or sc.numel() != gate.max_size:
                masks[key] = gate.keep_mask(width)
                continue
            order = torch.argsort(sc.detach().float(), descending=True, stable=True)
            mask = torch.zeros(gate.max_size, dtype=torch.bool)
            mask[order[:width]] = True
            a = gate.values()
            a.copy_(torch.where(mask, start[key].to(a.dtype).clamp_min(1e-6), torch.zeros_like(a)))
            masks[key] = mask
    return masks
