"""Search specs: one TOML file (``search/*.toml``) says model, data, device, predictor, budget, schedule.

Example spec::

    name = "digits-small-cnn"
    seed = 0
    [model]            # a built-in name or "package.module:factory"; checkpoint: safetensors weights
    name = "small_cnn"
    [data]             # task: digits | cifar10; limits take a fixed random subset
    task = "digits"
    batch_size = 64
    [device]           # measured after the search; measure = false skips it
    name = "local-cpu"
    [predictor]        # objective: auto | learned | surrogate | flops
    objective = "auto"
    [budget]           # target: fraction of the original latency (dual ascent), or a fixed lambda
    target = 0.5
    target_warmup = 0.5          # anneal the target from 1.0 over the first half of the search steps
    latency_penalty = "hinge"    # no pull below the target in force (lands on it instead of overshooting)
    prune_after_warmup = true    # then train the rest of the search at the widths extraction will use
    [space]
    bits = false
    [schedule]
    pretrain_epochs = 2
    search_epochs = 3
    finetune_epochs = 2
    [method]           # optional: a registered method (hwloop search methods) and its own keys; default l1l2
    name = "l1l2"
    fill_budget = false

Example:
    >>> from hwloop.search.spec import SearchSpec
    >>> spec = SearchSpec.from_dict({"name": "t", "model": {"name": "small_cnn"}, "data": {"task": "digits"}})
    >>> spec.schedule.search_epochs, spec.budget.target
    (3, 0.5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hwloop._toml import read_toml
from hwloop.errors import SearchError
from hwloop.methods import MethodSpec
from hwloop.search._validate import check_choice, check_int, check_number, check_table

__all__ = [
    "BudgetSection",
    "DataSection",
    "DeviceSection",
    "ModelSection",
    "PredictorSection",
    "ScheduleSection",
    "SearchSpec",
    "SpaceSection",
    "check_runnable",
    "load_spec",
]


#: what a key allows beyond its type (named in the error when the value is of the wrong type)
_HINTS = {("budget", "target"): "a fraction of the original latency in (0, 1]",
          ("budget", "lam"): "a number >= 0", ("data", "batch_size"): "an integer >= 1",
          ("space", "lowrank"): "true, false or a list of layer names"}


def _check(section: str, cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``[section]``, each checked against ``cls``'s field types (one-line SearchError)."""
    return check_table(section, cls, d, {k: h for (sec, k), h in _HINTS.items() if sec == section})


@dataclass(frozen=True)
class ModelSection:
    name: str = "small_cnn"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SearchError(f"[model] name={self.name!r} must be a non-empty model name, e.g. small_cnn")


@dataclass(frozen=True)
class DataSection:
    task: str = "digits"
    batch_size: int = 64
    train_limit: int | None = None
    val_limit: int | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        check_int("data", "batch_size", self.batch_size)
        for n in ("train_limit", "val_limit"):
            check_int("data", n, getattr(self, n), none=True)


@dataclass(frozen=True)
class DeviceSection:
    name: str = "local-cpu"
    measure: bool = True
    repeats: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SearchError(f"[device] name={self.name!r} must be a device name, e.g. local-cpu")
        check_int("device", "repeats", self.repeats, none=True)


@dataclass(frozen=True)
class PredictorSection:
    objective: str = "auto"
    path: str | None = None
    store: str | None = None
    max_grid_points: int = 65
    aggregate: str = "auto"

    def __post_init__(self) -> None:
        check_choice("predictor", "objective", self.objective, ("auto", "learned", "surrogate", "flops"))
        check_choice("predictor", "aggregate", self.aggregate, ("auto", "sum", "calibrated"))
        check_int("predictor", "max_grid_points", self.max_grid_points, 2)


@dataclass(frozen=True)
class BudgetSection:
    """``[budget]``: the latency target (or a fixed λ) and how λ follows it (see :class:`SearchConfig`)."""

    target: float | None = 0.5
    lam: float = 1.0
    dual_lr: float = 0.1
    target_warmup: float = 0.0
    target_curve: str = "cubic"
    dual_kp: float = 0.0
    latency_penalty: str = "linear"
    prune_after_warmup: bool = False

    def __post_init__(self) -> None:
        if self.target is not None and not 0 < self.target <= 1:
            raise SearchError(f"[budget] target={self.target!r} must be a fraction of the original latency in (0, 1]")
        if self.lam < 0:
            raise SearchError(f"[budget] lam={self.lam!r} must be >= 0")
        from hwloop.search.differentiable import SearchConfig

        try:   # one set of rules for the schedule fields: SearchConfig's
            SearchConfig(target=self.target, **self.schedule_kwargs())
        except SearchError as e:
            raise SearchError(f"[budget] {e}") from e

    def schedule_kwargs(self) -> dict[str, Any]:
        """The :class:`SearchConfig` fields that say how λ follows the target (everything but ``target``/``lam``)."""
        return {"dual_lr": self.dual_lr, "target_warmup": self.target_warmup, "target_curve": self.target_curve,
                "dual_kp": self.dual_kp, "latency_penalty": self.latency_penalty,
                "prune_after_warmup": self.prune_after_warmup}


@dataclass(frozen=True)
class SpaceSection:
    channels: bool = True
    lowrank: bool | list[str] = False
    bits: bool = False
    bit_levels: list[int] = field(default_factory=lambda: [2, 4, 8])
    a_bits: int | None = None
    min_keep_ratio: float = 0.05
    tile: int = 1

    def __post_init__(self) -> None:
        from hwloop.search.space import SpaceOptions

        try:  # one set of rules for the space: SpaceOptions'
            SpaceOptions(channels=self.channels, lowrank=self.lowrank if isinstance(self.lowrank, bool)
                         else tuple(self.lowrank), bits=self.bits, bit_levels=tuple(self.bit_levels),
                         a_bits=self.a_bits, min_keep_ratio=self.min_keep_ratio, tile=self.tile)
        except (SearchError, TypeError, ValueError) as e:
            raise SearchError(f"[space] {e}") from e


@dataclass(frozen=True)
class ScheduleSection:
    pretrain_epochs: int = 0
    search_epochs: int = 3
    finetune_epochs: int = 2
    lr: float = 0.05
    gate_lr: float = 0.05
    weight_decay: float = 5e-4
    max_steps: int | None = None
    keep_rule: str = "effective"
    baseline: bool = False

    def __post_init__(self) -> None:
        for n in ("pretrain_epochs", "search_epochs", "finetune_epochs"):
            check_int("schedule", n, getattr(self, n), 0)
        for n in ("lr", "gate_lr"):
            check_number("schedule", n, getattr(self, n))
        check_number("schedule", "weight_decay", self.weight_decay, inclusive=True)
        check_int("schedule", "max_steps", self.max_steps, none=True)


@dataclass(frozen=True)
class SearchSpec:
    """A whole search run (see the module docstring)."""

    name: str
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    predictor: PredictorSection = field(default_factory=PredictorSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    method: MethodSpec = field(default_factory=MethodSpec)
    seed: int = 0
    path: str | None = None

    _SECTIONS = MappingProxyType({"model": ModelSection, "data": DataSection, "device": DeviceSection,
                                  "predictor": PredictorSection, "budget": BudgetSection, "space": SpaceSection,
                                  "schedule": ScheduleSection})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> SearchSpec:
        where = path or "search spec"
        allowed = {"name", "seed", "method", *cls._SECTIONS}
        extra = set(d) - allowed
        if extra:
            raise SearchError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        if not isinstance(d.get("name"), str) or not d["name"]:
            raise SearchError(f"{where}: 'name' must be a non-empty string")
        kw: dict[str, Any] = {}
        for sec, sc in cls._SECTIONS.items():
            try:
                kw[sec] = sc(**_check(sec, sc, d.get(sec, {})))
            except TypeError as e:
                raise SearchError(f"{where}: [{sec}] {e}") from e
            except SearchError as e:
                raise SearchError(f"{where}: {e}") from e
        try:   # [method]: validated by the method's own config; [budget]/[schedule] give its defaults
            kw["method"] = MethodSpec.from_table(d.get("method", {}), defaults=method_defaults(**kw),
                                                 target=kw["budget"].target)
        except SearchError as e:
            raise SearchError(f"{where}: {e}") from e
        seed = d.get("seed", 0)
        if not isinstance(seed, int):
            raise SearchError(f"{where}: seed={seed!r} must be an int")
        return cls(name=d["name"], seed=seed, path=path, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "seed": self.seed}
        for sec in self._SECTIONS:
            d[sec] = dataclasses.asdict(getattr(self, sec))
        d["method"] = self.method.to_table()
        return d

    def method_defaults(self) -> dict[str, Any]:
        """The values ``[budget]``, ``[schedule]`` and ``[space]`` give a method's config (its own keys override)."""
        return method_defaults(budget=self.budget, schedule=self.schedule, space=self.space)


def method_defaults(*, budget: BudgetSection, schedule: ScheduleSection, space: SpaceSection,
                    **_: Any) -> dict[str, Any]:
    """The spec-wide keys a method's config may take (see :meth:`SearchSpec.method_defaults`)."""
    sch = schedule
    return {"search_epochs": sch.search_epochs, "finetune_epochs": sch.finetune_epochs, "lr": sch.lr,
            "gate_lr": sch.gate_lr, "weight_decay": sch.weight_decay, "lam": budget.lam, **budget.schedule_kwargs(),
            "keep_rule": sch.keep_rule, "tile": space.tile, "max_steps": sch.max_steps}


def check_runnable(spec: SearchSpec) -> None:
    """What a run needs before it starts, checked up front (one-line SearchError, nothing written).

    The task knows the model, the device profile exists, and the files the spec names
    (checkpoint, predictor) exist.
    """
    from hwloop.errors import HwloopError
    from hwloop.search.train import TASKS

    where = spec.path or "search spec"
    if spec.data.task not in TASKS:
        raise SearchError(f"{where}: [data] task {spec.data.task!r} is unknown; allowed: {', '.join(TASKS)}")
    if spec.model.name not in TASKS[spec.data.task]:
        raise SearchError(f"{where}: [model] name {spec.model.name!r} is not available for task "
                          f"{spec.data.task!r}; allowed: {', '.join(TASKS[spec.data.task])}")
    from hwloop.devices.profiles import load_profile

    try:
        load_profile(spec.device.name)
    except HwloopError as e:
        raise SearchError(f"{where}: [device] {e}") from e
    for what, f in (("[model] checkpoint", spec.model.checkpoint), ("[predictor] path", spec.predictor.path)):
        if f is not None and not Path(f).is_file():
            raise SearchError(f"{where}: {what} {f!r} does not exist; allowed: an existing file")


def load_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search spec TOML file."""
    p = Path(path)
    return SearchSpec.from_dict(read_toml(p, "search spec", SearchError), str(p))
