"""The method contract: config, context, result, and the budget-honesty rules every method reports by.

* :class:`MethodConfig` — base of each method's frozen config dataclass: :meth:`MethodConfig.from_dict`
  rejects unknown keys and wrong types with one line (a :class:`~hwloop.errors.SearchError`, exit 2 on the
  CLI), the subclass's ``__post_init__`` checks ranges, :meth:`MethodConfig.to_dict` is JSON.
* :class:`MethodContext` — what a method gets: the starting model and its :class:`~hwloop.models.ModelRef`,
  the search space, training batches and an ``eval_fn``, the cost source (a latency model), the budget
  (``target``: a fraction of the original's cost), the device candidates are measured on, a compute ledger.
* :class:`Candidate` / :class:`MethodResult` — one or more compressed models, each with its plan, predicted
  latency (cost-source units, and ms when the source is in ms), measured latency once
  :func:`~hwloop.methods.measure.measure_candidates` ran, accuracy and compute, and the budget-honesty
  fields: where the method itself ended (``search_end``, before any repair), every repair (:class:`Repair`)
  and a verdict (:func:`judge_budget`).
* :class:`CompressionMethod` — ``name``, one-line ``summary``, ``config_class`` and ``run(context)``.

Example:
    >>> judge_budget(0.5, search_ratio=0.52, final_ratio=0.5, repaired=True, accuracy=37.5, base_accuracy=97.0)
    ('missed', 'the method ended at 1.040x the target; the repair that met it left accuracy 37.50 (59.50 below the starting model, limit 10)')
    >>> judge_budget(0.5, search_ratio=0.49, final_ratio=0.49, repaired=False, accuracy=95.0, base_accuracy=97.0)[0]
    'met'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from hwloop.errors import SearchError

if typing.TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from hwloop.compress.plan import CompressionPlan
    from hwloop.models import ModelRef
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.latency import LatencyModel
    from hwloop.search.space import SearchSpace

__all__ = ["BUDGET_STATUSES", "Candidate", "CompressionMethod", "MethodConfig", "MethodContext", "MethodResult",
           "Repair", "judge_budget"]

#: ``met``: the method itself ended within the budget; ``met-by-repair``: a post-hoc repair moved it there and
#: the accuracy survived; ``missed``: above the budget, or a repair met it but destroyed the accuracy;
#: ``no-target``: no budget was given (fixed trade-off)
BUDGET_STATUSES = ("met", "met-by-repair", "missed", "no-target")
#: relative slack when comparing a latency ratio with the target (float noise of the cost source only)
RATIO_SLACK = 1e-6

C = TypeVar("C", bound="MethodConfig")


def _allowed_types(tp: Any) -> tuple[type, ...]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _allowed_types(a))
    if tp is Any:
        return (object,)
    return (origin or tp,) if isinstance(origin or tp, type) else (object,)


def _type_ok(v: Any, allowed: tuple[type, ...]) -> bool:
    if object in allowed:
        return True
    if isinstance(v, bool):
        return bool in allowed
    if isinstance(v, int) and float in allowed:
        return True
    return isinstance(v, allowed)


def _type_name(allowed: tuple[type, ...]) -> str:
    return " or ".join("none" if t is type(None) else t.__name__ for t in allowed)


@dataclass(frozen=True)
class MethodConfig:
    """Base of a method's config: frozen, JSON-able; subclasses add fields and range checks in ``__post_init__``."""

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None,
                  where: str = "[method]") -> C:
        """Validate ``d`` (unknown keys, types, then the subclass's ranges); ``defaults`` fill the rest.

        Keys of ``defaults`` that are not fields are ignored (they belong to other methods); keys of ``d`` are not.
        Every error is one :class:`SearchError` line that starts with ``where``.
        """
        if not isinstance(d, Mapping):
            raise SearchError(f"{where}: must be a table, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(set(d) - set(names))
        if extra:
            raise SearchError(f"{where}: unknown key(s) {extra}; allowed: {sorted(names)}")
        kw = {k: v for k, v in (defaults or {}).items() if k in names}
        kw.update(d)
        for k, v in kw.items():
            allowed = _allowed_types(hints[k])
            if not _type_ok(v, allowed):
                raise SearchError(f"{where}: {k}={v!r} must be {_type_name(allowed)}")
            if isinstance(v, int) and not isinstance(v, bool) and float in allowed and int not in allowed:
                kw[k] = float(v)
        try:
            return cls(**kw)
        except SearchError as e:
            raise SearchError(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``from_dict(to_dict())`` gives an equal config)."""
        return dataclasses.asdict(self)


@dataclass
class MethodContext:
    """Everything a method may use; build it once and hand it to every method (the same task for all).

    Attributes:
        model: the starting (pre-trained) weights; methods copy it, never change it.
        ref: the model's :class:`~hwloop.models.ModelRef` (the plan's base; gives the example input).
        space: the :class:`~hwloop.search.space.SearchSpace` (coupled channel groups, ranks, bit layers).
        train: training / calibration batches ``(x, y)``.
        eval_fn: ``model -> accuracy`` (higher is better), or None.
        latency: the cost source: a :class:`~hwloop.search.latency.LatencyModel` on ``space``.
        target: the budget, a fraction of the original's cost in ``latency`` (None: no budget).
        device: the device profile candidates are measured on (None: not measured).
        seed: the seed of the run (methods seed torch with it).
        ledger: receives what every phase cost (:class:`~hwloop.search.accounting.ComputeLedger`).
        base_accuracy: ``eval_fn(model)``, the reference for judging repairs (None: not judged).
        max_repair_drop: a candidate whose budget was met only by a repair and whose accuracy is more than this
            many points below ``base_accuracy`` is reported as ``missed``.
        log: called with one line per event; progress: show progress bars.
        trial: the sweep index recorded on the ledger entries (None: a single run).
    """

    model: nn.Module
    ref: ModelRef
    space: SearchSpace
    train: DataLoader[Any]
    eval_fn: Callable[[nn.Module], float] | None
    latency: LatencyModel
    target: float | None = None
    device: str | None = None
    seed: int = 0
    ledger: ComputeLedger | None = None
    base_accuracy: float | None = None
    max_repair_drop: float = 10.0
    log: Callable[[str], None] | None = None
    progress: bool = False
    trial: int | None = None

    def __post_init__(self) -> None:
        if self.target is not None and not (isinstance(self.target, (int, float)) and 0.0 < self.target <= 1.0):
            raise SearchError(f"target={self.target!r} must be a fraction of the original latency in (0, 1]")
        if not (isinstance(self.max_repair_drop, (int, float)) and self.max_repair_drop >= 0):
            raise SearchError(f"max_repair_drop={self.max_repair_drop!r} must be a number >= 0")
        if self.ledger is None:
            from hwloop.search.accounting import ComputeLedger

            self.ledger = ComputeLedger()

    def say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def example(self) -> torch.Tensor:
        return self.ref.example_input()


@dataclass(frozen=True)
class Repair:
    """One post-hoc change a method made to meet (or fill) the budget: cost-source values before and after."""

    step: str
    when: str
    before: float
    after: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge_budget(target: float | None, *, search_ratio: float | None, final_ratio: float, repaired: bool,
                 accuracy: float | None, base_accuracy: float | None, max_drop: float = 10.0) -> tuple[str, str]:
    """The verdict on a candidate's budget: ``(status, one-line reason)``, status one of :data:`BUDGET_STATUSES`.

    Args:
        target: the budget as a fraction of the original (None: ``no-target``).
        search_ratio: where the method itself ended, before any repair (None: the method has no separate end).
        final_ratio: the candidate's predicted ratio (after repairs).
        repaired: whether a repair reduced the cost.
        accuracy / base_accuracy: the candidate's and the starting model's accuracy (None: not judged).
        max_drop: points of accuracy a repaired candidate may lose against ``base_accuracy``.
    """
    if target is None:
        return "no-target", "no budget given"
    lim = target * (1 + RATIO_SLACK)
    if not final_ratio <= lim:
        return "missed", f"predicted {final_ratio:.3f}x the original, above the target {target:.3f}"
    own = final_ratio if search_ratio is None else search_ratio
    if own <= lim:
        return "met", f"the method itself ended at {own:.3f}x the original (target {target:.3f})"
    if not repaired:   # cannot happen for a consistent method; report it rather than hide it
        return "met", f"ended at {own:.3f}x before extraction, extracted at {final_ratio:.3f}x (target {target:.3f})"
    end = f"the method ended at {own / target:.3f}x the target"
    if accuracy is not None and base_accuracy is not None and base_accuracy - accuracy > max_drop:
        return "missed", (f"{end}; the repair that met it left accuracy {accuracy:.2f} "
                          f"({base_accuracy - accuracy:.2f} below the starting model, limit {max_drop:g})")
    return "met-by-repair", f"{end}; a repair moved it to {final_ratio:.3f}x the original"


@dataclass
class Candidate:
    """One compressed model a method returns (see the module docstring for the honesty fields).

    Attributes:
        setting: what produced it (``target=0.5``, ``alpha=0.3``...).
        model / plan: the compressed ``nn.Module`` and the plan that rebuilds it from the base.
        original / predicted: cost-source values of the original and of this model; ``unit`` their unit.
        predicted_ms: ``predicted`` in ms when the cost source is in ms, else None.
        measured_ms / original_measured_ms: filled by :func:`~hwloop.methods.measure.measure_candidates`.
        accuracy / accuracy_extracted: after fine-tuning / right after extraction (None without ``eval_fn``).
        target: the budget it was run for (fraction of ``original``), or None.
        search_end: the cost-source value where the method itself ended, before any repair (None: same as
            ``predicted``).
        repairs: the post-hoc changes, in order.
        status / status_reason: :func:`judge_budget`'s verdict.
        cost: the compute it took (a :class:`~hwloop.search.accounting.ComputeRecord`), or None.
        history / seconds / sizes: per-epoch log, wall time per phase, chosen sizes per layer.
        extra: method-specific JSON values (``l1l2``: ``soft_final``, the latency at the gates' continuous sizes).
    """

    setting: str
    model: nn.Module
    plan: CompressionPlan
    original: float
    predicted: float
    unit: str
    accuracy: float | None = None
    accuracy_extracted: float | None = None
    target: float | None = None
    search_end: float | None = None
    repairs: list[Repair] = field(default_factory=list)
    status: str = "no-target"
    status_reason: str = ""
    predicted_ms: float | None = None
    measured_ms: float | None = None
    original_measured_ms: float | None = None
    cost: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_ratio(self) -> float:
        return self.predicted / self.original

    @property
    def search_ratio(self) -> float:
        """Where the method itself ended, as a fraction of the original (before any repair)."""
        return (self.predicted if self.search_end is None else self.search_end) / self.original

    @property
    def measured_ratio(self) -> float | None:
        if self.measured_ms is None or not self.original_measured_ms:
            return None
        return self.measured_ms / self.original_measured_ms

    def judge(self, base_accuracy: float | None, max_drop: float = 10.0) -> None:
        """Set ``status`` / ``status_reason`` from the fields (call after accuracy and repairs are final)."""
        repaired = any(r.after < r.before * (1 - RATIO_SLACK) for r in self.repairs)
        self.status, self.status_reason = judge_budget(
            self.target, search_ratio=None if self.search_end is None else self.search_ratio,
            final_ratio=self.predicted_ratio, repaired=repaired, accuracy=self.accuracy,
            base_accuracy=base_accuracy, max_drop=max_drop)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary (no model): what a report or a table row needs."""
        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {"setting": self.setting, "plan": self.plan.to_dict(), "unit": self.unit, "original": self.original,
                "predicted": self.predicted, "predicted_ratio": self.predicted_ratio,
                "predicted_ms": num(self.predicted_ms), "measured_ms": num(self.measured_ms),
                "original_measured_ms": num(self.original_measured_ms), "measured_ratio": self.measured_ratio,
                "accuracy": self.accuracy, "accuracy_extracted": self.accuracy_extracted, "target": self.target,
                "search_end": self.search_end, "search_ratio": self.search_ratio,
                "repairs": [r.to_dict() for r in self.repairs], "status": self.status,
                "status_reason": self.status_reason,
                "cost": self.cost.to_dict() if hasattr(self.cost, "to_dict") else self.cost,
                "seconds": dict(self.seconds), "extra": dict(self.extra)}


@dataclass
class MethodResult:
    """What ``run`` returns: the method, its config, and one or more candidates."""

    method: str
    config: dict[str, Any]
    candidates: list[Candidate]

    def select(self, target: float) -> Candidate | None:
        """The most accurate candidate whose predicted ratio is within ``target`` (None if none is)."""
        ok = [c for c in self.candidates if c.predicted_ratio <= target * (1 + RATIO_SLACK)]
        return max(ok, key=lambda c: -math.inf if c.accuracy is None else c.accuracy, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": dict(self.config),
                "candidates": [c.to_dict() for c in self.candidates]}

    def save_artifacts(self, run_dir: Path) -> dict[str, str]:
        """Write what the result holds beyond its candidates into ``run_dir`` (e.g. an LCS family); returns
        name -> path relative to ``run_dir`` for the run's metrics. A plain result has none."""
        return {}


class CompressionMethod(ABC):
    """A compression method: subclass, set ``name``, ``summary`` (one line), ``config_class``, write ``run``.

    ``smoke_config`` is a config that runs on digits + the small CNN in seconds: the contract suite
    (``tests/test_methods_contract.py``) runs every registered method with it.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    smoke_config: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: MethodConfig | None = None) -> None:
        cfg = self.config_class() if config is None else config
        if not isinstance(cfg, self.config_class):
            raise SearchError(f"method {self.name!r} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.config = cfg

    def check(self, target: float | None) -> None:
        """Raise a one-line :class:`SearchError` when this config cannot run for budget ``target`` (specs call it
        when they are read, so a bad combination fails before any training)."""

    @abstractmethod
    def run(self, context: MethodContext) -> MethodResult:
        """Compress ``context.model`` for ``context.target``; every candidate judged (:meth:`Candidate.judge`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
