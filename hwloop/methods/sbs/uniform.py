"""Uniform configurations through SBS's extraction and QAT path: the controls of issue 19 as method entries.

``sbs`` with ``uniform = [w_bits, a_bits]`` runs no search: every searched layer at ``w_bits`` / ``a_bits`` (the
first conv and the classifier keep ``first_last``'s policy, as in SBS), every coupled channel group cut by the same
fraction (the largest filters by SBS's filter score kept, each group at least its floor), the fraction the largest
whose exact cost (the same table SBS prices with) is within the target; then :meth:`SbsMethod.finish`: the same
extraction, batch-norm re-estimation, activation ranges and QAT fine-tune as SBS's own configuration. With
``[4, 4]`` that is *uniform W4A4 QAT at matched cost*; with ``[8, 8]`` *prune-then-quantize* (channel pruning to
the latency at W8A8, then uniform W8A8 quantization). In the evidence harness they are ``[[methods]]`` entries
(``search/bench-methods-sbs-cifar10-resnet20.toml``), given SBS's training images as fine-tune epochs.

Example:
    >>> from hwloop.methods import make_method
    >>> make_method("sbs", {"uniform": [4, 4]}).config.uniform
    (4, 4)
    >>> make_method("sbs", {"uniform": [3, 4]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [method] sbs: uniform=[3, 4] must be [w_bits, a_bits] with w_bits one of w_levels ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hwloop.errors import SearchError

__all__ = ["check_uniform", "fit_fraction", "uniform_config"]


def check_uniform(value: Any, w_levels: Sequence[int], a_levels: Sequence[int]) -> tuple[int, int] | None:
    """``uniform`` validated: None, or ``(w_bits, a_bits)`` with each a level SBS prices (one-line SearchError)."""
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(b, int) and not isinstance(b, bool) for b in value)
          and value[0] in w_levels and value[1] in a_levels)
    if not ok:
        raise SearchError(f"uniform={list(value) if isinstance(value, tuple) else value!r} must be [w_bits, a_bits] "
                          f"with w_bits one of w_levels {list(w_levels)} and a_bits one of a_levels "
                          f"{list(a_levels)}, or none (the search)")
    return int(value[0]), int(value[1])


def uniform_config(top: Mapping[str, Any], groups: Sequence[Any], policy: Mapping[str, str], bits: tuple[int, int],
                   fraction: float, scores: Mapping[str, torch.Tensor], floor: Callable[[int], int]
                   ) -> dict[str, Any]:
    """The hard configuration (``SbsModel.hard_config`` format) of ``top`` with every searched layer at ``bits`` and
    every group keeping ``max(floor(channels), round(fraction · channels))`` channels, the highest ``scores`` first."""
    w, a = dict(top["w"]), dict(top["a"])
    for n in w:
        if policy.get(n) == "search":
            w[n], a[n] = bits
    masks: dict[str, torch.Tensor] = {}
    for g in groups:
        k = min(g.channels, max(floor(g.channels), round(float(fraction) * g.channels)))
        m = torch.zeros(g.channels, dtype=torch.bool)
        m[torch.argsort(scores[g.key], descending=True, stable=True)[:k]] = True
        masks[g.key] = m
    return {"masks": masks, "w": w, "a": a}


def fit_fraction(cost_of: Callable[[float], float], budget: float | None, steps: int = 14) -> float:
    """The largest channel fraction in [0, 1] whose cost ``cost_of(fraction)`` (non-decreasing) is within
    ``budget`` (bisection, ``steps`` evaluations; None: 1.0, full width). When even the smallest configuration is
    over the budget, 0.0 (every group at its floor; the method's judge reports the miss).

    Example:
        >>> round(fit_fraction(lambda f: f * f, 0.25), 3)
        0.5
    """
    if budget is None or cost_of(1.0) <= budget:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(max(1, int(steps))):
        mid = (lo + hi) / 2
        if cost_of(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo
