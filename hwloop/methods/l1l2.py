"""``l1l2``: the ℓ1/ℓ2 latency-surrogate search (Nasery et al. 2023) behind the method contract.

One differentiable search per run: gates on channel groups (ranks, bits) whose ℓ1/ℓ2 effective sizes feed
the latency model inside the loss, λ following the budget by dual ascent, then extraction and fine-tuning
(:func:`hwloop.search.differentiable.differentiable_search`, unchanged). The config is
:class:`~hwloop.search.differentiable.SearchConfig` without ``target`` and ``seed``, which come from the
:class:`~hwloop.methods.base.MethodContext`; the result is one candidate with the budget-honesty fields:
``search_end`` is the latency at the hard sizes the gates gave (before ``enforce_budget`` /
``fill_budget``), and every repair (at the warm-up end with ``prune_after_warmup``, at extraction) is listed.

Example:
    >>> from hwloop.methods import make_method
    >>> m = make_method("l1l2", {"search_epochs": 1, "finetune_epochs": 0})
    >>> m.config.search_config(target=0.5, seed=3).target, m.config.search_config(target=0.5, seed=3).seed
    (0.5, 3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from hwloop.errors import SearchError
from hwloop.methods.base import Candidate, CompressionMethod, MethodConfig, MethodContext, MethodResult, Repair
from hwloop.search.accounting import ComputeRecord
from hwloop.search.differentiable import SearchConfig, differentiable_search

__all__ = ["L1L2Config", "L1L2Method", "l1l2_config"]

_D = SearchConfig()   # the defaults are SearchConfig's (one place)


@dataclass(frozen=True)
class L1L2Config(MethodConfig):
    """The ``l1l2`` method's keys: every :class:`SearchConfig` field but ``target`` and ``seed`` (same meaning,
    same defaults, same checks)."""

    search_epochs: int = _D.search_epochs
    finetune_epochs: int = _D.finetune_epochs
    lr: float = _D.lr
    gate_lr: float = _D.gate_lr
    momentum: float = _D.momentum
    weight_decay: float = _D.weight_decay
    lam: float = _D.lam
    dual_lr: float = _D.dual_lr
    target_warmup: float = _D.target_warmup
    target_curve: str = _D.target_curve
    dual_kp: float = _D.dual_kp
    latency_penalty: str = _D.latency_penalty
    prune_after_warmup: bool = _D.prune_after_warmup
    keep_rule: str = _D.keep_rule
    tile: int = _D.tile
    merge_lowrank: bool = _D.merge_lowrank
    max_steps: int | None = _D.max_steps
    recalibrate_batches: int = _D.recalibrate_batches
    quantize_activations: bool = _D.quantize_activations
    fill_budget: bool = _D.fill_budget
    gate_init_spread: float = _D.gate_init_spread
    finetune_from: str = _D.finetune_from
    min_width: float = _D.min_width             # opt-in gate policies (hwloop.search.gate_policy); defaults: off
    keep_by: str = _D.keep_by
    gate_optimizer: str = _D.gate_optimizer

    def __post_init__(self) -> None:
        # the rules that do not depend on the budget; run() checks the rest with the real target
        self.search_config(target=0.5 if self.target_warmup or self.prune_after_warmup else None, seed=0)

    def search_config(self, target: float | None, seed: int) -> SearchConfig:
        """The :class:`SearchConfig` of a run for ``target`` with ``seed`` (raises :class:`SearchError`)."""
        return SearchConfig(**self.to_dict(), target=target, seed=seed)


def l1l2_config(config: SearchConfig) -> L1L2Config:
    """The method config of a :class:`SearchConfig` (its ``target`` and ``seed`` belong to the context).

    Example:
        >>> l1l2_config(SearchConfig(search_epochs=1, target=0.5)).search_epochs
        1
    """
    return L1L2Config(**{k: v for k, v in config.__dict__.items() if k not in ("target", "seed")})


class L1L2Method(CompressionMethod):
    """The ℓ1/ℓ2 latency-surrogate search (see the module docstring)."""

    name: ClassVar[str] = "l1l2"
    summary: ClassVar[str] = ("ℓ1/ℓ2 latency-surrogate gates trained with the task loss, λ by dual ascent on the "
                              "target; extract + fine-tune (Nasery et al. 2023)")
    config_class: ClassVar[type[MethodConfig]] = L1L2Config
    smoke_config: ClassVar[dict[str, Any]] = {"search_epochs": 1, "finetune_epochs": 1, "max_steps": 4,
                                              "recalibrate_batches": 2}

    def check(self, target: float | None) -> None:
        assert isinstance(self.config, L1L2Config)
        try:
            self.config.search_config(target, 0)
        except SearchError as e:
            raise SearchError(f"[method] l1l2: {e}") from e

    def run(self, context: MethodContext) -> MethodResult:
        cfg = self.config
        assert isinstance(cfg, L1L2Config)
        self.check(context.target)
        sc = cfg.search_config(context.target, context.seed)
        ledger = context.ledger
        assert ledger is not None
        n0 = len(ledger)
        res = differentiable_search(context.space, context.latency, context.train, context.eval_fn, sc,
                                    model=context.model, log=context.log, progress=context.progress, ledger=ledger,
                                    trial=context.trial)
        cost = ComputeRecord("total")
        for r in ledger.records[n0:]:   # this run's records only (search, extract, fine-tune, evaluations)
            cost = cost + r
        unit = context.latency.unit
        cand = Candidate(
            setting=f"target={context.target}" if context.target is not None else f"lam={cfg.lam}",
            model=res.model, plan=res.plan, original=res.original, predicted=res.predicted, unit=unit,
            predicted_ms=res.predicted if unit == "ms" else None, accuracy=res.accuracy,
            accuracy_extracted=res.accuracy_extracted, target=context.target, search_end=res.hard_search,
            repairs=[Repair(**r) for r in res.repairs], cost=dataclasses.replace(cost, phase="total", trial=context.trial),
            history=res.history, seconds=res.seconds, sizes=res.sizes, extra={"soft_final": res.soft_final})
        cand.judge(context.base_accuracy, context.max_repair_drop)
        context.say(f"l1l2: budget {cand.status}: {cand.status_reason}")
        return MethodResult(method=self.name, config=cfg.to_dict(), candidates=[cand])
