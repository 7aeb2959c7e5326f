"""``sbs``: Single-path Bit Sharing (Liu et al., TPAMI 2023) behind the method contract.

One run: attach the super-bit weights, activation bit gates and filter-wise 0-bit gates (:class:`SbsModel`), train
weights and thresholds jointly with the task loss plus ``λ · max(0, cost/cost₀ − target)`` (the cost of the hard
configuration in the forward pass, straight-through gradients; the target annealed from 1 over ``target_warmup``
of the steps, λ raised by dual ascent while above it: :class:`hwloop.methods.budget.BudgetTerm`; the thresholds
start ``thr_init`` below the scores they gate and move by Adam without momentum), read the configuration off the
gates (``search_end``: the method's own end), repair it onto the budget if asked (recorded), extract (pruned filters removed with
``ChannelPrune`` on the coupled groups, per-layer ``Quantize(w_bits, a_bits)``), recalibrate batch-norm and run a
QAT fine-tune of the fixed configuration at the plan's scheme (symmetric per-channel weights, symmetric per-tensor
activations with observed ranges).

The cost (``cost``): ``latency`` from the shared layer cost table on a bit-aware device (the context's device, e.g.
``asic-tpu32``, ``asic-eyeriss``), ``bops`` device-free; ``auto`` takes latency when the device is bit-aware, else
BOPs, and the candidate says which (``extra["cost_source"]``). ``target`` is a fraction of that cost at full width
with every searched layer at its top bits (uniform W8A8 with the default levels), not of float32.

Example:
    >>> SbsConfig.from_dict({"w_levels": [2, 4, 8], "first_last": "float"}).w_levels
    (2, 4, 8)
    >>> SbsConfig.from_dict({"first_last": "int4"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [method]: first_last='int4' is unknown; allowed: w8a8, search, float
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hwloop.compress.actions import ChannelPrune, Quantize
from hwloop.compress.actquant import quantized_activations
from hwloop.compress.extract import analyze, apply_bits_, get_module, output_layers, prune_groups_
from hwloop.compress.gated import quantized_weights
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import CompressionError, SearchError
from hwloop.methods.base import Candidate, CompressionMethod, MethodConfig, MethodContext, MethodResult, Repair
from hwloop.methods.budget import PENALTIES, BudgetTerm
from hwloop.methods.sbs.actq import A_RANGES, A_SIGNED, mse_quant, mse_weights, sbs_activations
from hwloop.methods.sbs.cost import BopsCost, CostState, TableCost, is_bit_aware, sbs_layers
from hwloop.methods.sbs.gated import SbsModel
from hwloop.methods.sbs.quant import W_GRIDS, check_levels
from hwloop.methods.sbs.step import GATE_STEPS, ThresholdStep
from hwloop.methods.sbs.uniform import check_uniform, fit_fraction, uniform_config
from hwloop.search.accounting import ComputeRecord
from hwloop.search.train import cosine_lr, make_optimizer, train_epochs

__all__ = ["FIRST_LAST", "SbsConfig", "SbsMethod"]

FIRST_LAST = ("w8a8", "search", "float")
COSTS = ("auto", "latency", "bops")
_LAM_MIN, _LAM_MAX = 1e-3, 1e3


@dataclass(frozen=True)
class SbsConfig(MethodConfig):
    """The ``sbs`` method's keys.

    Attributes:
        search_epochs / finetune_epochs / max_steps: the schedule (``max_steps`` caps the steps per epoch).
        lr / momentum / weight_decay: SGD on the weights (search and fine-tune, cosine decay).
        gate_lr: Adam on the thresholds.
        thr_init: every threshold starts this margin below the score it gates (:meth:`SbsModel.init_thresholds_`:
            filter gates below the lowest score the floor does not force, bit gates at ``1 − thr_init``), so the
            cost moves the configuration from the first steps; ``None``: thresholds start at 0, about 1 below the
            bit scores, and a short search never leaves the full model (the behaviour before this key).
        gate_momentum: Adam's β₁ on the thresholds. 0 (default): a threshold stops when the cost pull stops (the
            hinge is 0 once within the target in force); with 0.9 the momentum carries the gates on for ~10 steps
            past the target (on digits at 0.7: 0.52 with 0.9, 0.68 with 0).
        gate_step: how the thresholds move (:mod:`hwloop.methods.sbs.step`): ``adam`` (default) Adam per
            threshold, each by about ``gate_lr`` per step whatever its gradient; ``cost`` that step scaled by the
            threshold's share of the latency (``|∂cost/∂θ|``, normalised to keep the cost pace); ``shared`` one
            second moment for all thresholds (each moves in proportion to its gradient).
        a_score_momentum: the activation gates read a moving average of their score with this weight per batch
            (1, default: each batch's own score, so batch noise alone can switch a gate off; 0.1: smoothed).
        penalty: the budget term (:class:`hwloop.methods.budget.BudgetTerm`): ``hinge`` ``λ·max(0, r − t)``,
            ``two-sided`` ``λ·|r − t|`` (also pulls back up to the target), ``linear`` ``λ·r``.
        lam / dual_lr: initial λ and its dual-ascent rate (0: fixed λ; without a target λ is fixed).
        target_warmup: fraction of the search steps over which the target falls from 1 to the budget.
        w_levels / a_levels: nested weight bit-widths (each twice the previous) and activation bit-widths.
        first_last: the first conv and the classifier: ``w8a8`` (fixed), ``search`` (gated) or ``float``.
        prune: filter-wise 0-bit gates on the channel groups (False: mixed precision only).
        min_keep: the channel floor of every coupled group, a fraction in (0, 1] of its channels (rounded up): the
            filter gates and the repair never leave a group with fewer (1.0: no pruning).
        cost: ``auto``, ``latency`` (needs a bit-aware device) or ``bops``.
        table_source: the cost table's source (``auto``, ``measure``, ``predictor``).
        table_store: a measurement store URL caching the table's measurements (None: in memory only).
        grid_points: channel grid points per axis of the latency table.
        clip: weight clip as a fraction of each channel's largest magnitude.
        recalibrate_batches: batch-norm re-estimation batches after extraction (also the activation-range
            calibration batches of ``a_range = "mse"``).
        finetune_lr: the fine-tune's learning rate (None: ``lr``).
        finetune_steps: the fine-tune's cap on steps per epoch (None: ``max_steps``).
        a_signed: activation codes (:mod:`hwloop.methods.sbs.actq`): ``auto`` (default: unsigned ``0 … 2^b − 1``
            codes for inputs never negative, e.g. after a ReLU) or ``symmetric`` (signed codes for every input, the
            plain quantizer of the runs before), in the search and the fine-tune.
        a_range: the fine-tune's activation ranges: ``mse`` (default: the least-error clip on the calibration
            batches, then frozen) or ``max`` (the moving average of each batch's largest magnitude, as before).
        w_range: the exported weights' grid (symmetric per channel, the plan's scheme): ``max`` (default: the step
            from each channel's largest magnitude) or ``mse`` (the least-error clip per channel; 2-bit ternary
            weights keep far more non-zeros), at extraction and in the fine-tune.
        w_grid: the search's weight grids: ``superbit`` (default: the paper's nested super-bit codes; its 2-bit level
            has 4 values per channel, where the exported plan has 3) or ``plan`` (every level on the grid extraction
            exports, ``w_range``'s step: the search prices 2 bits as the ternary weights it will get;
            :func:`~hwloop.methods.sbs.quant.plan_grid_weight`).
        repair: enforce the budget after the search when the method ended above it (recorded as a repair).
        uniform: ``[w_bits, a_bits]``: no search, a control through the same extraction and QAT fine-tune: every
            searched layer at these bits, every channel group cut by one fraction to the target
            (:mod:`hwloop.methods.sbs.uniform`; ``[4, 4]`` uniform W4A4, ``[8, 8]`` prune-then-quantize); None
            (default): the search.
    """

    search_epochs: int = 3
    finetune_epochs: int = 2
    max_steps: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gate_lr: float = 0.01
    thr_init: float | None = 0.05
    gate_momentum: float = 0.0
    gate_step: str = "adam"
    a_score_momentum: float = 1.0
    penalty: str = "hinge"
    lam: float = 2.0
    dual_lr: float = 0.02
    target_warmup: float = 0.3
    w_levels: tuple[int, ...] | list[int] = (2, 4, 8)
    a_levels: tuple[int, ...] | list[int] = (4, 8)
    first_last: str = "w8a8"
    prune: bool = True
    min_keep: float = 0.25
    cost: str = "auto"
    table_source: str = "auto"
    table_store: str | None = None
    grid_points: int = 5
    clip: float = 1.0
    recalibrate_batches: int = 4
    repair: bool = True
    finetune_lr: float | None = None
    finetune_steps: int | None = None
    a_signed: str = "auto"
    a_range: str = "mse"
    w_range: str = "max"
    w_grid: str = "superbit"
    uniform: tuple[int, int] | list[int] | None = None

    def __post_init__(self) -> None:
        for n in ("search_epochs", "finetune_epochs", "recalibrate_batches"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SearchError(f"{n}={v!r} must be an integer >= 0")
        for n in ("max_steps", "finetune_steps"):
            v = getattr(self, n)
            if v is not None and (isinstance(v, bool) or v < 1):
                raise SearchError(f"{n}={v!r} must be an integer >= 1 or none")
        for n in ("lr", "gate_lr", "finetune_lr"):
            v = getattr(self, n)
            if n == "finetune_lr" and v is None:
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SearchError(f"{n}={v!r} must be a positive number" + (" or none" if n == "finetune_lr" else ""))
        for n in ("momentum", "weight_decay", "lam", "dual_lr"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SearchError(f"{n}={v!r} must be a finite number >= 0")
        ti = self.thr_init
        if ti is not None and (isinstance(ti, bool) or not isinstance(ti, (int, float)) or not 0.0 <= ti < 1.0):
            raise SearchError(f"thr_init={ti!r} must be a margin in [0, 1) below the gated scores, or none "
                              "(thresholds start at 0)")
        if not (isinstance(self.gate_momentum, (int, float)) and 0.0 <= self.gate_momentum < 1.0):
            raise SearchError(f"gate_momentum={self.gate_momentum!r} must be in [0, 1) (Adam's beta1 on the thresholds)")
        if self.gate_step not in GATE_STEPS:
            raise SearchError(f"gate_step={self.gate_step!r} is unknown; allowed: {', '.join(GATE_STEPS)}")
        am = self.a_score_momentum
        if isinstance(am, bool) or not isinstance(am, (int, float)) or not 0.0 < am <= 1.0:
            raise SearchError(f"a_score_momentum={am!r} must be in (0, 1] (1: each batch's own activation score)")
        if self.penalty not in PENALTIES:
            raise SearchError(f"penalty={self.penalty!r} is unknown; allowed: {', '.join(PENALTIES)}")
        if not 0.0 <= self.target_warmup <= 1.0:
            raise SearchError(f"target_warmup={self.target_warmup!r} must be a fraction in [0, 1]")
        if (isinstance(self.min_keep, bool) or not isinstance(self.min_keep, (int, float))
                or not 0.0 < self.min_keep <= 1.0):
            raise SearchError(f"min_keep={self.min_keep!r} must be a fraction of each group's channels in (0, 1]")
        if not 0.0 < self.clip <= 1.0:
            raise SearchError(f"clip={self.clip!r} must be in (0, 1]")
        if isinstance(self.grid_points, bool) or not 2 <= self.grid_points <= 65:
            raise SearchError(f"grid_points={self.grid_points!r} must be an integer in [2, 65]")
        for n in ("w_levels", "a_levels"):
            try:
                lv = check_levels(list(getattr(self, n)), n)
            except (CompressionError, TypeError) as e:
                raise SearchError(str(e) if isinstance(e, CompressionError) else
                                  f"{n}={getattr(self, n)!r} must be a list of bit-widths") from e
            object.__setattr__(self, n, lv)
        if self.a_levels[0] < 2:
            raise SearchError(f"a_levels={list(self.a_levels)} must start at 2 bits or more (activations have no "
                              "0/1-bit level)")
        for n, allowed in (("first_last", FIRST_LAST), ("cost", COSTS), ("table_source", ("auto", "measure",
                                                                                           "predictor")),
                           ("a_signed", A_SIGNED), ("a_range", A_RANGES), ("w_range", A_RANGES),
                           ("w_grid", W_GRIDS)):
            if getattr(self, n) not in allowed:
                raise SearchError(f"{n}={getattr(self, n)!r} is unknown; allowed: {', '.join(allowed)}")
        if not isinstance(self.prune, bool) or not isinstance(self.repair, bool):
            raise SearchError("prune and repair must be true or false")
        object.__setattr__(self, "uniform", check_uniform(self.uniform, self.w_levels, self.a_levels))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["w_levels"], d["a_levels"] = list(self.w_levels), list(self.a_levels)
        d["uniform"] = list(self.uniform) if self.uniform is not None else None
        return d


def _policy(cfg: SbsConfig, layers: list[Any], outs: list[str]) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    edge = {layers[0].name, *outs} if layers else set()
    pol = {"w8a8": "fixed", "search": "search", "float": "float"}[cfg.first_last]
    policy = {n.name: (pol if n.name in edge else "search") for n in layers}
    fixed = {n: (8, 8) for n, p in policy.items() if p == "fixed"}
    return policy, fixed


def _onehot(levels: tuple[int, ...], bits: int) -> torch.Tensor:
    return torch.tensor([1.0 if b == bits else 0.0 for b in levels])


def state_of(sbs: SbsModel, config: dict[str, Any]) -> CostState:
    """The cost state of a hard configuration (masks, w, a)."""
    channels = {k: torch.tensor(float(m.sum())) for k, m in config["masks"].items()}
    w_oh: dict[str, torch.Tensor | None] = {}
    a_oh: dict[str, torch.Tensor | None] = {}
    fixed: dict[str, tuple[int | None, int | None]] = {}
    for n in sbs.layers:
        pol = sbs.policy[n.name]
        if pol == "search":
            w_oh[n.name] = _onehot(sbs.w_levels, config["w"][n.name])
            a_oh[n.name] = _onehot(sbs.a_levels, config["a"][n.name])
        else:
            w_oh[n.name] = a_oh[n.name] = None
            fixed[n.name] = sbs.fixed[n.name] if pol == "fixed" else (None, None)
    return CostState(channels, w_oh, a_oh, fixed)


def top_config(sbs: SbsModel) -> dict[str, Any]:
    """Every channel kept, every searched layer at its top bits."""
    masks = {g.key: torch.ones(g.channels, dtype=torch.bool) for g in sbs.groups}
    w = {n.name: sbs.w_levels[-1] for n in sbs.layers if sbs.policy[n.name] == "search"}
    a = {n.name: sbs.a_levels[-1] for n in sbs.layers if sbs.policy[n.name] == "search"}
    for n, (wb, ab) in sbs.fixed.items():
        w[n], a[n] = wb, ab
    return {"masks": masks, "w": w, "a": a}


def enforce(sbs: SbsModel, cost: Any, config: dict[str, Any], budget: float, max_iters: int = 10_000
            ) -> dict[str, Any]:
    """Greedy repair until within ``budget``: each step lowers one layer's weight or activation bits by a level, or
    drops ~5% of a group's kept channels (lowest filter scores first, at least :meth:`SbsModel.floor` stay), whichever saves
    the most cost per unit of damage (a bit step: the new grid step ``1/(2^b − 1)``; pruning: the removed share of
    the group's filter-score mass)."""
    cfg = {"masks": {k: m.clone() for k, m in config["masks"].items()}, "w": dict(config["w"]), "a": dict(config["a"])}
    scores = {g.key: sbs.filter_scores(g.key).detach() for g in sbs.groups}
    cur = float(cost(state_of(sbs, cfg)))
    for _ in range(max_iters):
        if cur <= budget:
            break
        moves: list[tuple[float, dict[str, Any]]] = []
        for n in sbs.layers:
            if sbs.policy[n.name] != "search":
                continue
            for kind, levels in (("w", sbs.w_levels), ("a", sbs.a_levels)):
                i = levels.index(cfg[kind][n.name])
                if i > 0:
                    moves.append((1.0 / (2 ** levels[i - 1] - 1), {**cfg, kind: {**cfg[kind], n.name: levels[i - 1]}}))
        for g in sbs.groups:
            m = cfg["masks"][g.key]
            kept = int(m.sum())
            new = max(sbs.floor(g.channels), kept - max(1, math.ceil(0.05 * kept)))
            if new < kept:
                s = scores[g.key].clone()
                s[~m] = -math.inf
                keep = torch.zeros_like(m)
                keep[torch.argsort(s, descending=True, stable=True)[:new]] = True
                total = float(scores[g.key].clamp_min(0).sum()) or 1.0
                moves.append((float(scores[g.key][m & ~keep].sum()) / total, {**cfg, "masks": {**cfg["masks"],
                                                                                             g.key: keep}}))
        if not moves:
            break
        vals = [float(cost(state_of(sbs, c))) for _, c in moves]
        gain = [(cur - v) / (d + 1e-6) for v, (d, _) in zip(vals, moves)]
        i = max(range(len(moves)), key=gain.__getitem__)
        if vals[i] >= cur:
            break
        cfg, cur = moves[i][1], vals[i]
    return cfg


def bit_map(sbs: SbsModel, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per conv/linear layer: chosen weight / activation bits (None: float) and kept output channels."""
    out: dict[str, dict[str, Any]] = {}
    for n in sbs.layers:
        m = config["masks"].get(n.out_key) if n.out_key else None
        out[n.name] = {"w_bits": config["w"].get(n.name), "a_bits": config["a"].get(n.name),
                       "policy": sbs.policy[n.name], "out_channels": int(m.sum()) if m is not None
                       else int(n.spec.out_channels), "of": int(n.spec.out_channels)}
    return out


class SbsMethod(CompressionMethod):
    """Single-path bit sharing (see the module docstring)."""

    name: ClassVar[str] = "sbs"
    summary: ClassVar[str] = ("single-path bit sharing: super-bit weights with learned-threshold bit gates, "
                              "filter-wise 0-bit gates and activation bit gates; joint pruning + mixed precision "
                              "(Liu et al., TPAMI 2023)")
    config_class: ClassVar[type[MethodConfig]] = SbsConfig
    smoke_config: ClassVar[dict[str, Any]] = {"search_epochs": 1, "finetune_epochs": 1, "max_steps": 4,
                                              "recalibrate_batches": 2, "grid_points": 3}

    def run(self, context: MethodContext) -> MethodResult:
        cfg = self.config
        assert isinstance(cfg, SbsConfig)
        assert context.ledger is not None
        n0 = len(context.ledger)
        torch.manual_seed(context.seed)
        p = self.prepare(context)
        if cfg.uniform is not None:
            return self._uniform(context, p, n0)
        history, t_search = self._search(p["sbs"], p["cost"], p["c0"], context, cfg)
        p["sbs"].eval()
        x0 = next(iter(context.train))[0]
        with torch.no_grad():
            p["sbs"](x0)
        return self.finish(context, p, p["sbs"].hard_config(), history=history, t_search=t_search, n0=n0)

    def _uniform(self, context: MethodContext, p: dict[str, Any], n0: int) -> MethodResult:
        """``uniform = [w, a]``: the uniform configuration within the target (no search), then :meth:`finish`."""
        cfg = self.config
        assert isinstance(cfg, SbsConfig) and cfg.uniform is not None
        sbs, cost, c0 = p["sbs"], p["cost"], p["c0"]
        bits = (int(cfg.uniform[0]), int(cfg.uniform[1]))
        scores = {g.key: sbs.filter_scores(g.key).detach() for g in sbs.groups}

        def config(f: float) -> dict[str, Any]:
            return uniform_config(p["top"], sbs.groups, sbs.policy, bits, f, scores, sbs.space.min_keep)

        budget = None if context.target is None else context.target * c0
        frac = fit_fraction(lambda f: float(cost.exact(state_of(sbs, config(f)))), budget)
        context.say(f"sbs uniform W{bits[0]}A{bits[1]}: channel fraction {frac:.4f} "
                    f"({float(cost.exact(state_of(sbs, config(frac)))) / c0:.4f} x cost0)")
        return self.finish(context, p, config(frac), n0=n0, repair=False,   # over the target: a miss, not mixed bits
                           setting=f"uniform W{bits[0]}A{bits[1]}, channel fraction {frac:.4f}")

    def prepare(self, context: MethodContext) -> dict[str, Any]:
        """The gated model, the cost (and BOPs), ``c0`` (the cost at full width, top bits), the top configuration
        and the cost note, as a dict (``sbs``, ``cost``, ``bops``, ``c0``, ``top``, ``note``)."""
        cfg = self.config
        assert isinstance(cfg, SbsConfig)
        space, example = context.space, context.example()
        layers = sbs_layers(space)
        policy, fixed = _policy(cfg, layers, output_layers(context.model, example))
        bit_aware = is_bit_aware(context.device)
        if cfg.cost == "latency" and not bit_aware:
            raise SearchError(f"[method] sbs: cost='latency' needs a bit-aware device (asic-tpu32, asic-eyeriss); "
                              f"the context's device is {context.device!r}")
        sbs = SbsModel(context.model, space, layers, policy, fixed, cfg.w_levels, cfg.a_levels, prune=cfg.prune,
                       clip=cfg.clip, min_keep=cfg.min_keep, a_score_momentum=cfg.a_score_momentum,
                       a_signed=cfg.a_signed, w_grid=cfg.w_grid, w_range=cfg.w_range)
        bops = BopsCost(space, layers, cfg.w_levels, cfg.a_levels)
        note = ""
        if cfg.cost == "latency" or (cfg.cost == "auto" and bit_aware):
            extra_pairs = list(dict.fromkeys([*fixed.values(), *([(None, None)] if "float" in policy.values()
                                                                 else [])]))
            cost: Any = TableCost(space, layers, cfg.w_levels, cfg.a_levels, context.device,
                                  grid_points=cfg.grid_points, fixed_bits=extra_pairs, source=cfg.table_source,
                                  store=cfg.table_store if cfg.table_store is not None else False,
                                  progress=context.progress)
        else:
            cost = bops
            note = ("cost in BOPs (cost = 'bops')" if cfg.cost == "bops" else
                    f"device {context.device!r} has no low-bit kernels in hwloop's cost model: cost in BOPs"
                    if context.device else "no device: cost in BOPs")
        top = top_config(sbs)
        c0 = cost.exact(state_of(sbs, top))
        if not c0 > 0:
            raise SearchError(f"the SBS cost of the starting model is {c0}; it must be positive")
        context.say(f"sbs: cost {cost.source} ({cost.unit}); cost0 = {c0:.4g} at full width, top bits"
                    + (f"; {note}" if note else ""))
        return {"sbs": sbs, "cost": cost, "bops": bops, "c0": c0, "top": top, "note": note}

    def finish(self, context: MethodContext, prepared: dict[str, Any], hard: dict[str, Any], *,
               history: list[dict[str, float]] | None = None, t_search: float = 0.0, n0: int | None = None,
               setting: str | None = None, repair: bool = True) -> MethodResult:
        """Repair (when asked and above the budget), extract, fine-tune and judge the configuration ``hard``
        (``SbsModel.hard_config`` format) of ``prepared`` (:meth:`prepare`); a fixed ``hard`` makes a control
        that goes through the same extraction and QAT fine-tune (``repair=False``: never repaired, so a uniform
        configuration over the target stays uniform and the judge reports the miss)."""
        cfg = self.config
        assert isinstance(cfg, SbsConfig)
        led = context.ledger
        assert led is not None
        n0 = len(led) if n0 is None else n0
        sbs, cost, bops, c0, top, note = (prepared[k] for k in ("sbs", "cost", "bops", "c0", "top", "note"))
        space, example = context.space, context.example()
        layers = sbs.layers
        history = list(history or [])
        t1 = time.perf_counter()
        with led.phase("extract", trial=context.trial):
            sbs.eval()
            search_end = cost.exact(state_of(sbs, hard))
            repairs: list[Repair] = []
            final = hard
            if context.target is not None and cfg.repair and repair and search_end > context.target * c0:
                budget, after = context.target * c0, search_end
                for _ in range(8):   # the greedy steps read the interpolated table; the exact cost decides
                    final = enforce(sbs, cost, final, budget)
                    after = cost.exact(state_of(sbs, final))
                    if after <= context.target * c0:
                        break
                    budget *= context.target * c0 / after
                repairs.append(Repair("enforce_budget", "extraction", search_end, after))
                context.say(f"sbs: the search ended at {search_end / c0:.3f} x cost0; the repair moved it to "
                            f"{after / c0:.3f} x (target {context.target:.3f})")
            predicted = cost.exact(state_of(sbs, final))
            b_final = float(bops(state_of(sbs, final)).detach())
            b0 = float(bops(state_of(sbs, top)).detach())
            bm = bit_map(sbs, final)
            amax = sbs.amax()
            net = sbs.release()
            masks = {k: m for k, m in final["masks"].items() if not bool(m.all())}
            if masks:
                prune_groups_(analyze(net, example, ignored=space.ignored), masks)
            actions: list[Any] = [ChannelPrune(k, int(m.sum())) for k, m in masks.items()]
            actions += [Quantize(n, int(final["w"][n]), int(final["a"][n])) for n in final["w"]]
            if cfg.w_range == "mse":
                with torch.no_grad():
                    for n, b in final["w"].items():
                        if int(b) < 32:
                            w: torch.Tensor = getattr(get_module(net, n), "weight")
                            w.copy_(mse_quant(w, int(b)))
            else:
                apply_bits_(net, {n: int(b) for n, b in final["w"].items()})
        t_extract = time.perf_counter() - t1
        acc_x, acc, amax_out, a_quant, t_ft = self._finetune(net, final, amax, context, cfg)
        meta = {"method": "sbs", "cost_source": cost.source, "cost_unit": cost.unit, "original": c0,
                "bops": b_final, "bops_original": b0, "a_amax": amax_out, "config": cfg.to_dict()}
        if a_quant:   # per layer: bits, range, signed (a_signed / a_range other than the plain quantizer)
            meta["a_quant"] = a_quant
        plan = CompressionPlan(base=context.ref.to_dict(), actions=actions, meta=meta)
        total = ComputeRecord("total")
        for r in led.records[n0:]:
            total = total + r
        mac = {n.name: float(n.spec.macs) for n in layers}
        q = [n for n in final["w"]]
        mean_w = sum(mac[n] * final["w"][n] for n in q) / max(1e-12, sum(mac[n] for n in q)) if q else None
        mean_a = sum(mac[n] * final["a"][n] for n in q) / max(1e-12, sum(mac[n] for n in q)) if q else None
        sizes = {f"bits:{n}": {"chosen": float(v["w_bits"] or 32), "original": float(cfg.w_levels[-1])}
                 for n, v in bm.items()}
        sizes.update({f"channel:{g.key}": {"chosen": float(final["masks"][g.key].sum()), "original": float(g.channels)}
                      for g in sbs.groups})
        cand = Candidate(
            setting=setting or (f"target={context.target}" if context.target is not None else f"lam={cfg.lam}"),
            model=net, plan=plan, original=c0, predicted=predicted, unit=cost.unit,
            predicted_ms=predicted if cost.unit == "ms" else None, accuracy=acc, accuracy_extracted=acc_x,
            target=context.target, search_end=search_end, repairs=repairs,
            cost=dataclasses.replace(total, phase="total", trial=context.trial), history=history,
            seconds={"search": t_search, "extract": t_extract, "finetune": t_ft}, sizes=sizes,
            extra={"cost_source": cost.source, "note": note, "bops": b_final, "bops_original": b0,
                   "bops_ratio": b_final / b0, "mean_w_bits": mean_w, "mean_a_bits": mean_a, "bit_map": bm,
                   "search_end_bops": float(bops(state_of(sbs, hard)).detach())})
        cand.judge(context.base_accuracy, context.max_repair_drop)
        context.say(f"sbs: budget {cand.status}: {cand.status_reason}")
        return MethodResult(method=self.name, config=cfg.to_dict(), candidates=[cand])

    def _search(self, sbs: SbsModel, cost: Any, c0: float, context: MethodContext, cfg: SbsConfig
                ) -> tuple[list[dict[str, float]], float]:
        from tqdm.auto import tqdm

        led = context.ledger
        assert led is not None
        opt_w = make_optimizer(sbs.weight_parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        if cfg.thr_init is not None:
            sbs.init_thresholds_(cfg.thr_init, next(iter(context.train))[0])
        opt_g = ThresholdStep(sbs.threshold_parameters(), cfg.gate_lr, cfg.gate_momentum, cfg.gate_step)
        loss_fn = nn.CrossEntropyLoss()
        steps = min(len(context.train), cfg.max_steps) if cfg.max_steps else len(context.train)
        total, step = cfg.search_epochs * steps, 0
        target = context.target
        term = BudgetTerm(target, total, lam=cfg.lam, dual_lr=cfg.dual_lr if target is not None else 0.0,
                          warmup=cfg.target_warmup, curve="linear", penalty=cfg.penalty, lam_min=_LAM_MIN,
                          lam_max=_LAM_MAX)
        history: list[dict[str, float]] = []
        t_search = 0.0
        sbs.train()
        for ep in range(cfg.search_epochs):
            sums = {"loss": 0.0, "task": 0.0, "ratio": 0.0}
            n, ratio = 0, 1.0
            t0 = time.perf_counter()
            with led.phase("search", trial=context.trial) as ph:
                for i, (x, y) in enumerate(tqdm(context.train, desc=f"sbs search {ep + 1}/{cfg.search_epochs}",
                                                disable=not context.progress, leave=False, total=steps)):
                    if i >= steps:
                        break
                    for grp in opt_w.param_groups:
                        grp["lr"] = cosine_lr(cfg.lr, step, total)
                    task = loss_fn(sbs(x), y)
                    ratio_t = cost(sbs.cost_state()) / c0
                    loss = task + term.term(ratio_t, step)
                    opt_w.zero_grad(set_to_none=True)
                    opt_g.zero_grad()
                    opt_g.observe_cost(ratio_t)
                    loss.backward()
                    opt_w.step()
                    opt_g.step()
                    sbs.project_()
                    ratio = float(ratio_t.detach())
                    term.update(ratio)
                    sums["loss"] += float(loss.detach())
                    sums["task"] += float(task.detach())
                    sums["ratio"] += ratio
                    ph.train_images += int(y.shape[0])
                    n += 1
                    step += 1
                ph.epochs += n / max(1, steps)
            t_search += time.perf_counter() - t0
            rec: dict[str, Any] = {"epoch": ep + 1, **{k: v / max(1, n) for k, v in sums.items()},
                                   "lambda": term.lam, "ratio_end": ratio}
            if target is not None:
                rec["target_end"] = term.target_t
            if cfg.gate_step == "cost":   # the last step's mean cost-share factor per kind of threshold
                kinds: dict[str, list[float]] = {}
                for (name, _), f in zip(sbs.named_thresholds(), opt_g.last_scale):
                    kinds.setdefault(name.split(":")[0], []).extend(f.flatten().tolist())
                rec["step_scale"] = {k: round(sum(v) / len(v), 4) for k, v in kinds.items() if v}
            # per step: the hard configuration's cost ratio (what the search would end at), target in force, λ
            rec["steps"] = [[s, round(r, 5), None if t is None else round(t, 5), round(lm, 5)]
                            for s, r, t, lm in term.trace[-n:]] if n else []
            history.append(rec)
            context.say("sbs search epoch {epoch}: loss {loss:.4f} task {task:.4f} cost ratio {ratio_end:.3f} "
                        "lambda {lambda:.3f}".format(**rec))
        return history, t_search

    def _finetune(self, net: nn.Module, final: dict[str, Any], amax: dict[str, float], context: MethodContext,
                  cfg: SbsConfig) -> tuple[float | None, float | None, dict[str, float], dict[str, Any], float]:
        from hwloop.search.differentiable import recalibrate_batchnorm

        led = context.ledger
        assert led is not None
        t2 = time.perf_counter()
        plain = cfg.a_signed == "symmetric" and cfg.a_range == "max"   # the plain quantizer (the default)
        with ExitStack() as stack:
            sq: quantized_activations = stack.enter_context(sbs_activations(   # hwloop's one activation quantizer
                net, {n: int(b) for n, b in final["a"].items() if b is not None and 2 <= b <= 16},
                signed=cfg.a_signed, mode=cfg.a_range, amax=amax))
            with led.phase("extract", trial=context.trial):
                if cfg.recalibrate_batches:
                    recalibrate_batchnorm(net, context.train, cfg.recalibrate_batches)
                if not plain:   # signs and ranges from the recalibrated network, then batch-norm again
                    sq.calibrate(context.train, max(1, cfg.recalibrate_batches), seed=context.seed)
                    if cfg.recalibrate_batches:
                        recalibrate_batchnorm(net, context.train, cfg.recalibrate_batches)
                net.eval()

            def evaluate() -> float | None:
                if context.eval_fn is None:
                    return None
                with led.phase("eval", trial=context.trial):
                    return float(context.eval_fn(net))

            acc_x = evaluate()
            with led.phase("finetune", trial=context.trial) as ph:
                if cfg.finetune_epochs:
                    wq = mse_weights if cfg.w_range == "mse" else quantized_weights
                    with wq(net, {n: int(b) for n, b in final["w"].items()}):
                        lr = cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr
                        r = train_epochs(net, context.train, cfg.finetune_epochs, lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, progress=context.progress,
                                         desc="sbs fine-tune", max_steps=cfg.finetune_steps or cfg.max_steps)
                    ph.train_images += int(r["images"])
                    ph.epochs += float(r["epochs"])
                net.eval()
            acc = evaluate()
            amax_out: dict[str, float] = sq.amax()
            a_quant = sq.export() if not plain else {}
        if acc is not None:
            context.say(f"sbs: accuracy extracted {acc_x:.2f}, fine-tuned {acc:.2f}")
        return acc_x, acc, amax_out, a_quant, time.perf_counter() - t2
