"""Batch norm for a width family started from a batch-norm checkpoint: a channel order and per-α statistics.

Two opt-ins for ``frozen_bn`` families (docs/lcs.md, "narrow members"):

* :func:`sort_channels_` — once, before training: permute every coupled channel group of the starting model by
  descending group L2 magnitude (Torch-Pruning's ``GroupMagnitudeImportance``, the rule hwloop's ``ChannelPrune``
  keeps channels by). The permutation preserves the model's function exactly; afterwards LCS's fixed prefix order
  (a member keeps the *first* ``round(width·C)`` channels) keeps the most important channels instead of the
  checkpoint's arbitrary first ones.
* :func:`calibrate_table` — once, after training (before deployment): the per-α batch-norm statistics of the
  family on a grid of α, computed on training batches, stored with the family (``LineNorm.table_*`` buffers) and
  linearly interpolated in α between grid points. With ``train_stats="batch"`` a family trains as the models
  trained alone do (each α normalised by its batch's statistics); without a table such a family has no statistics
  to deploy. Nothing is re-estimated on the device: the table is part of the family's files.

Why: a channel's pre-normalisation variance changes when its inputs are cut, so the checkpoint's statistics
frozen for every α make narrow members badly scaled (gradients 8–50× the full width's at the start), and the
clipping that keeps such training finite also starves the narrow members (widths ≤ 0.625 at chance after one
epoch, docs/lcs.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods.lcs.lines import LineNorm, LineState, line_layers, n_channels

__all__ = ["calibrate_table", "channel_order", "sort_channels_", "table_stats"]


def channel_order(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per coupled channel group (key of :func:`hwloop.compress.extract.analyze`), its channels in descending group
    L2 magnitude (stable: ties keep their index order)."""
    import torch_pruning as tp

    from hwloop.compress.extract import analyze

    graph = analyze(model, example)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    out: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        if g.kind != "channel":
            continue
        root = graph.roots[g.key]
        pruner = graph.dg.get_pruner_of_module(root)
        grp = graph.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            scores = imp(grp).detach().float().reshape(-1)
        out[g.key] = torch.argsort(scores, descending=True, stable=True)
    return out


_OUT_TENSORS = ("weight", "bias", "running_mean", "running_var")


def sort_channels_(model: nn.Module, example: torch.Tensor) -> dict[str, list[int]]:
    """Permute every coupled channel group of ``model`` in place by :func:`channel_order`; the function is unchanged.

    A group's output layers (conv/linear/batch norm) permute their output channels, its input layers (the convs
    and the classifier that read them) their input channels. Returns the order applied per group key.

    Raises:
        SearchError: a layer of a group that is neither a Conv2d / Linear / BatchNorm2d (one line).
    """
    from hwloop.compress.extract import analyze

    orders = channel_order(model, example)
    groups = {g.key: g for g in analyze(model, example).groups}
    mods = dict(model.named_modules())
    with torch.no_grad():
        for key, perm in orders.items():
            g = groups[key]
            for name in g.out_layers:
                m = mods[name]
                if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    raise SearchError(f"sort_channels: layer {name!r} is a {type(m).__name__}; allowed in a channel "
                                      "group: Conv2d, Linear, BatchNorm2d")
                for t in _OUT_TENSORS:
                    v = getattr(m, t, None)
                    if isinstance(v, torch.Tensor) and v.dim() >= 1:
                        if v.shape[0] != perm.numel():
                            raise SearchError(f"sort_channels: {name}.{t} has {v.shape[0]} rows, the group "
                                              f"{key!r} has {perm.numel()} channels")
                        v.copy_(v[perm])
            for name in g.in_layers:
                m = mods[name]
                if not isinstance(m, (nn.Conv2d, nn.Linear)) or m.weight.shape[1] != perm.numel():
                    raise SearchError(f"sort_channels: input layer {name!r} does not read the {perm.numel()} "
                                      f"channels of group {key!r} one to one (groups=1 convs and linears only)")
                m.weight.copy_(m.weight[:, perm])
    return {k: v.tolist() for k, v in orders.items()}


def _fbn_norms(net: nn.Module) -> list[tuple[str, LineNorm]]:
    return [(n, m) for n, m in line_layers(net) if isinstance(m, LineNorm) and m.kind == "fbn"]


def calibrate_table(net: nn.Module, state: LineState, loader: Iterable[Any], alphas: Sequence[float], *,
                    batches: int = 16, progress: bool = False) -> dict[str, float]:
    """Compute the batch-norm statistics of the line model ``net`` at each α of ``alphas`` and store them as its
    table (every frozen-BN :class:`LineNorm` gets ``table_alpha`` (G,), ``table_mean`` and ``table_var`` (G, C)).

    At each α the model runs ``batches`` batches of ``loader`` with every norm normalising by the batch's own
    statistics (as training does); a norm's table row is the average over the batches of the batch mean and of
    the unbiased batch variance (what ``BatchNorm2d`` with ``momentum=None`` keeps). Channels a grid α does not
    have take the next wider grid α's values (the widest: the frozen checkpoint statistics), so linear
    interpolation between neighbouring grid points is defined for every channel (:func:`table_stats`).

    Returns:
        ``{"alphas": G, "batches": ..., "images": forward image passes used, "mean_abs_log_std_ratio": how far the
        narrowest α's statistics are from the frozen ones}``.
    """
    from tqdm.auto import tqdm

    grid = sorted({float(a) for a in alphas})
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise SearchError(f"alphas={list(alphas)!r} must be a non-empty list of values in [0, 1]")
    if batches < 1:
        raise SearchError(f"batches={batches!r} must be >= 1")
    norms = _fbn_norms(net)
    if not norms:
        raise SearchError("calibrate_table is for frozen_bn families (an instance norm has no statistics)")
    was_training, alpha0 = net.training, state.alpha
    net.eval()
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        n: (m.running_mean.new_zeros(len(grid), m.num_channels), m.running_var.new_zeros(len(grid), m.num_channels))
        for n, m in norms}
    images = 0
    try:
        for gi, a in enumerate(tqdm(grid, desc="bn table", disable=not progress, leave=False)):
            state.set(a)
            for _, m in norms:
                m.start_accumulating()
            with torch.no_grad():
                for i, (x, _) in enumerate(loader):
                    if i >= batches:
                        break
                    net(x)
                    images += int(x.shape[0])
            for n, m in norms:
                k, s_mean, s_var = m.stop_accumulating()
                if k == 0:
                    raise SearchError("calibrate_table: the loader gave no batch")
                c = s_mean.numel()
                rows[n][0][gi, :c] = s_mean / k
                rows[n][1][gi, :c] = s_var / k
    finally:
        for _, m in norms:
            m.stop_accumulating()
        state.set(alpha0)
        net.train(was_training)
    logs = []
    for n, m in norms:
        mean, var = rows[n]
        for gi in range(len(grid) - 1, -1, -1):   # missing channels: the next wider grid alpha's (or frozen) values
            c = _channels(m, state, grid[gi])
            wider_mean = mean[gi + 1] if gi + 1 < len(grid) else m.running_mean
            wider_var = var[gi + 1] if gi + 1 < len(grid) else m.running_var
            mean[gi, c:] = wider_mean[c:]
            var[gi, c:] = wider_var[c:]
        m.set_table(torch.tensor(grid, dtype=mean.dtype), mean, var)
        c0 = _channels(m, state, grid[0])
        logs.append(float(0.5 * torch.log((m.running_var[:c0] + m.eps) / (var[0, :c0] + m.eps)).abs().mean()))
    return {"alphas": float(len(grid)), "batches": float(batches), "images": float(images),
            "mean_abs_log_std_ratio": sum(logs) / len(logs)}


def _channels(m: LineNorm, state: LineState, alpha: float) -> int:
    """The channels a norm of ``m.num_channels`` sees at ``alpha`` (every norm follows its conv's prefix width)."""
    return n_channels(state.lo + (state.hi - state.lo) * alpha, m.num_channels)


def table_stats(alpha_grid: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics at ``alpha``: the table row at a grid α, linear interpolation between neighbouring grid
    points, the nearest end row outside the grid."""
    grid = [float(a) for a in alpha_grid]
    j = bisect.bisect_left(grid, alpha)
    if j < len(grid) and grid[j] == alpha:
        return mean[j], var[j]
    if j == 0:
        return mean[0], var[0]
    if j == len(grid):
        return mean[-1], var[-1]
    t = (alpha - grid[j - 1]) / (grid[j] - grid[j - 1])
    return (1 - t) * mean[j - 1] + t * mean[j], (1 - t) * var[j - 1] + t * var[j]
