"""How SBS moves its thresholds: :class:`ThresholdStep` (``gate_step`` = ``adam`` | ``cost`` | ``shared``).

* ``adam`` (the default): Adam per threshold (β₁ = ``gate_momentum``). Adam divides every threshold's gradient by
  its own running RMS, so each moves by about ``gate_lr`` per step whatever the size of its gradient: a gate that
  buys almost no latency (an activation gate on asic-tpu32) moves as fast under the cost pull, or under batch
  noise, as one that buys a lot.
* ``cost``: the Adam step of each threshold scaled by its share of the cost, ``w_i = s_i·Σs / Σs²`` (capped at
  ``cap``), ``s_i = |∂(cost/cost₀)/∂θ_i|`` at the current configuration (the straight-through gradient of the
  latency w.r.t. that gate: the latency it controls). The normalisation keeps the step's linearised cost pace
  ``Σ s_i w_i`` equal to Adam's ``Σ s_i``, so the search still tracks the annealed target; gates with no latency
  behind them barely move.
* ``shared``: Adam with **one** second-moment estimate for all thresholds (``v`` = running mean over thresholds
  of the squared gradient), so each moves in proportion to its own gradient (task + λ·cost), and the RMS step is
  ``gate_lr``: gradient descent on the Lagrangian, with gates that matter little to either term left in place.

Example:
    >>> import torch
    >>> a, b = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
    >>> step = ThresholdStep([a, b], lr=0.01, mode="cost")
    >>> ratio = 0.9 * a + 0.1 * b            # a controls 9x the cost of b
    >>> step.observe_cost(ratio)
    >>> ratio.backward()
    >>> step.step()
    >>> round(float(a) / float(b), 1)        # Adam alone would move both by -0.01
    9.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hwloop.errors import SearchError

__all__ = ["GATE_STEPS", "ThresholdStep"]

GATE_STEPS = ("adam", "cost", "shared")


class ThresholdStep:
    """The thresholds' optimizer (see the module docstring).

    Args:
        params: the thresholds (:meth:`SbsModel.threshold_parameters`).
        lr: ``gate_lr``.
        beta1: Adam's β₁ (``gate_momentum``).
        mode: ``adam``, ``cost`` or ``shared``.
        cap: the largest cost-share factor (mode ``cost``).
    """

    def __init__(self, params: Sequence[nn.Parameter], lr: float, beta1: float = 0.0, mode: str = "adam",
                 cap: float = 4.0, beta2: float = 0.999, eps: float = 1e-8) -> None:
        if mode not in GATE_STEPS:
            raise SearchError(f"gate_step={mode!r} is unknown; allowed: {', '.join(GATE_STEPS)}")
        self.params = list(params)
        self.lr, self.beta1, self.beta2, self.eps, self.mode, self.cap = lr, beta1, beta2, eps, mode, cap
        self._adam = torch.optim.Adam(self.params, lr=lr, betas=(beta1, beta2), eps=eps) if mode != "shared" else None
        self._m = [torch.zeros_like(p) for p in self.params]
        self._v = 0.0
        self._t = 0
        self._scale: list[torch.Tensor] | None = None
        #: the last step's per-threshold factors (mode ``cost``; 1 otherwise), for the record
        self.last_scale: list[torch.Tensor] = [torch.ones_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def observe_cost(self, ratio: torch.Tensor) -> None:
        """Mode ``cost``: read every threshold's share of ``ratio`` (the cost ratio of this step, before
        ``backward``; its graph is kept). Other modes: nothing."""
        if self.mode != "cost":
            return
        shares = [torch.zeros_like(p) for p in self.params]
        if ratio.requires_grad:
            grads = torch.autograd.grad(ratio, self.params, retain_graph=True, allow_unused=True)
            shares = [s if g is None else g.detach().abs() for s, g in zip(shares, grads)]
        flat = torch.cat([s.flatten() for s in shares]) if shares else torch.zeros(0)
        sq = float((flat ** 2).sum())
        if not sq > 0 or not math.isfinite(sq):
            self._scale = None        # no cost gradient (e.g. no gate changes the cost): plain Adam
            return
        norm = float(flat.sum()) / sq
        self._scale = [(s * norm).clamp(max=self.cap) for s in shares]

    @torch.no_grad()
    def step(self) -> None:
        if self.mode == "shared":
            self._t += 1
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            n = sum(g.numel() for g in grads)
            if not n:
                return
            msq = float(sum(float((g.float() ** 2).sum()) for g in grads)) / n
            self._v = self.beta2 * self._v + (1 - self.beta2) * msq
            denom = math.sqrt(self._v / (1 - self.beta2 ** self._t)) + self.eps
            for p, g, m in zip(self.params, grads, self._m):
                m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
                p.sub_(self.lr * (m / (1 - self.beta1 ** self._t)) / denom)
            return
        assert self._adam is not None
        before = [p.detach().clone() for p in self.params] if self._scale is not None else None
        self._adam.step()
        if before is not None and self._scale is not None:
            for p, b, s in zip(self.params, before, self._scale):
                p.copy_(b + (p - b) * s)
            self.last_scale = self._scale
        self._scale = None
