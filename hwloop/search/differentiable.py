"""Differentiable hardware-aware compression search: the latency model inside the loss.

``loss = task loss + λ · latency(sizes)/latency₀`` where ``sizes`` are the gates' effective
sizes (widths, ranks, bits). Give either a fixed ``lam`` or a ``target`` (latency as a
fraction of the original): then λ follows dual ascent on ``log λ``,
``λ ← λ·exp(η·(L/(L₀·target) − 1))`` once per step, so users state the budget, not λ. Two guards against
overshooting the target (λ growing while the latency lags, the gates collapsing far below the budget and never
coming back): ``target_warmup`` anneals the *effective* target from 1 down to ``target`` over the first part of
the search (gradual pruning, as in Zhu & Gupta 2017 / AMC), so the error dual ascent integrates stays small;
``latency_penalty = "hinge"`` uses ``λ·max(0, L/L₀ − target_t)`` (an exact penalty: no pull once the latency is
within the target in force, so a large λ cannot push it far below); and ``dual_kp`` adds a proportional term on
``log λ`` (PI control, as in Stooke et al. 2020's PID Lagrangian). Schedule: (optional pretraining) →
search → extract (widths read off the gates, rounded up to the device tile when that costs
no latency; factorised layers merged back when dense is not slower; batch-norm statistics
re-estimated on a few training batches, since removing channels and rounding bits shifts the
activations they were collected on) → fine-tune (with the chosen bits fake-quantized) → the
caller measures on the device.

Example:
    >>> from hwloop.search.train import make_task
    >>> from hwloop.search.space import SearchSpace
    >>> from hwloop.search.latency import SurrogateLatency
    >>> from hwloop.search.differentiable import SearchConfig, differentiable_search
    >>> task = make_task("digits", "small_cnn")
    >>> space = SearchSpace.from_ref(task.ref)
    >>> res = differentiable_search(space, SurrogateLatency(space), task.train, task.eval_fn,
    ...                             SearchConfig(search_epochs=2, finetune_epochs=1, target=0.5))
    >>> res.predicted / res.original <= 0.55
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from hwloop.compress.actquant import quantized_activations
from hwloop.compress.gated import GatedModel, extract, quantized_weights, rewind
from hwloop.compress.keys import SizeKey, rank_layer
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods.budget import (
    TARGET_CURVES,
    anneal_target,
    enforce_budget,
    fill_budget,
    hard_sizes,
    round_widths_to_tile,
)
from hwloop.search.accounting import ComputeLedger
from hwloop.search.gate_policy import (
    apply_width_floor,
    check_gate_policy,
    describe,
    floored_sizes,
    keep_by_magnitude_,
    magnitude_scores,
    make_gate_optimizer,
)
from hwloop.search.latency import LatencyModel
from hwloop.search.lowrank_cost import MergedLowRankLatency
from hwloop.search.space import SearchSpace
from hwloop.search.train import cosine_lr, make_optimizer, train_epochs

__all__ = ["FINETUNE_FROM", "LATENCY_PENALTIES", "TARGET_CURVES", "SearchConfig", "SearchResult",
           "differentiable_search", "effective_target", "enforce_budget", "fill_budget", "recalibrate_batchnorm",
           "round_widths_to_tile"]

LATENCY_PENALTIES = ("linear", "hinge")
FINETUNE_FROM = ("search", "start")
_LAM_MIN, _LAM_MAX = 1e-4, 1e4
_EXP_CAP = 50.0   # exp(50)·_LAM_MIN > _LAM_MAX: a larger step on log λ changes nothing but can overflow


def effective_target(target: float, step: int, total: int, warmup: float, curve: str = "cubic") -> float:
    """The latency target in force at optimiser ``step`` (0-based) of ``total`` search steps.

    Over the first ``warmup`` fraction of the steps it anneals from 1.0 (the original latency) down to
    ``target``; afterwards it is ``target``. With progress ``p = min(1, step / (warmup·total))``:

    * ``linear``: ``1 − (1 − target)·p``;
    * ``geometric``: ``target**p`` (equal relative cuts per step);
    * ``cubic``: ``target + (1 − target)·(1 − p)³`` (Zhu & Gupta's gradual pruning: fast at first, when
      the model has most redundancy, slow at the end, so the gates settle onto the target).

    ``warmup = 0`` (or ``total = 0``) gives ``target`` at every step.

    Example:
        >>> [round(effective_target(0.5, s, 10, 0.5, "linear"), 2) for s in (0, 1, 5, 9)]
        [1.0, 0.9, 0.5, 0.5]
        >>> round(effective_target(0.25, 2, 8, 0.5, "geometric"), 3), effective_target(0.5, 3, 10, 0.0)
        (0.5, 0.5)
    """
    return anneal_target(target, step, total, warmup, curve)   # one implementation (methods.budget)


@dataclass(frozen=True)
class SearchConfig:
    """Objective and schedule of a differentiable search.

    Attributes:
        search_epochs / finetune_epochs: schedule length (pretraining is the caller's, see the pipeline).
        lr: SGD learning rate of the weights (cosine decay per phase).
        gate_lr: learning rate of the gates (Adam, or SGD with ``gate_optimizer = "sgd"``).
        momentum / weight_decay: SGD settings (no weight decay on gates).
        lam: fixed λ (used when ``target`` is None) or the initial λ of dual ascent.
        target: latency budget as a fraction of the original (e.g. 0.5), or None.
        dual_lr: dual-ascent step size per optimiser step (the integral gain on ``log λ``).
        target_warmup: fraction of the search steps (in ``[0, 1]``) over which the effective target anneals from
            1.0 down to ``target`` (:func:`effective_target`); 0 (the default, the behaviour before this option)
            states the final target from the first step, which lets dual ascent overshoot it: λ grows while the
            latency lags, and the gates collapse below the budget. Needs a ``target``.
        target_curve: shape of that anneal: ``cubic`` (default; fast first, flat at the end), ``linear`` or
            ``geometric``.
        dual_kp: proportional gain on ``log λ`` (``>= 0``; 0: pure dual ascent): the λ used in the loss is
            ``λ_I · exp(dual_kp · e)`` with ``e = L/(L₀·target_t) − 1`` of the last step and ``λ_I`` the dual-ascent
            (integral) value, so λ drops at once when the latency crosses below the effective target.
        latency_penalty: with a ``target``, ``linear`` (default, the behaviour before this option): the loss is
            ``task + λ·L/L₀``, which keeps pulling the latency down below the target until λ has decayed; ``hinge``:
            ``task + λ·max(0, L/L₀ − target_t)``, an exact penalty — no pull once the latency is within the target
            in force, so a λ that grew while the latency lagged cannot drive the gates far below it. Under ``hinge``
            the value of ``L`` (and the error λ follows) is the latency of the *hard* sizes extraction will use, its
            gradient the soft sizes' (straight-through): gates left between 0 and 1 round up at extraction, so a
            soft latency on the target can be a hard one above it. Without a target (fixed λ) the loss is linear.
        prune_after_warmup: when the target warm-up ends, fix each channel group's width at its hard size —
            moved to the target by :func:`enforce_budget` (and :func:`fill_budget` when ``fill_budget``) — and
            hold the other channels' gates at zero for the rest of the search, so the remaining steps train the
            weights at the widths extraction will use (bit gates keep moving). Without it, gates left between 0
            and 1 still carry signal in the gated model and extraction drops it, and ``fill_budget`` grows widths
            whose weights never trained. Needs ``target_warmup > 0``.
        keep_rule: ``effective`` (top ``ceil(s(a))`` gates) or ``nonzero``.
        tile: round widths up to a multiple of this when that costs no predicted latency.
        merge_lowrank: merge a factorised layer back when dense is not slower; the search then costs every
            rank-gated layer the same way (:mod:`hwloop.search.lowrank_cost`).
        max_steps: cap on steps per epoch (None: the whole loader).
        seed: torch seed.
        recalibrate_batches: after extraction, re-estimate every batch-norm's running statistics on this many
            training batches (forward only, chosen bits applied): removing channels and rounding bits shifts
            the activations the statistics were collected on. 0 turns it off.
        fill_budget: with a ``target``, grow widths back at extraction while the hard sizes stay within it
            (:func:`fill_budget`; dual ascent can overshoot the target). Off by default: it only grows channels,
            so a budget already met by low bits gets every width back.
        quantize_activations: when the plan has ``a_bits`` (2..16) and quantized layers, fine-tune and score
            the extracted model with the inputs of those layers fake-quantized to ``a_bits``
            (:class:`~hwloop.compress.actquant.quantized_activations`: unsigned codes on inputs never negative,
            least-error ranges read on the recalibration batches and frozen; stored as ``plan.meta["a_quant"]``
            and ``["a_amax"]``).
        finetune_from: ``search`` (default, the behaviour before this option): the fine-tune starts from the weights
            the search trained while the gates moved (the latency penalty and the shrinking gates damage them);
            ``start``: from the starting model's weights of the channels the gates chose (:func:`~hwloop.compress.
            gated.rewind`; the search only picks the widths and channels). With ``prune_after_warmup`` the search
            then stops when the widths are fixed and the fine-tune gets the search steps left over, so the run
            trains on the same number of images.
        gate_init_spread: channel gates start spread over ``[1 − gate_init_spread, 1]`` by weight norm (the function
            unchanged; :class:`~hwloop.compress.gated.GatedModel`), so the latency term has a gradient from the first
            step; 0 starts them all at 1, where the gradient of ``s(a)`` is exactly zero (the behaviour before this
            option, which the digits fronts recorded before it were run with).
        min_width / keep_by / gate_optimizer: opt-in gate policies (:mod:`hwloop.search.gate_policy`; the defaults
            ``0``, ``gate``, ``adam`` are the behaviour before them): ``min_width`` in ``[0, 1)``: every channel group
            keeps at least that fraction of its channels, in the search too (its latency is ``max(s(a), floor)``);
            ``keep_by = "magnitude"``: the gates choose how many channels each group keeps, the starting weights'
            group L2 magnitude which; ``gate_optimizer = "sgd"``: plain SGD on the gates instead of Adam.
    """

    search_epochs: int = 3
    finetune_epochs: int = 2
    lr: float = 0.05
    gate_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lam: float = 1.0
    target: float | None = None
    dual_lr: float = 0.1
    target_warmup: float = 0.0
    target_curve: str = "cubic"
    dual_kp: float = 0.0
    latency_penalty: str = "linear"
    prune_after_warmup: bool = False
    keep_rule: str = "effective"
    tile: int = 1
    merge_lowrank: bool = True
    max_steps: int | None = None
    seed: int = 0
    recalibrate_batches: int = 20
    quantize_activations: bool = True
    fill_budget: bool = False
    gate_init_spread: float = 0.1
    finetune_from: str = "search"
    min_width: float = 0.0
    keep_by: str = "gate"
    gate_optimizer: str = "adam"

    def __post_init__(self) -> None:
        for n in ("search_epochs", "finetune_epochs"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SearchError(f"{n}={v!r} must be an integer >= 0")
        for n in ("lr", "gate_lr", "dual_lr"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or not v > 0:
                raise SearchError(f"{n}={v!r} must be a positive number")
        if self.lam < 0 or (self.target is not None and self.lam <= 0):
            raise SearchError(f"lam={self.lam} must be >= 0 (> 0 with a target: it is the initial lambda)")
        if self.target is not None and not 0.0 < self.target <= 1.0:
            raise SearchError(f"target={self.target} must be a fraction of the original latency in (0, 1]")
        tw = self.target_warmup
        if not isinstance(tw, (int, float)) or isinstance(tw, bool) or not 0.0 <= tw <= 1.0:
            raise SearchError(f"target_warmup={tw!r} must be a fraction of the search steps in [0, 1]")
        if tw > 0 and self.target is None:
            raise SearchError(f"target_warmup={tw!r} needs a target (it anneals towards it); set target or use 0")
        if self.target_curve not in TARGET_CURVES:
            raise SearchError(f"target_curve={self.target_curve!r} is unknown; allowed: {', '.join(TARGET_CURVES)}")
        if self.latency_penalty not in LATENCY_PENALTIES:
            raise SearchError(f"latency_penalty={self.latency_penalty!r} is unknown; allowed: "
                              f"{', '.join(LATENCY_PENALTIES)}")
        if not isinstance(self.prune_after_warmup, bool):
            raise SearchError(f"prune_after_warmup={self.prune_after_warmup!r} must be true or false")
        if self.prune_after_warmup and not tw > 0:
            raise SearchError("prune_after_warmup=True needs target_warmup > 0 (it prunes when the warm-up ends)")
        kp = self.dual_kp
        if not isinstance(kp, (int, float)) or isinstance(kp, bool) or not 0.0 <= kp < math.inf:
            raise SearchError(f"dual_kp={kp!r} must be a finite number >= 0")
        if self.keep_rule not in ("effective", "nonzero"):
            raise SearchError(f"keep_rule={self.keep_rule!r} is unknown; allowed: effective, nonzero")
        if not isinstance(self.tile, int) or self.tile < 1:
            raise SearchError(f"tile={self.tile!r} must be a positive int")
        if self.max_steps is not None and self.max_steps < 1:
            raise SearchError(f"max_steps={self.max_steps} must be >= 1 or None")
        rb = self.recalibrate_batches
        if not isinstance(rb, int) or isinstance(rb, bool) or rb < 0:
            raise SearchError(f"recalibrate_batches={rb!r} must be an integer >= 0")
        if self.finetune_from not in FINETUNE_FROM:
            raise SearchError(f"finetune_from={self.finetune_from!r} is unknown; allowed: {', '.join(FINETUNE_FROM)}")
        sp = self.gate_init_spread
        if not isinstance(sp, (int, float)) or isinstance(sp, bool) or not 0.0 <= sp < 1.0:
            raise SearchError(f"gate_init_spread={sp!r} must be a number in [0, 1)")
        check_gate_policy(self.min_width, self.keep_by, self.gate_optimizer)

    def target_at(self, step: int, total: int) -> float | None:
        """The effective latency target at search step ``step`` of ``total`` (None without a ``target``).

        Example:
            >>> SearchConfig(target=0.5, target_warmup=1.0, target_curve="linear").target_at(5, 10)
            0.75
        """
        if self.target is None:
            return None
        return effective_target(self.target, step, total, self.target_warmup, self.target_curve)


@dataclass
class SearchResult:
    """What a search returns.

    Attributes:
        model: the compressed, fine-tuned plain ``nn.Module``.
        plan: its :class:`CompressionPlan`.
        original / predicted: latency-model values of the original and the extracted model.
        soft_final: latency-model value at the gates' continuous sizes at the end of the search.
        hard_search: latency-model value at the hard sizes the gates give (tile rounding included), before
            ``enforce_budget`` / ``fill_budget`` move them to the budget: where the search itself landed.
        repairs: every post-hoc change of the widths, in order: ``{"step": "enforce_budget" | "fill_budget",
            "when": "warm-up end" | "extraction", "before": ..., "after": ...}`` (latency-model values at the hard
            sizes); with ``prune_after_warmup`` the first ones happen mid-search, so ``hard_search`` is already
            after them.
        accuracy: ``eval_fn(model)`` after fine-tuning (None without ``eval_fn``).
        accuracy_extracted: ``eval_fn`` right after extraction, before fine-tuning.
        history: one dict per epoch (loss, task loss, latency ratio, λ, accuracy).
        seconds: wall time per phase (``search``, ``extract``, ``finetune``).
        sizes: per-layer chosen sizes (group widths, ranks, bits) vs original.
    """

    model: nn.Module
    plan: CompressionPlan
    original: float
    predicted: float
    soft_final: float
    accuracy: float | None
    accuracy_extracted: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)
    hard_search: float | None = None
    repairs: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader[Any], batches: int) -> int:
    """Re-estimate the running mean/variance of every batch-norm of ``model`` from ``batches`` batches.

    The statistics are reset and accumulated as a cumulative average (``momentum=None``) over forward
    passes in training mode; weights are not touched. Returns the number of batches used (0 when the
    model has no batch-norm or ``batches`` is 0).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> data = [(torch.randn(8, 1, 5, 5) * 3 + 1, torch.zeros(8, dtype=torch.long))] * 2
        >>> recalibrate_batchnorm(net, data, 2)
        2
        >>> bool(net[1].num_batches_tracked == 2)
        True
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return 0
    saved = [(m, m.momentum) for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for x, _ in loader:
            if n >= batches:
                break
            model(x)
            n += 1
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)
    return n


def _prune_to_budget(gm: GatedModel, latency: LatencyModel, config: SearchConfig, l0: float,
                     say: Callable[[str], None], when: str, repairs: list[dict[str, Any]]) -> dict[str, int]:
    """The widths ``prune_after_warmup`` fixes: the hard sizes, shrunk to the target if above it
    (:func:`enforce_budget`) and, with ``fill_budget``, grown back to it (:func:`fill_budget`)."""
    assert config.target is not None
    budget = config.target * l0
    widths = {k: g.hard_size() for k, g in gm.channel_gates.items()}
    before = float(latency(hard_sizes(gm, widths)).detach())
    widths = enforce_budget(gm, latency, widths, budget)
    shrunk = float(latency(hard_sizes(gm, widths)).detach())
    repairs.append({"step": "enforce_budget", "when": "warm-up end", "before": before, "after": shrunk})
    if config.fill_budget:
        widths = fill_budget(gm, latency, widths, budget)
        repairs.append({"step": "fill_budget", "when": "warm-up end", "before": shrunk,
                        "after": float(latency(hard_sizes(gm, widths)).detach())})
    after = float(latency(hard_sizes(gm, widths)).detach())
    say(f"search: {when}; widths fixed: hard sizes gave {before / l0:.3f} x original, fixed at {after / l0:.3f} x "
        f"(target {config.target:.3f})")
    return widths


def differentiable_search(space: SearchSpace, latency: LatencyModel, train_loader: DataLoader[Any],
                          eval_fn: Callable[[nn.Module], float] | None, config: SearchConfig, *,
                          model: nn.Module | None = None, log: Callable[[str], None] | None = None,
                          progress: bool = False, ledger: ComputeLedger | None = None,
                          trial: int | None = None) -> SearchResult:
    """Search, extract and fine-tune (see the module docstring).

    Args:
        space: the search space (its model is the starting point unless ``model`` is given).
        latency: a :class:`~hwloop.search.latency.LatencyModel` built on ``space``.
        train_loader: training batches ``(x, y)`` for cross-entropy.
        eval_fn: ``model -> accuracy`` (any score, higher is better), or None.
        config: :class:`SearchConfig`.
        model: starting weights (default: the space's model).
        log: called with one line per epoch and per phase.
        progress: show tqdm progress bars.
        ledger: a :class:`~hwloop.search.accounting.ComputeLedger` that receives what each phase cost:
            ``search`` (one record per epoch: training images and epochs actually processed, wall),
            ``extract`` (wall), ``finetune`` (images, epochs, wall) and ``eval`` (wall of every
            ``eval_fn`` call). The search itself sends nothing to a device (device time and
            measurements are 0 here); callers add their ``measure`` records to the same ledger.
        trial: the trial / sweep index recorded on every ledger entry.

    Example:
        >>> from hwloop.search.accounting import ComputeLedger
        >>> from hwloop.search.train import make_task
        >>> from hwloop.search.latency import SurrogateLatency
        >>> task = make_task("digits", "small_cnn", train_limit=256)
        >>> space = SearchSpace.from_ref(task.ref)
        >>> led = ComputeLedger()
        >>> _ = differentiable_search(space, SurrogateLatency(space), task.train, None,
        ...                           SearchConfig(search_epochs=1, finetune_epochs=1, target=0.5), ledger=led)
        >>> led.total(phase="search").train_images, led.total(phase="finetune").epochs
        (256, 1.0)
    """
    from tqdm.auto import tqdm

    say = log or (lambda _m: None)
    led = ledger if ledger is not None else ComputeLedger()
    torch.manual_seed(config.seed)
    gm = GatedModel(space, model, init_spread=config.gate_init_spread)
    gm.train()
    floors = apply_width_floor(gm, config.min_width)   # {} unless min_width > 0
    scores = magnitude_scores(space, model) if config.keep_by == "magnitude" else {}
    if space.lowrank and config.merge_lowrank:   # cost a rank-gated layer as extraction exports it (issue 18)
        latency = MergedLowRankLatency(latency, space.lowrank)
    start_gates = {k: g.values().detach().clone() for k, g in gm.channel_gates.items()} if scores else {}
    l0 = latency.original()
    if not l0 > 0:
        raise SearchError(f"the latency model gives {l0} for the original model; it must be positive")
    opt_w = make_optimizer(gm.weight_parameters(), config.lr, config.momentum, config.weight_decay)
    opt_g = make_gate_optimizer(gm.gate_parameters(), config.gate_optimizer, config.gate_lr)
    lam = float(config.lam)
    lam_i = lam   # the integral (dual-ascent) part of λ; the proportional part multiplies it
    loss_fn = nn.CrossEntropyLoss()
    steps = min(len(train_loader), config.max_steps) if config.max_steps else len(train_loader)
    total, step = config.search_epochs * steps, 0
    history: list[dict[str, float]] = []
    mode = f"target {config.target:.0%} of original (dual ascent)" if config.target else f"fixed lambda {lam}"
    if config.target is not None and config.target_warmup > 0:
        mode += (f", target annealed from 100% ({config.target_curve}) over the first {config.target_warmup:.0%} "
                 f"of the steps")
    if config.target is not None and config.dual_kp > 0:
        mode += f", proportional gain {config.dual_kp:g} on log lambda"
    if config.target is not None and config.latency_penalty == "hinge":
        mode += ", hinge penalty (no pull below the target)"
    mode += describe(config.min_width, config.keep_by, config.gate_optimizer, config.gate_lr)
    say(f"search: {config.search_epochs} epochs x {steps} steps, {mode}, latency0 = {l0:.4g} {latency.unit} "
        f"({latency.kind})")

    def evaluate(net: nn.Module) -> float:
        assert eval_fn is not None
        with led.phase("eval", trial=trial):   # per-epoch evaluation is reporting, not search cost
            return float(eval_fn(net))

    t_search = 0.0
    ratio, t_eff = 1.0, config.target_at(0, total)
    warm_end = math.ceil(config.target_warmup * total) if config.prune_after_warmup else None
    frozen: dict[str, int] | None = None       # widths fixed when the warm-up ends (prune_after_warmup)
    masks: dict[str, torch.Tensor] = {}
    repairs: list[dict[str, Any]] = []
    early = config.finetune_from == "start" and warm_end is not None   # stop once the widths are fixed
    for ep in range(config.search_epochs):
        if early and frozen is not None:
            break
        sums = {"loss": 0.0, "task": 0.0, "ratio": 0.0}
        n = 0
        t0 = time.perf_counter()
        with led.phase("search", trial=trial) as ph:
            for i, (x, y) in enumerate(tqdm(train_loader, desc=f"search {ep + 1}/{config.search_epochs}",
                                            disable=not progress, leave=False, total=steps)):
                if i >= steps or (early and frozen is not None):
                    break
                for grp in opt_w.param_groups:
                    grp["lr"] = cosine_lr(config.lr, step, total)
                task = loss_fn(gm(x), y)
                lat = latency(floored_sizes(gm.sizes(), floors))
                ratio_t = lat / l0
                t_eff = config.target_at(step, total)
                if t_eff is not None and config.latency_penalty == "hinge":
                    # the value is the latency of the hard sizes extraction will read off the gates (gates between
                    # 0 and 1 round up: bits to the next level, widths to ceil(s(a))), the gradient the soft one's
                    # (straight-through); no pull once that is within the target in force
                    with torch.no_grad():
                        hard_t = latency(hard_sizes(gm, frozen)) / l0
                    ratio_t = ratio_t + (hard_t - ratio_t).detach()
                    loss = task + lam * torch.clamp(ratio_t - t_eff, min=0.0)
                else:
                    loss = task + lam * ratio_t
                opt_w.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_w.step()
                opt_g.step()
                gm.project_()
                if warm_end is not None and frozen is None and step + 1 >= warm_end:
                    frozen = _prune_to_budget(gm, latency, config, l0, say, f"warm-up over at step {step + 1}",
                                              repairs)
                    masks = keep_by_magnitude_(gm, frozen, scores, start_gates) if scores else \
                        {k: g.keep_mask(frozen[k]) for k, g in gm.channel_gates.items()}
                if masks:
                    with torch.no_grad():
                        for k, m in masks.items():
                            gm.channel_gates[k].values()[~m] = 0.0
                            if scores:   # a kept gate stays > 0, so keep_mask(width) still selects exactly m
                                gm.channel_gates[k].values()[m] = gm.channel_gates[k].values()[m].clamp_min(1e-6)
                ratio = float(ratio_t.detach())
                if t_eff is not None:  # PI control of log(lambda): scale-free, fast in short schedules
                    err = ratio / t_eff - 1.0
                    # the exponent is capped where λ is at _LAM_MAX anyway (a far-away target would overflow exp)
                    lam_i = min(_LAM_MAX, max(_LAM_MIN, lam_i * math.exp(min(_EXP_CAP, config.dual_lr * err))))
                    lam = min(_LAM_MAX, max(_LAM_MIN, lam_i * math.exp(min(_EXP_CAP, config.dual_kp * err)))) \
                        if config.dual_kp else lam_i
                sums["loss"] += float(loss.detach())
                sums["task"] += float(task.detach())
                sums["ratio"] += ratio
                ph.train_images += int(y.shape[0])
                n += 1
                step += 1
            ph.epochs += n / max(1, steps)
        t_search += time.perf_counter() - t0
        rec = {"epoch": ep + 1, **{k: v / max(1, n) for k, v in sums.items()}, "lambda": lam,
               "ratio_end": ratio, **({"target_end": t_eff} if t_eff is not None else {})}
        if eval_fn is not None:
            rec["accuracy"] = evaluate(gm)
        history.append(rec)
        say("search epoch {epoch}: loss {loss:.4f} task {task:.4f} latency ratio {ratio_end:.3f} lambda {lam:.3f}"
            .format(lam=lam, **rec) + (f" (target now {t_eff:.3f})" if t_eff is not None and config.target_warmup
                                       else "") + (f" acc {rec['accuracy']:.2f}" if "accuracy" in rec else ""))
    soft = float(latency(floored_sizes(gm.sizes(), floors)).detach())

    stack = ExitStack()
    with stack:
        t1 = time.perf_counter()
        with led.phase("extract", trial=trial):
            gm.eval()
            widths = round_widths_to_tile(gm, latency, config.tile, frozen)
            hard_search = float(latency(hard_sizes(gm, widths)).detach())
            if config.target is not None:
                before = hard_search
                widths = enforce_budget(gm, latency, widths, config.target * l0)
                after = float(latency(hard_sizes(gm, widths)).detach())
                repairs.append({"step": "enforce_budget", "when": "extraction", "before": before, "after": after})
                if after < before:
                    say(f"budget: hard sizes gave {before / l0:.3f} x original; shrank widths to {after / l0:.3f} x")
                if config.fill_budget:
                    widths = fill_budget(gm, latency, widths, config.target * l0)
                    grown = float(latency(hard_sizes(gm, widths)).detach())
                    repairs.append({"step": "fill_budget", "when": "extraction", "before": after, "after": grown})
                    if grown > after:
                        say(f"budget: hard sizes gave {after / l0:.3f} x original (target {config.target:.3f}); "
                            f"grew widths to {grown / l0:.3f} x")
            if scores and frozen is None:   # keep_by magnitude without a freeze: choose the channels now
                keep_by_magnitude_(gm, widths, scores, start_gates)
            hard = hard_sizes(gm, widths)

            merged = latency.merged(hard) if isinstance(latency, MergedLowRankLatency) else frozenset()

            def merge_if(layer: str, rank: int) -> bool:   # the rule the search priced with (lowrank_cost)
                return layer in merged

            meta = {"latency_kind": latency.kind, "latency_unit": latency.unit, "original": l0,
                    "config": asdict(config)}
            src = rewind(gm, model, widths=widths, rule=config.keep_rule) if config.finetune_from == "start" else gm
            net, plan = extract(src, widths=widths, rule=config.keep_rule, merge_if=merge_if, meta=meta)
            predicted = latency.plan_latency(plan)
            a_bits = plan.a_bits if plan.a_bits is not None and 2 <= plan.a_bits <= 16 else None
            aq = stack.enter_context(quantized_activations(
                net, list(plan.w_bits) if config.quantize_activations and a_bits else [], a_bits or 8))
            if config.recalibrate_batches:  # the extracted weights already hold the chosen bits
                recalibrate_batchnorm(net, train_loader, config.recalibrate_batches)
            # signs and least-error ranges on the recalibrated network (issue 19: unsigned codes after a ReLU),
            # then batch-norm again on the quantized inputs
            if aq.calibrate(train_loader, max(1, config.recalibrate_batches)) and config.recalibrate_batches:
                recalibrate_batchnorm(net, train_loader, config.recalibrate_batches)
            net.eval()
        t_extract = time.perf_counter() - t1
        acc_x = evaluate(net) if eval_fn is not None else None
        say(f"extracted: predicted {predicted:.4g} {latency.unit} = {predicted / l0:.3f} x original"
            + (f", accuracy before fine-tune {acc_x:.2f}" if acc_x is not None else "")
            + (f" (activations at {a_bits} bits)" if aq.quantizers else ""))

        t2 = time.perf_counter()
        with led.phase("finetune", trial=trial) as ph:
            left = total - step if early else 0   # search steps not run (stopped at the warm-up end)
            if left > 0:
                from hwloop.search.baselines import finetune

                want = config.finetune_epochs * steps + left
                n_ep = math.ceil(want / steps)
                seen, eps = finetune(net, train_loader, n_ep, config.lr, w_bits=plan.w_bits, momentum=config.momentum,
                                     weight_decay=config.weight_decay, max_steps=math.ceil(want / n_ep))
                ph.train_images += seen
                ph.epochs += eps * min(steps, math.ceil(want / n_ep)) / steps
            elif config.finetune_epochs:
                with quantized_weights(net, plan.w_bits):
                    r = train_epochs(net, train_loader, config.finetune_epochs, config.lr, momentum=config.momentum,
                                     weight_decay=config.weight_decay, progress=progress, desc="fine-tune",
                                     max_steps=config.max_steps)
                ph.train_images += int(r["images"])
                ph.epochs += float(r["epochs"])
            net.eval()
        t_ft = time.perf_counter() - t2
        acc = evaluate(net) if eval_fn is not None else None
    if aq.quantizers:
        plan = replace(plan, meta={**plan.meta, "a_amax": aq.amax(), "a_quant": aq.export()})
    if acc is not None:
        say(f"fine-tuned: accuracy {acc:.2f}")
    sizes = _size_table(space, plan)
    return SearchResult(model=net, plan=plan, original=l0, predicted=predicted, soft_final=soft, accuracy=acc,
                        accuracy_extracted=acc_x, history=history,
                        seconds={"search": t_search, "extract": t_extract, "finetune": t_ft}, sizes=sizes,
                        hard_search=hard_search, repairs=repairs)


def _size_table(space: SearchSpace, plan: CompressionPlan) -> dict[str, dict[str, float]]:
    sizes, dense = space.sizes_of_plan(plan)
    out: dict[str, dict[str, float]] = {}
    for g in space.graph.groups:
        layer = rank_layer(g.key) if g.kind == "rank" else g.key
        if g.kind == "rank" and layer in dense:
            continue
        out[f"{g.kind}:{layer}"] = {"chosen": sizes[SizeKey.channels(g.key)], "original": float(g.channels)}
    for n in space.bit_layers:
        out[SizeKey.bits(n)] = {"chosen": sizes[SizeKey.bits(n)], "original": float(space.options.bit_levels[-1])}
    return out
