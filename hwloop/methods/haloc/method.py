"""``haloc``: HALOC (Xiao et al., AAAI 2023) behind the method contract.

``run(context)``: probe each factorisable layer's latency staircase in the shared cost table and take rank
candidates at multiples of its step; wrap the layers as :class:`~hwloop.methods.haloc.mixed.MixedLowRank`
(Tucker-2 branches, HOSVD-initialised, plus the dense layer when ``allow_dense``); alternate weight and
architecture steps (:func:`~hwloop.methods.haloc.search.alternate`); take the argmax ranks (``search_end``: their
cost, before any repair); step ranks down if they are above the target and ``repair`` is on (a
:class:`~hwloop.methods.base.Repair`); extract real Tucker-2 layers with the plan (``LowRank`` ``tucker2``
actions), re-estimate batch norms, fine-tune (:func:`hwloop.search.train.train_epochs`), evaluate.

Example:
    >>> from hwloop.methods import make_method
    >>> make_method("haloc", {"mu": 0.0, "sampling": "gumbel"}).config.mu
    0.0
    >>> make_method("haloc", {"sampling": "argmax"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [method] haloc: sampling='argmax' is unknown; allowed: softmax, gumbel
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hwloop.compress.extract import get_module, output_layers
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import SearchError
from hwloop.methods.base import Candidate, CompressionMethod, MethodConfig, MethodContext, MethodResult, Repair
from hwloop.methods.haloc.calibrate import calibrate_table, measure_choice
from hwloop.methods.haloc.costs import ExpectedLatency, layer_specs, probe_steps, rank_ladder, table_levels
from hwloop.methods.haloc.mixed import (
    DENSE,
    MODES,
    eligible_layers,
    extract,
    max_equal_rank,
    mixed_layers,
    rank_level,
    wrap_model,
)
from hwloop.methods.haloc.joint import (
    WIDTH_PREFIX,
    JointExpectedLatency,
    build_joint,
    copy_gates,
    extract_joint,
    width_gates,
    width_sizes,
)
from hwloop.methods.haloc.search import (
    WIDTH_INITS,
    Expected,
    SearchLog,
    alternate,
    set_mode,
    step_down_to_budget,
)
from hwloop.methods.haloc.uniform import choose_uniform, uniform_ladder
from hwloop.methods.wholemodel import RatioMap
from hwloop.search.accounting import ComputeRecord

__all__ = ["COST_SOURCES", "HalocConfig", "HalocMethod"]

COST_SOURCES = ("auto", "measure", "predictor", "surrogate", "context")
RANK_MODES = ("search", "uniform")
WEIGHTS = ("search", "original")


@dataclass(frozen=True)
class HalocConfig(MethodConfig):
    """The ``haloc`` method's keys.

    Attributes:
        search_epochs / finetune_epochs: passes over the training batches for the search and the fine-tune.
        lr / finetune_lr: SGD learning rate (cosine) of the weights in the search / in the fine-tune.
        arch_lr: Adam learning rate of the architecture logits.
        momentum / weight_decay: SGD settings of the weight steps.
        lam: λ of the latency term (the initial λ with a target).
        dual_lr: dual-ascent gain on λ with a target (0: λ fixed).
        mu: weight of the feature-map-approaching regulariser (0: the ablation without it).
        sampling: ``softmax`` (every branch runs, DARTS) or ``gumbel`` (straight-through, one branch runs).
        tau / tau_end: softmax temperature at the start / end of the search (geometric schedule).
        allow_dense: the uncompressed layer is a candidate too (the layer may stay dense).
        step: rank granularity; 0 reads each layer's from the cost table's latency staircase.
        max_candidates: at most this many rank candidates per layer (the stride becomes a multiple of the step).
        probe_stride: probe the staircase at every ``probe_stride``-th rank.
        cost_source: the cost table's source: ``auto``, ``measure``, ``predictor`` or ``surrogate``; ``context``:
            ``surrogate`` (MACs) when the context's latency model is the MACs surrogate (the evidence harness's
            ``flops`` control), else ``measure``.
        max_steps: batches per epoch (None: the whole loader).
        recalibrate_batches: batches to re-estimate batch-norm statistics after extraction.
        repair: step ranks down when the argmax ranks end above the target (reported as a repair).
        init_scale: initial logits ``−init_scale·e_k/max(e)`` from each branch's feature-map error on the first
            batch (:func:`~hwloop.methods.haloc.search.init_logits`); 0: uniform logits.
        arch_paths: with ``gumbel``, the branches an architecture step runs (0: all; ``k >= 2``: the sampled
            one and ``k − 1`` others drawn by ``p``).
        ranks: ``search`` (HALOC) or ``uniform``: no search; every factorised layer at one fraction of its largest
            equal rank, the uniform assignment (fractions ``k/uniform_n``) with the largest cost at or below the
            target in the cost table (:mod:`~hwloop.methods.haloc.uniform`), then the same extraction, batch-norm
            re-estimation and fine-tune (the uniform-rank control as a method entry).
        uniform_n: the uniform ladder's fractions ``k/uniform_n``.
        widths: joint channel pruning (:mod:`~hwloop.methods.haloc.joint`): candidate widths of every coupled
            channel group as fractions of its channels (e.g. ``[0.25, 0.5, 0.75]``; the full width is always one),
            searched with the ranks, costed jointly; empty: ranks only (the paper's HALOC).
        band: with a target, 0 is the one-sided hinge (push only while the argmax is above the target); ``> 0``
            also pushes up while the argmax is below ``target·(1 − band)``, and λ grows there too.
        width_lr: Adam learning rate of the width logits (None: ``arch_lr``).
        weights: the extracted model's weights: ``search`` (the chosen branches as the search trained them, the
            paper's way) or ``original`` (the chosen architecture rebuilt from the trained model: HOSVD of the
            original layers at the chosen ranks, the chosen channels of the original weights), then the same
            batch-norm re-estimation and fine-tune.
        width_init: the width logits' start (with ``init_scale > 0``): ``linear`` in the width, or ``sensitivity``
            (each group's output error when it alone is narrowed, scaled over all groups; ``init_logits``).
        calibrate: whole-model probes measured on the device before the search (0: none): the table's sum against
            the device's whole model (:mod:`~hwloop.methods.haloc.calibrate`); the search, the repair and the
            uniform pick aim at the mapped target, the candidate's predicted ratio is the mapped one (for the CPU).
        clip_ranks: with ``widths``, a rank at or above the pruned layer's ``min(c_in, c_out)`` is the dense
            layer at those widths (costed and extracted as dense): no factorisation that reduces no rank.
    """

    search_epochs: int = 2
    finetune_epochs: int = 1
    lr: float = 0.01
    finetune_lr: float = 0.01
    arch_lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lam: float = 1.0
    dual_lr: float = 0.05
    mu: float = 1.0
    sampling: str = "softmax"
    tau: float = 1.0
    tau_end: float = 1.0
    allow_dense: bool = True
    step: int = 0
    max_candidates: int = 8
    probe_stride: int = 1
    cost_source: str = "auto"
    max_steps: int | None = None
    recalibrate_batches: int = 8
    repair: bool = True
    init_scale: float = 2.0
    arch_paths: int = 0
    ranks: str = "search"
    uniform_n: int = 64
    widths: tuple[float, ...] | list[float] = ()
    band: float = 0.0
    width_lr: float | None = None
    weights: str = "search"
    width_init: str = "linear"
    clip_ranks: bool = False
    calibrate: int = 0

    def __post_init__(self) -> None:
        for n in ("search_epochs", "finetune_epochs", "step", "recalibrate_batches", "calibrate"):
            if getattr(self, n) < 0:
                raise SearchError(f"{n}={getattr(self, n)!r} must be >= 0")
        for n in ("max_candidates", "probe_stride", "uniform_n"):
            if getattr(self, n) < 1:
                raise SearchError(f"{n}={getattr(self, n)!r} must be >= 1")
        for n in ("lr", "finetune_lr", "arch_lr", "tau", "tau_end"):
            v = getattr(self, n)
            if not (math.isfinite(v) and v > 0):
                raise SearchError(f"{n}={v!r} must be a finite number > 0")
        for n in ("momentum", "weight_decay", "lam", "dual_lr", "mu", "init_scale"):
            v = getattr(self, n)
            if not (math.isfinite(v) and v >= 0):
                raise SearchError(f"{n}={v!r} must be a finite number >= 0")
        if self.arch_paths < 0 or self.arch_paths == 1:
            raise SearchError(f"arch_paths={self.arch_paths!r} must be 0 (all branches) or >= 2")
        if self.momentum >= 1:
            raise SearchError(f"momentum={self.momentum!r} must be below 1")
        if self.sampling not in MODES:
            raise SearchError(f"sampling={self.sampling!r} is unknown; allowed: {', '.join(MODES)}")
        if self.ranks not in RANK_MODES:
            raise SearchError(f"ranks={self.ranks!r} is unknown; allowed: {', '.join(RANK_MODES)}")
        if self.cost_source not in COST_SOURCES:
            raise SearchError(f"cost_source={self.cost_source!r} is unknown; allowed: {', '.join(COST_SOURCES)}")
        if not (isinstance(self.band, (int, float)) and 0 <= self.band < 1):
            raise SearchError(f"band={self.band!r} must be in [0, 1)")
        if self.width_lr is not None and not (math.isfinite(self.width_lr) and self.width_lr > 0):
            raise SearchError(f"width_lr={self.width_lr!r} must be a finite number > 0 or none")
        if self.width_init not in WIDTH_INITS:
            raise SearchError(f"width_init={self.width_init!r} is unknown; allowed: {', '.join(WIDTH_INITS)}")
        if self.weights not in WEIGHTS:
            raise SearchError(f"weights={self.weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
        ws = self.widths
        if not isinstance(ws, (list, tuple)) or any(isinstance(f, bool) or not isinstance(f, (int, float))
                                                    or not 0 < float(f) <= 1 for f in ws):
            raise SearchError(f"widths={ws!r} must be a list of fractions in (0, 1]")
        object.__setattr__(self, "widths", tuple(float(f) for f in ws))
        if not self.widths:
            for n, default in (("clip_ranks", False), ("width_lr", None), ("width_init", "linear")):
                if getattr(self, n) != default:
                    raise SearchError(f"{n}={getattr(self, n)!r} acts on width gates; it needs widths (fractions)")
        if self.clip_ranks and not self.allow_dense:
            raise SearchError("clip_ranks=true needs allow_dense=true (a clipped rank becomes the dense layer)")
        if self.width_init == "sensitivity" and self.init_scale == 0:
            raise SearchError("width_init='sensitivity' needs init_scale > 0 (it scales the width logits)")
        if self.widths and self.ranks != "search":
            raise SearchError(f"widths={list(self.widths)} needs ranks='search' (the uniform-rank control prunes "
                              "no channels)")
        if self.calibrate and self.widths:
            raise SearchError(f"calibrate={self.calibrate!r} maps the rank-only table; with widths (joint pruning) "
                              "it is not built: set calibrate = 0 or drop widths")
        if self.max_steps is not None and self.max_steps < 2:
            raise SearchError(f"max_steps={self.max_steps!r} must be >= 2 (a weight and an architecture batch) or none")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["widths"] = list(self.widths)
        return d


def table_source(context: MethodContext, source: str) -> str:
    """The cost table's source for ``cost_source`` (``context``: MACs when the context's latency model is the
    MACs surrogate, else ``measure``)."""
    if source != "context":
        return source
    return "surrogate" if getattr(context.latency, "kind", None) == "surrogate" else "measure"


def _build_table(context: MethodContext, source: str) -> Any:
    from hwloop.search.costtable import build_cost_table

    source = table_source(context, source)

    def build(levels: Any, passive: Any) -> Any:
        return build_cost_table(levels, device=context.device, source=source, progress=context.progress,
                                passive=passive)
    return build


def _table_target(target: float | None, tmap: RatioMap | None) -> float | None:
    """The target as a ratio of the cost table's sum (the whole-model target read off ``tmap`` with calibrate)."""
    if target is None or tmap is None:
        return target
    return tmap.budget(target)


class HalocMethod(CompressionMethod):
    """HALOC's differentiable rank search (see the module docstring)."""

    name: ClassVar[str] = "haloc"
    summary: ClassVar[str] = ("Tucker-2 rank candidates at the device's latency step chosen by DARTS logits against "
                              "the expected latency from the cost table; extract + fine-tune (Xiao et al. 2023)")
    config_class: ClassVar[type[MethodConfig]] = HalocConfig
    smoke_config: ClassVar[dict[str, Any]] = {"search_epochs": 1, "finetune_epochs": 1, "max_steps": 4,
                                              "recalibrate_batches": 2, "step": 4, "max_candidates": 3,
                                              "lam": 5.0, "dual_lr": 0.5, "arch_lr": 0.05}

    def run(self, context: MethodContext) -> MethodResult:
        cfg = self.config
        assert isinstance(cfg, HalocConfig)
        if context.device is None:
            raise SearchError("[method] haloc needs a device for its cost table (MethodContext.device)")
        torch.manual_seed(context.seed)
        ledger = context.ledger
        assert ledger is not None
        n0 = len(ledger)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        base = copy.deepcopy(context.model).eval()
        example = context.example()
        specs = layer_specs(base, example)
        names = eligible_layers(base, output_layers(base, example))
        if not names:
            raise SearchError("[method] haloc: the model has no conv (k > 1) or hidden linear layer to factorise")
        build = _build_table(context, cfg.cost_source)
        if cfg.ranks == "uniform":
            w, ls, e, sl, st, lv, tb, ex, tm = self._uniform(context, base, specs, names, build, seconds, t0)
            return self._finish(context, base, w, ls, e, sl, st, lv, tb, ex, seconds, n0, tm)
        steps = {n: cfg.step for n in names} if cfg.step else probe_steps(base, specs, names, build, cfg.probe_stride)
        levels: dict[str, list[Any]] = {}
        for n in names:
            ranks = rank_ladder(max_equal_rank(get_module(base, n)), steps[n], cfg.max_candidates)
            ladder = ([DENSE] if cfg.allow_dense else []) + [rank_level(r) for r in ranks]
            if any(x != DENSE for x in ladder):
                levels[n] = ladder
        if not levels:
            raise SearchError(f"[method] haloc: no layer has a rank candidate at the latency steps {steps}")
        exp: Expected
        if cfg.widths:   # joint pruning: width gates on every channel group, one table over ranks and widths
            wrapped = wrap_model(base, levels)
            layers = mixed_layers(wrapped)
            gates, exp = build_joint(wrapped, base, example, layers, cfg.widths, build, clip_ranks=cfg.clip_ranks)
            table = exp.table
            seconds["cost_table"] = time.perf_counter() - t0   # the joint table needs the wrapped model's gates
        else:
            table = build(*table_levels(specs, levels))
            seconds["cost_table"] = time.perf_counter() - t0   # the table alone, as before widths existed
            wrapped = wrap_model(base, levels)
            layers = mixed_layers(wrapped)
            exp = ExpectedLatency(table, layers)
            gates = {}
        set_mode(wrapped, mode=cfg.sampling)
        ledger.add("cost_table", trial=context.trial, wall_s=seconds["cost_table"])
        tmap, cal = self._calibrate(context, base, levels, table, list(levels), seconds)
        context.say(f"haloc: {len(levels)} layers, steps {sorted(set(steps.values()))}"
                    + (f", {len(gates)} channel groups at widths {list(cfg.widths)}" if gates else "")
                    + f", cost unit {table.unit}")
        slog = alternate(wrapped, exp, context.train, epochs=cfg.search_epochs, lr=cfg.lr, arch_lr=cfg.arch_lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay, lam=cfg.lam, dual_lr=cfg.dual_lr,
                         mu=cfg.mu, target=_table_target(context.target, tmap), tau=cfg.tau, tau_end=cfg.tau_end,
                         max_steps=cfg.max_steps, progress=context.progress, log=context.log,
                         init_scale=cfg.init_scale, arch_paths=cfg.arch_paths, band=cfg.band,
                         width_lr=cfg.width_lr, width_init=cfg.width_init)
        seconds["search"] = slog.seconds
        images = slog.weight_images + slog.arch_images
        n_train = len(context.train.dataset) if hasattr(context.train, "dataset") else max(1, images)  # type: ignore[arg-type]
        ledger.add("search", trial=context.trial, wall_s=slog.seconds, train_images=images,
                   epochs=images / max(1, n_train))
        return self._finish(context, base, wrapped, layers, exp, slog, steps, levels, table, cal, seconds, n0, tmap)

    def _uniform(self, context: MethodContext, base: torch.nn.Module, specs: Any, names: list[str], build: Any,
                 seconds: dict[str, float], t0: float) -> tuple[Any, ...]:
        """``ranks = "uniform"``: the uniform assignment at the target from the cost table, wrapped as one-level
        mixed layers (no search)."""
        cfg = self.config
        assert isinstance(cfg, HalocConfig)
        if context.target is None:
            raise SearchError("[method] haloc: ranks='uniform' needs a latency target (the uniform rank is chosen "
                              "at it)")
        tops = {n: max_equal_rank(get_module(base, n)) for n in names}
        ladder = uniform_ladder(tops, cfg.uniform_n)
        all_levels = {n: sorted({rank_level(r[n]) for _, r in ladder}) for n in names}
        table = build(*table_levels(specs, all_levels))
        seconds["cost_table"] = time.perf_counter() - t0
        assert context.ledger is not None
        context.ledger.add("cost_table", trial=context.trial, wall_s=seconds["cost_table"])
        original = float(table.model_cost({n: DENSE for n in names}))

        def cost(r: dict[str, int]) -> float:
            return float(table.model_cost({n: rank_level(x) for n, x in r.items()}))

        tmap, cal = self._calibrate(context, base, all_levels, table, names, seconds)
        goal = _table_target(context.target, tmap)
        assert goal is not None
        pick = choose_uniform(ladder, cost, goal * original)
        if pick is None:   # even the smallest ranks are over the target: take them (judged as missed)
            f, r = ladder[0]
            pick = (f, r, cost(r))
        f, ranks, _ = pick
        levels = {n: [rank_level(ranks[n])] for n in names}
        wrapped = wrap_model(base, levels)
        layers = mixed_layers(wrapped)
        exp = ExpectedLatency(table, layers)
        slog = SearchLog(lam=0.0)
        slog.expected_ratio = exp.choice_cost(exp.argmax_choice()) / exp.original
        context.say(f"haloc uniform: rank fraction {f:.4f} ({len(ladder)} uniform points), "
                    f"{slog.expected_ratio:.3f}x in the cost table (target {context.target})")
        return wrapped, layers, exp, slog, {n: 1 for n in names}, levels, table, {"uniform_frac": f, **cal}, tmap

    def _calibrate(self, context: MethodContext, base: torch.nn.Module, levels: dict[str, list[Any]], table: Any,
                   names: list[str], seconds: dict[str, float]) -> tuple[RatioMap | None, dict[str, Any]]:
        """``calibrate = K``: the whole-model map from K probes measured on the device (None, {} without it or
        without a target); ``{"calibration": info}`` for the candidate's extra."""
        cfg = self.config
        assert isinstance(cfg, HalocConfig)
        if not cfg.calibrate or context.target is None:
            return None, {}
        t = time.perf_counter()
        dense = {n: DENSE for n in names}
        full = float(table.model_cost(dense))

        def ratio(ch: Any) -> float:
            return float(table.model_cost({**dense, **ch})) / full

        with torch.random.fork_rng(devices=[]):   # building the probes reseeds torch (ModelRef.build): keep the
            rmap, info = calibrate_table(levels, ratio, cfg.calibrate,   # run's own random stream, seed by seed
                                         lambda ch: measure_choice(context, base, ch), say=context.say)
        info["table_target"] = rmap.budget(context.target)
        seconds["calibrate"] = time.perf_counter() - t
        assert context.ledger is not None
        context.ledger.add("calibrate", trial=context.trial, wall_s=seconds["calibrate"],
                           device_s=sum(float(p.get("device_s", 0.0)) for p in info["probes"]),
                           device_measurements=sum(int(p.get("device_measurements", 1)) for p in info["probes"]))
        context.say(f"haloc: whole-model map from {len(info['probes'])} probes: target {context.target} is "
                    f"{info['table_target']:.4f} x in the table")
        return rmap, {"calibration": info}

    def _finish(self, context: MethodContext, base: torch.nn.Module, wrapped: torch.nn.Module, layers: Any,
                exp: Expected, slog: SearchLog, steps: dict[str, int], levels: dict[str, list[Any]],
                table: Any, extra: dict[str, Any], seconds: dict[str, float], n0: int,
                tmap: RatioMap | None = None) -> MethodResult:
        """Argmax (+ repair), extraction, batch-norm re-estimation, fine-tune, the candidate."""
        cfg = self.config
        assert isinstance(cfg, HalocConfig)
        ledger = context.ledger
        assert ledger is not None
        n_train = (len(context.train.dataset) if hasattr(context.train, "dataset")  # type: ignore[arg-type]
                   else max(1, slog.weight_images + slog.arch_images))
        choice = exp.argmax_choice()
        search_end = exp.choice_cost(choice)
        repairs: list[Repair] = []
        goal = _table_target(context.target, tmap)     # the target in the table (mapped with calibrate)
        if goal is not None and cfg.repair and search_end > goal * exp.original:
            units = exp.units if isinstance(exp, JointExpectedLatency) else layers
            moved = step_down_to_budget(units, exp, choice, goal * exp.original)
            if moved != choice:   # nothing cheaper among the candidates: no repair happened
                kind = ("step_down_ranks" if all(moved[n] == choice[n] for n in moved if n.startswith(WIDTH_PREFIX))
                        else "step_down_ranks_widths")
                choice = moved
                repairs.append(Repair(kind, "extraction", search_end, exp.choice_cost(choice)))
        if isinstance(exp, JointExpectedLatency):   # ranks that reduce nothing at the chosen widths → dense
            choice = exp.effective_choice(choice)
        predicted = exp.choice_cost(choice)

        def whole(v: float) -> float:   # a table cost as the whole model's, through the probes' map (calibrate)
            return v if tmap is None else exp.original * tmap.ratio(v / exp.original)

        gates = width_gates(wrapped)
        src = wrapped
        if cfg.weights == "original":   # the chosen architecture from the trained model's weights
            src = wrap_model(base, levels)
            copy_gates(wrapped, src)
        if gates:
            net, actions = extract_joint(src, context.example(), choice)
        else:
            net, actions = extract(src, choice)
        plan = CompressionPlan(base=context.ref.to_dict(), actions=actions,
                               meta={"method": "haloc" if cfg.ranks == "search" else "haloc-uniform",
                                     "unit": exp.unit, "predicted": predicted, "original": exp.original,
                                     "search_end": search_end,
                                     **({"calibrated_predicted": whole(predicted),
                                         "calibrated_search_end": whole(search_end)} if tmap is not None else {})})
        from hwloop.search.differentiable import recalibrate_batchnorm
        from hwloop.search.train import train_epochs

        t1 = time.perf_counter()
        recalibrate_batchnorm(net, context.train, cfg.recalibrate_batches)
        net.eval()
        acc_ex = context.eval_fn(net) if context.eval_fn is not None else None
        seconds["extract"] = time.perf_counter() - t1
        ledger.add("extract", trial=context.trial, wall_s=seconds["extract"])
        acc = acc_ex
        if cfg.finetune_epochs:
            ft = train_epochs(net, context.train, cfg.finetune_epochs, cfg.finetune_lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, progress=context.progress, desc="haloc finetune",
                              max_steps=cfg.max_steps)
            seconds["finetune"] = ft["seconds"]
            ledger.add("finetune", trial=context.trial, wall_s=ft["seconds"], train_images=int(ft["images"]),
                       epochs=ft["images"] / max(1, n_train))
            net.eval()
            acc = context.eval_fn(net) if context.eval_fn is not None else None
        net.eval()
        sizes = {}
        for n, m in layers.items():
            lv = choice[n]
            p = m.probs().detach()
            top = float(max_equal_rank(m.original))   # a dense layer is drawn at its largest equal rank
            sizes[f"rank:{n}"] = {"chosen": float(lv[1]) if lv != DENSE else top, "original": top,
                                  "dense": float(lv == DENSE), "p": float(p[m.levels.index(lv)]),
                                  "step": float(steps[n])}
        sizes.update(width_sizes(gates, choice))
        cost = ComputeRecord("total")
        for r in ledger.records[n0:]:   # this run's records only
            cost = cost + r
        unit = exp.unit
        table_predicted, table_end = predicted, search_end
        if tmap is not None:   # the whole model's predicted cost: the table's ratio through the probes' map
            predicted, search_end = whole(predicted), whole(search_end)
            repairs = [Repair(r.step, r.when, whole(r.before), whole(r.after)) for r in repairs]
            extra = {**extra, "table_predicted_ratio": table_predicted / exp.original,
                     "table_search_end_ratio": table_end / exp.original}
        cand = Candidate(
            setting=f"target={context.target}" if context.target is not None else f"lam={cfg.lam}",
            model=net, plan=plan, original=exp.original, predicted=predicted, unit=unit,
            predicted_ms=predicted if unit == "ms" and tmap is None else None,   # mapped: a ratio, not a time
            accuracy=acc, accuracy_extracted=acc_ex, target=context.target, search_end=search_end, repairs=repairs,
            cost=ComputeRecord("total", context.trial, cost.wall_s, cost.device_s, cost.train_images, cost.epochs,
                               cost.device_measurements),
            history=slog.history, seconds=seconds, sizes=sizes,
            extra={"expected_ratio": slog.expected_ratio, "argmax_ratio": table_end / exp.original,
                   "lam_final": slog.lam, "steps": dict(steps),
                   "candidates": {n: [list(x) for x in lv] for n, lv in levels.items()},
                   "ranks": {n: (None if lv == DENSE else int(lv[1])) for n, lv in choice.items()
                             if not n.startswith(WIDTH_PREFIX)},
                   **({"widths": {n[len(WIDTH_PREFIX):]: int(lv[1]) for n, lv in choice.items()
                                  if n.startswith(WIDTH_PREFIX)},
                       "width_candidates": {k: [int(lv[1]) for lv in g.levels] for k, g in gates.items()}}
                      if gates else {}),
                   "cost_source": str(getattr(table, "source", cfg.cost_source)), "ranks_mode": cfg.ranks,
                   **extra})
        cand.judge(context.base_accuracy, context.max_repair_drop)
        context.say(f"haloc: budget {cand.status}: {cand.status_reason}")
        return MethodResult(method=self.name, config=cfg.to_dict(), candidates=[cand])
