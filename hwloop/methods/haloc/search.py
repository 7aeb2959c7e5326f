"""HALOC's search loop: alternating weight and architecture steps, then argmax ranks.

Per iteration (first-order DARTS, as in the paper):

1. **weight step** on one training batch: ``CE + μ·L_fm`` over the branch weights and the rest of the network
   (batch norms, stem, classifier); ``L_fm`` is the mean over the mixed layers of each branch's normalised
   distance to the frozen original layer's output (the feature-map-approaching regulariser; ``μ = 0`` is the
   ablation);
2. **architecture step** on the *next* batch (never the one the weights just saw): ``CE + latency term`` over the
   logits only (Adam); in ``gumbel`` mode with every branch in the backward pass (``MixedLowRank.st_all``), else
   the task loss cannot reach the logits through the batch norms. Without a target the term is
   ``λ·E[LAT]/LAT₀``; with a target it is the hinge ``λ·max(0, A − target)`` where ``A`` is the latency ratio of
   the **argmax** architecture (the one that will be extracted) carrying the gradient of ``E[LAT]/LAT₀``
   (straight-through), and ``λ`` follows dual ascent on ``A`` (``λ ← λ·exp(dual_lr·(A/target − 1))``).

Why the hinge is on the argmax and the logits start from the branches' fidelity (:func:`init_logits`): with
uniform logits the latency gradient ``p_k(T_k − E)`` is most negative at each layer's cheapest candidate, so one
Adam step puts every argmax at the cheapest candidate; with the hinge on ``E[LAT]`` the spread of the
probabilities keeps ``E`` above the target while the argmax sits at the floor, λ keeps growing and the task loss
never gets the logits back (issue 18: ResNet-20 on asic-tpu32 ended at 0.598× for targets 0.6 and 0.7).

:func:`arch_steps` runs architecture steps alone (frozen weights, a fixed batch): the λ-monotonicity test uses it.
:func:`step_down_to_budget` is the repair when the argmax ranks end above the target (recorded by the caller).

Example:
    >>> ladder_down([("dense",), ("rank", 8), ("rank", 16)], ("rank", 16), {("dense",): 9.0, ("rank", 8): 2.0,
    ...              ("rank", 16): 5.0})
    ('rank', 8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwloop.errors import SearchError
from hwloop.methods.haloc.costs import ExpectedLatency
from hwloop.methods.haloc.joint import JointExpectedLatency, WidthGate, init_width_logits, width_gates
from hwloop.methods.haloc.mixed import Level, MixedLowRank, mixed_layers
from hwloop.search.train import cosine_lr, make_optimizer

__all__ = ["SearchLog", "alternate", "arch_steps", "init_logits", "ladder_down", "set_mode", "step_down_to_budget"]

_LAM_MIN, _LAM_MAX = 1e-4, 1e4

#: the expected latency over rank logits alone, or over rank and width logits (joint pruning)
Expected = ExpectedLatency | JointExpectedLatency


@dataclass
class SearchLog:
    """What the search did: per-epoch history, images per phase, the final λ and expected ratio."""

    history: list[dict[str, float]] = field(default_factory=list)
    weight_images: int = 0
    arch_images: int = 0
    steps: int = 0
    lam: float = 0.0
    expected_ratio: float = math.nan
    seconds: float = 0.0


def set_mode(model: nn.Module, mode: str | None = None, tau: float | None = None, collect_fm: bool | None = None,
             st_all: bool | None = None, st_paths: int | None = None) -> None:
    for m in mixed_layers(model).values():
        if mode is not None:
            m.mode = mode
        if tau is not None:
            m.tau = tau
        if collect_fm is not None:
            m.collect_fm = collect_fm
        if st_all is not None:
            m.st_all = st_all
        if st_paths is not None:
            m.st_paths = st_paths
    for g in width_gates(model).values():   # joint pruning (widths): the gates follow the layers' mode
        if mode is not None:
            g.mode = mode
        if tau is not None:
            g.tau = tau
        if st_all is not None:
            g.st_all = st_all


def _params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    arch = [m.alpha for m in mixed_layers(model).values()] + [g.alpha for g in width_gates(model).values()]
    ids = {id(p) for p in arch}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return weights, arch


def _latency_term(exp: Expected, lam: float, target: float | None, band: float = 0.0
                  ) -> tuple[torch.Tensor, float, float]:
    """``(term, E[LAT]/LAT₀, argmax ratio)``. With a target the hinge is on the ratio of the architecture that
    will be extracted (the argmax), with the gradient of ``E[LAT]`` (straight-through): the term pushes while the
    argmax is above the target and is exactly zero (no gradient) once it is at or below it. With ``band > 0`` it
    also pushes *up* while the argmax is below ``target·(1 − band)`` (two-sided: a search that fell far under its
    target is brought back to spend the latency it may spend)."""
    ratio = exp() / exp.original
    if target is None:
        return lam * ratio, float(ratio.detach()), math.nan
    with torch.no_grad():
        hard = exp.choice_cost(exp.argmax_choice()) / exp.original
    st = hard + (ratio - ratio.detach())
    floor = target * (1.0 - band)
    if band > 0 and hard < floor:
        return lam * torch.relu(floor - st), float(ratio.detach()), float(hard)
    term = lam * torch.relu(st - target)
    return term, float(ratio.detach()), float(hard)


def dual_error(hard: float, target: float, band: float = 0.0) -> float:
    """The dual-ascent error of λ: ``hard/target − 1`` (λ grows above the target, decays under it); with
    ``band > 0``, below ``target·(1 − band)`` the error is the relative shortfall, so λ grows there too."""
    floor = target * (1.0 - band)
    if band > 0 and hard < floor:
        return (floor - hard) / target
    return hard / target - 1.0


WIDTH_INITS = ("linear", "sensitivity")


@torch.no_grad()
def init_logits(model: nn.Module, x: torch.Tensor, scale: float, width_init: str = "linear"
                ) -> dict[str, list[float]]:
    """Start each mixed layer's logits at ``−scale·e_k/max(e)`` with ``e_k`` branch k's feature-map error
    ``‖f_k(x) − W·x‖²/‖W·x‖²`` on the batch ``x`` (the inputs the original network gives each layer): the
    most faithful candidate (dense, the largest rank) starts on top and the latency term walks the argmax down
    the ladder one candidate at a time. Uniform logits instead put every layer's argmax at its cheapest
    candidate after the first architecture step (the latency gradient ``p_k(T_k − E)`` is most negative there).

    Width gates (joint pruning): ``linear`` puts the full width on top with logits linear in the width
    (:func:`~hwloop.methods.haloc.joint.init_width_logits`); ``sensitivity`` starts gate g's width k at
    ``−scale·s_{g,k}/max(s)``, ``s_{g,k}`` = the relative output error ``‖y_{g,k} − y‖²/‖y‖²`` of the original
    network with group g alone at width k (eval mode), the maximum taken over **all** gates: a group whose
    narrowing barely changes the output starts with nearly equal logits (the latency term narrows it first),
    a sensitive one with the full width far on top."""
    if width_init not in WIDTH_INITS:
        raise SearchError(f"width_init={width_init!r} is unknown; allowed: {', '.join(WIDTH_INITS)}")
    layers = mixed_layers(model)
    gates = width_gates(model)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0])) for n, m in layers.items()]
    was = model.training
    try:   # run the original network: each layer's input is what the trained model gives it
        model.eval()
        for m in layers.values():
            m.forward = m.original.forward  # type: ignore[method-assign]
        for g in gates.values():
            g.bypass = True
        y_ref = model(x)
        for h in hooks:   # the layers' inputs are the original network's (before any gate narrows a group)
            h.remove()
        hooks = []
        sens: dict[str, torch.Tensor] = {}
        if width_init == "sensitivity":
            denom = y_ref.pow(2).mean().clamp_min(1e-12)
            for k, g in gates.items():
                g.bypass = False
                errs = []
                for i in range(len(g.levels)):
                    g.fixed = F.one_hot(torch.tensor(i), len(g.levels)).float()
                    errs.append((model(x) - y_ref).pow(2).mean() / denom)
                g.fixed = None
                g.bypass = True
                sens[k] = torch.stack(errs)
    finally:
        for m in layers.values():
            del m.forward
        for g in gates.values():
            g.bypass = False
            g.fixed = None
        for h in hooks:
            h.remove()
        model.train(was)
    out: dict[str, list[float]] = {}
    for n, m in layers.items():
        ref = m.original(inputs[n])
        denom = ref.pow(2).mean().clamp_min(1e-12)
        err = torch.stack([(b(inputs[n]) - ref).pow(2).mean() / denom for b in m.branches])
        a = -scale * err / err.max().clamp_min(1e-12)
        m.alpha.copy_(a)
        out[n] = a.tolist()
    if sens:
        top = max(float(e.max()) for e in sens.values())
        for k, g in gates.items():
            g.alpha.copy_(-scale * sens[k] / max(top, 1e-12))
    else:
        init_width_logits(gates, scale)   # joint pruning: full width on top, as the dense / largest-rank branch
    for k, g in gates.items():
        out[f"width:{k}"] = g.alpha.tolist()
    return out


def arch_steps(model: nn.Module, exp: Expected, batch: tuple[torch.Tensor, torch.Tensor], *, lam: float,
               steps: int, lr: float = 3e-3, target: float | None = None) -> float:
    """``steps`` architecture steps on one fixed batch with the weights frozen (fixed ``λ``); returns the
    final expected latency ratio ``E[LAT]/LAT₀``."""
    _, arch = _params(model)
    opt = torch.optim.Adam(arch, lr=lr, betas=(0.5, 0.999))
    x, y = batch
    model.train()
    set_mode(model, collect_fm=False)
    for _ in range(steps):
        term, _, _ = _latency_term(exp, lam, target)
        loss = F.cross_entropy(model(x), y) + term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(exp() / exp.original)


def _batches(loader: Any, max_steps: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, b in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            return
        yield b


def alternate(model: nn.Module, exp: Expected, loader: Any, *, epochs: int, lr: float, arch_lr: float,
              momentum: float, weight_decay: float, lam: float, dual_lr: float, mu: float, target: float | None,
              tau: float = 1.0, tau_end: float = 1.0, max_steps: int | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None, trace: list[dict[str, float]] | None = None,
              init_scale: float = 0.0, arch_paths: int = 0, band: float = 0.0,
              width_lr: float | None = None, width_init: str = "linear") -> SearchLog:
    """The alternating search (see the module docstring) over ``epochs`` passes of ``loader``: even batches are
    weight steps, odd batches architecture steps. ``τ`` goes geometrically from ``tau`` to ``tau_end``.
    ``arch_paths`` (gumbel): branches run in an architecture step (0: all; see ``MixedLowRank.st_paths``).
    ``band`` (> 0): the latency term is two-sided, see :func:`_latency_term` and :func:`dual_error`.
    ``width_lr``: Adam learning rate of the width logits (joint pruning; None: ``arch_lr``).
    ``width_init``: how :func:`init_logits` starts the width logits (``linear`` or ``sensitivity``).
    ``init_scale > 0`` starts the logits with :func:`init_logits` on the first batch (0: uniform). ``trace`` (a
    list) receives one row per architecture step: ``E[LAT]/LAT₀``, the argmax ratio, ``λ`` and the norms of the
    logits' gradient from the task loss and from the latency term."""
    from tqdm.auto import tqdm

    if init_scale > 0:
        init_logits(model, next(iter(loader))[0], init_scale, width_init)
    set_mode(model, st_paths=arch_paths)
    weights, arch = _params(model)
    opt_w = make_optimizer(weights, lr, momentum, weight_decay)
    gate_ids = {id(g.alpha) for g in width_gates(model).values()}
    groups: list[dict[str, Any]] = [{"params": [a for a in arch if id(a) not in gate_ids]}]
    if gate_ids:   # joint pruning: the width logits may move at their own rate
        groups.append({"params": [a for a in arch if id(a) in gate_ids],
                       "lr": arch_lr if width_lr is None else width_lr})
    opt_a = torch.optim.Adam(groups, lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    per_epoch = min(len(loader), max_steps) if max_steps else len(loader)
    total = max(1, epochs * per_epoch)
    out = SearchLog(lam=lam)
    t0 = time.perf_counter()
    layers = list(mixed_layers(model).values())
    step = 0
    model.train()
    for ep in range(epochs):
        ce_w = fm_w = ce_a = 0.0
        n_w = n_a = 0
        ratio = math.nan
        for i, (x, y) in enumerate(tqdm(_batches(loader, max_steps), total=per_epoch, disable=not progress,
                                        desc=f"haloc search {ep + 1}/{epochs}", leave=False)):
            frac = step / total
            set_mode(model, tau=tau * (tau_end / tau) ** frac)
            if i % 2 == 0:   # weight step
                set_mode(model, collect_fm=mu > 0, st_all=False)
                for g in opt_w.param_groups:
                    g["lr"] = cosine_lr(lr, step, total)
                logits = model(x)
                ce = F.cross_entropy(logits, y)
                loss = ce
                if mu > 0:
                    fm = torch.stack([m.fm_loss for m in layers if m.fm_loss is not None]).mean()
                    loss = ce + mu * fm
                    fm_w += float(fm.detach())
                opt_w.zero_grad(set_to_none=True)
                loss.backward()
                opt_w.step()
                ce_w += float(ce.detach())
                n_w += 1
                out.weight_images += int(y.shape[0])
            else:            # architecture step on a batch the weights did not just see
                set_mode(model, collect_fm=False, st_all=True)
                term, ratio, hard = _latency_term(exp, out.lam, target, band)
                ce = F.cross_entropy(model(x), y)
                opt_a.zero_grad(set_to_none=True)
                if trace is not None:   # the latency term's own gradient on the logits (cheap: no network)
                    g_lat = torch.autograd.grad(term, arch, retain_graph=True, allow_unused=True)
                (ce + term).backward()
                if trace is not None:
                    gl = torch.cat([(g if g is not None else torch.zeros_like(a)).flatten()
                                    for g, a in zip(g_lat, arch)])
                    gt = torch.cat([(a.grad if a.grad is not None else torch.zeros_like(a)).flatten() for a in arch])
                    arg_t = exp.choice_cost(exp.argmax_choice()) / exp.original
                    trace.append({"step": float(step), "expected_ratio": ratio, "argmax_ratio": arg_t,
                                  "lam": out.lam, "grad_ce": float((gt - gl).norm()), "grad_lat": float(gl.norm()),
                                  "cos_ce_lat": float(F.cosine_similarity(gt - gl, gl, dim=0, eps=1e-12))})
                opt_a.step()
                if target is not None and dual_lr > 0:
                    err = dual_error(hard, target, band)   # the extracted architecture's ratio
                    out.lam = min(_LAM_MAX, max(_LAM_MIN, out.lam * math.exp(max(-5.0, min(5.0, dual_lr * err)))))
                ce_a += float(ce.detach())
                n_a += 1
                out.arch_images += int(y.shape[0])
            step += 1
        with torch.no_grad():
            out.expected_ratio = float(exp() / exp.original)
            arg = exp.choice_cost(exp.argmax_choice()) / exp.original
        row = {"epoch": float(ep + 1), "ce_weights": ce_w / max(1, n_w), "fm": fm_w / max(1, n_w),
               "ce_arch": ce_a / max(1, n_a), "lam": out.lam, "expected_ratio": out.expected_ratio,
               "argmax_ratio": arg}
        out.history.append(row)
        if log is not None:
            log(f"haloc epoch {ep + 1}/{epochs}: ce {row['ce_weights']:.3f} fm {row['fm']:.4f} lam {out.lam:.3g} "
                f"E[LAT] {out.expected_ratio:.3f}x argmax {arg:.3f}x")
    out.steps = step
    out.seconds = time.perf_counter() - t0
    set_mode(model, collect_fm=False, st_all=False)
    return out


def ladder_down(levels: Sequence[Level], current: Level, cost: Mapping[Level, float]) -> Level | None:
    """The next cheaper candidate than ``current`` among ``levels`` (the most expensive of the cheaper ones)."""
    here = cost[current]
    cheaper = [lv for lv in levels if cost[lv] < here]
    return max(cheaper, key=lambda lv: cost[lv]) if cheaper else None


def step_down_to_budget(layers: Mapping[str, MixedLowRank | WidthGate], exp: Expected, choice: Mapping[str, Level],
                        budget: float, max_iters: int = 10_000) -> dict[str, Level]:
    """Move layers to cheaper candidates until ``exp.choice_cost(choice) <= budget`` (a repair): each step takes
    the move with the largest cost saving per unit of logit given up (``α_current − α_next``). A unit's next
    candidate is the most expensive one cheaper than its current one *at the current choice* (with width gates the
    order of a layer's ranks depends on its widths); a move that saves nothing is never taken."""
    ch = dict(choice)
    cur = exp.choice_cost(ch)
    joint = isinstance(exp, JointExpectedLatency)
    for _ in range(max_iters):
        if cur <= budget:
            break
        best: tuple[float, str, Level, float] | None = None
        for n, m in layers.items():
            if joint:   # costs in context: the other units as they are now
                cost = {lv: exp.choice_cost({**ch, n: lv}) for lv in m.levels}
            else:       # a rank-only table is separable: each layer's own costs order its candidates
                cost = {lv: float(c) for lv, c in zip(m.levels, exp.costs[n].tolist())}
            nxt = ladder_down(m.levels, ch[n], cost)
            if nxt is None:
                continue
            a = m.alpha.detach()
            lost = float(a[m.levels.index(ch[n])] - a[m.levels.index(nxt)])
            new = cost[nxt] if joint else exp.choice_cost({**ch, n: nxt})
            if new >= cur:
                continue
            score = (cur - new) / (max(lost, 0.0) + 1e-3)
            if best is None or score > best[0]:
                best = (score, n, nxt, new)
        if best is None:
            break
        ch[best[1]], cur = best[2], best[3]
    return ch
