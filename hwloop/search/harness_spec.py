"""The evidence-harness spec (``hwloop bench methods SPEC``): methods and controls on one task, devices, targets,
seeds and one training schedule. Every problem is one :class:`~hwloop.errors.SearchError` line (exit 2 on the CLI).

Example spec::

    name = "bench-methods-digits"
    devices = ["asic-tpu32"]          # device profiles; every latency is measured on each
    targets = [0.5, 0.7]              # fractions of the dense model's latency (the methods' budget)
    seeds = [0, 1]
    [task]                            # the model and data every entry shares
    task = "digits"                   # digits | cifar10
    model = "small_cnn"
    checkpoint = "w.safetensors"      # or pretrain_epochs = 3 (pre-trained once, kept in the output folder)
    holdout = 300                     # training images held out as the validation split (all choices);
                                      # the task's test images give only the final numbers
    [schedule]                        # the compute every method gets (its own keys may override)
    search_epochs = 1
    finetune_epochs = 1
    lr = 0.01
    [cost]                            # the cost source the methods search with
    objective = "learned"             # auto | learned | surrogate
    predictors = { asic-tpu32 = "measurements/asic-tpu32/predictor.json" }
    [[methods]]                       # a registered method (hwloop search methods) and its own keys
    name = "l1l2"
    [controls]
    run = ["uniform", "magnitude", "flops", "random", "tpe", "tpe-plateau"]

Example:
    >>> spec = HarnessSpec.from_dict({"name": "h", "devices": ["asic-tpu32"], "targets": [0.5], "seeds": [0],
    ...     "task": {"task": "digits", "holdout": 200, "pretrain_epochs": 1}, "methods": [{"name": "l1l2"}]})
    >>> [e.label for e in spec.methods], spec.controls.run[:2]
    (['l1l2'], ('uniform', 'magnitude'))
    >>> HarnessSpec.from_dict({"name": "h", "targets": [1.5], "methods": [{"name": "l1l2"}]})
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: harness spec: targets=[1.5] must be fractions of the dense model's latency in (0, 1]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwloop._toml import fits_type, read_toml
from hwloop.errors import SearchError
from hwloop.search._validate import check_choice, check_int, check_number, check_table
from hwloop.search.controls import CONTROLS
from hwloop.search.spec import SpaceSection

__all__ = ["ControlsSection", "CostSection", "HarnessSpec", "MethodEntry", "ScheduleSection", "TaskSection",
           "load_harness_spec"]


def _table(section: str, cls: type, d: Any) -> Any:
    """``cls`` built from the checked table ``[section]`` (lists become tuples: the sections are frozen)."""
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in check_table(section, cls, d).items()})


@dataclass(frozen=True)
class TaskSection:
    """``[task]``: the built-in task and model, the starting weights and the data splits."""

    task: str = "digits"
    model: str = "small_cnn"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pretrain_epochs: int = 0
    batch_size: int = 64
    holdout: int = 0
    split_seed: int = 0
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        from hwloop.search.train import TASKS

        if self.task not in TASKS:
            raise SearchError(f"[task] task={self.task!r} is unknown; allowed: {', '.join(TASKS)}")
        if self.model not in TASKS[self.task]:
            raise SearchError(f"[task] model={self.model!r} is not available for task {self.task!r}; "
                              f"allowed: {', '.join(TASKS[self.task])}")
        check_int("task", "pretrain_epochs", self.pretrain_epochs, 0)
        check_int("task", "batch_size", self.batch_size)
        check_int("task", "split_seed", self.split_seed, 0)
        check_int("task", "holdout", self.holdout, why=": the training images held out as the validation split "
                  "every choice is made on (the test set gives only final numbers)")
        for n in ("train_limit", "val_limit", "test_limit"):
            check_int("task", n, getattr(self, n), 1, none=True)
        if self.checkpoint is None and self.pretrain_epochs == 0:
            raise SearchError("[task] needs checkpoint = \"FILE.safetensors\" or pretrain_epochs >= 1 "
                              "(the methods compress a trained model)")


@dataclass(frozen=True)
class ScheduleSection:
    """``[schedule]``: the training every method gets (its ``search_epochs`` etc.; a method's own keys win)."""

    search_epochs: int = 1
    finetune_epochs: int = 1
    lr: float = 0.01
    gate_lr: float = 0.05
    weight_decay: float = 5e-4
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_int("schedule", "search_epochs", self.search_epochs, 0)
        check_int("schedule", "finetune_epochs", self.finetune_epochs, 0)
        check_int("schedule", "max_steps", self.max_steps, 1, none=True)
        for n in ("lr", "gate_lr"):
            check_number("schedule", n, getattr(self, n))
        check_number("schedule", "weight_decay", self.weight_decay, inclusive=True)

    def method_defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CostSection:
    """``[cost]``: the cost source the methods search with (``learned``: a predictor file per device)."""

    objective: str = "auto"
    predictors: Mapping[str, str] = field(default_factory=dict)
    max_grid_points: int = 65
    aggregate: str = "auto"

    def __post_init__(self) -> None:
        check_choice("cost", "objective", self.objective, ("auto", "learned", "surrogate"),
                     " (the FLOPs source is the 'flops' control)")
        check_choice("cost", "aggregate", self.aggregate, ("auto", "sum", "calibrated"))
        for k, v in self.predictors.items():
            if not isinstance(v, str) or not v:
                raise SearchError(f"[cost] predictors.{k}={v!r} must be a predictor file path")
        check_int("cost", "max_grid_points", self.max_grid_points, 2)


@dataclass(frozen=True)
class ControlsSection:
    """``[controls]``: which controls run, against which method, and the knobs of each (see
    :mod:`hwloop.search.controls`)."""

    run: tuple[str, ...] = tuple(c for c in CONTROLS if c != "flops-matched")   # opt-in: up to 3 method runs
    against: tuple[str, ...] = ()
    tolerance: float = 0.03
    bisect_steps: int = 8
    trial_fraction: float = 0.1
    final_share: float = 0.5
    patience: int = 8
    max_trials: int = 100
    max_proposals: int = 2000
    n_startup: int = 5
    bn_batches: int = 0
    flops_runs: int = 3     # flops-matched: at most this many method runs (not in the fingerprint: each cell records it)

    def __post_init__(self) -> None:
        bad = [c for c in self.run if c not in CONTROLS]
        if bad:
            raise SearchError(f"[controls] run has unknown control(s) {bad}; allowed: {', '.join(CONTROLS)}")
        if len(set(self.run)) != len(self.run):
            raise SearchError(f"[controls] run={list(self.run)} names a control twice")
        if not 0 < self.tolerance < 1:
            raise SearchError(f"[controls] tolerance={self.tolerance!r} must be in (0, 1)")
        if not 0 < self.trial_fraction <= 10:
            raise SearchError(f"[controls] trial_fraction={self.trial_fraction!r} must be in (0, 10] epochs")
        if not 0 < self.final_share < 1:
            raise SearchError(f"[controls] final_share={self.final_share!r} must be in (0, 1)")
        for n in ("bisect_steps", "patience", "max_trials", "max_proposals", "n_startup"):
            check_int("controls", n, getattr(self, n))
        check_int("controls", "bn_batches", self.bn_batches, 0)
        v = self.flops_runs
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 20:
            raise SearchError(f"[controls] flops_runs={v!r} must be an integer in [1, 20] (flops-matched's run cap)")


@dataclass(frozen=True)
class MethodEntry:
    """One ``[[methods]]`` table: a method name, the label its rows carry, and its own keys."""

    name: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HarnessSpec:
    """A whole harness run (see the module docstring)."""

    name: str
    devices: tuple[str, ...]
    targets: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[MethodEntry, ...]
    task: TaskSection = field(default_factory=TaskSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    cost: CostSection = field(default_factory=CostSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    controls: ControlsSection = field(default_factory=ControlsSection)
    path: str | None = None

    _TOP = ("name", "devices", "targets", "seeds", "methods", "task", "schedule", "cost", "space", "controls")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | None = None) -> HarnessSpec:
        where = path or "harness spec"
        try:
            return cls._from_dict(d, path)
        except SearchError as e:
            raise SearchError(f"{where}: {e}") from e
        except TypeError as e:   # a section built with a bad value type the checks above did not catch
            raise SearchError(f"{where}: {str(e).splitlines()[0]}") from e

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], path: str | None) -> HarnessSpec:
        extra = sorted(set(d) - set(cls._TOP))
        if extra:
            raise SearchError(f"unknown key(s) {extra}; allowed: {sorted(cls._TOP)}")
        name = d.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise SearchError(f"name={name!r} must be a non-empty string without '/'")
        devices = d.get("devices", ["asic-tpu32"])
        if not fits_type(devices, list[str]) or not devices or len(set(devices)) != len(devices):
            raise SearchError(f"devices={devices!r} must be a non-empty list of distinct device profile names")
        targets = d.get("targets", [0.5])
        if not fits_type(targets, list[float]) or not targets or not all(0 < t <= 1 for t in targets):
            raise SearchError(f"targets={targets!r} must be fractions of the dense model's latency in (0, 1]")
        seeds = d.get("seeds", [0])
        if not fits_type(seeds, list[int]) or not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise SearchError(f"seeds={seeds!r} must be a non-empty list of distinct integers >= 0")
        task = _table("task", TaskSection, d.get("task", {}))
        schedule = _table("schedule", ScheduleSection, d.get("schedule", {}))
        cost = _table("cost", CostSection, d.get("cost", {}))
        space = _table("space", SpaceSection, d.get("space", {}))
        methods = cls._methods(d.get("methods"), schedule, [float(t) for t in targets])
        controls = _table("controls", ControlsSection, d.get("controls", {}))
        labels = [m.label for m in methods]
        bad = [a for a in controls.against if a not in labels]
        if bad:
            raise SearchError(f"[controls] against={list(controls.against)} names {bad}, not a method label; "
                              f"allowed: {labels}")
        if not controls.against:
            controls = dataclasses.replace(controls, against=(labels[0],))
        taken = set(labels) & set(CONTROLS)
        if taken:
            raise SearchError(f"[[methods]] label(s) {sorted(taken)} are control names; pick another label")
        return cls(name=name, devices=tuple(devices), targets=tuple(float(t) for t in targets), seeds=tuple(seeds),
                   methods=methods, task=task, schedule=schedule, cost=cost, space=space, controls=controls,
                   path=path)

    @staticmethod
    def _methods(raw: Any, schedule: ScheduleSection, targets: list[float]) -> tuple[MethodEntry, ...]:
        from hwloop.methods import make_method

        if not isinstance(raw, list) or not raw or not all(isinstance(m, Mapping) for m in raw):
            raise SearchError("methods must be a non-empty list of [[methods]] tables, each with name = \"<method>\"")
        out: list[MethodEntry] = []
        for m in raw:
            name = m.get("name")
            label = m.get("label", name)
            if not isinstance(label, str) or not label or "/" in label:
                raise SearchError(f"[[methods]] label={label!r} must be a non-empty string without '/'")
            opts = {k: v for k, v in m.items() if k not in ("name", "label")}
            method = make_method(name, opts, defaults=schedule.method_defaults(), allow_import=False)
            for t in targets:
                method.check(t)
            out.append(MethodEntry(name=name, label=label, options=opts))
        labels = [e.label for e in out]
        if len(set(labels)) != len(labels):
            raise SearchError(f"[[methods]] labels {labels} repeat; give each entry its own label = \"...\"")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON of everything that decides the results (the output folder keeps it to refuse a changed spec)."""
        return {"name": self.name, "devices": list(self.devices), "targets": list(self.targets),
                "seeds": list(self.seeds),
                "methods": [{"name": m.name, "label": m.label, **dict(m.options)} for m in self.methods],
                "task": dataclasses.asdict(self.task), "schedule": dataclasses.asdict(self.schedule),
                "cost": dataclasses.asdict(self.cost), "space": dataclasses.asdict(self.space),
                "controls": dataclasses.asdict(self.controls)}

    def fingerprint(self, *, cell: Mapping[str, Any] | None = None) -> str:
        """A short hash of what decides a cell's result (devices, targets and seeds may grow between runs)."""
        d = self.to_dict()
        for k in ("name", "devices", "targets", "seeds"):
            d.pop(k)
        d["methods"] = sorted(d["methods"], key=lambda m: m["label"])
        d["controls"].pop("run")
        d["controls"].pop("flops_runs")   # how many runs flops-matched may take: recorded in its cells (flops_max_runs)
        blob = json.dumps({**d, **dict(cell or {})}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_files(self) -> None:
        """The device profiles, checkpoint and predictor files exist (one line otherwise)."""
        from hwloop.devices.profiles import load_profile
        from hwloop.errors import HwloopError

        where = self.path or "harness spec"
        for dev in self.devices:
            try:
                load_profile(dev)
            except HwloopError as e:
                raise SearchError(f"{where}: devices: {e}") from e
        files = [("[task] checkpoint", self.task.checkpoint)]
        files += [(f"[cost] predictors.{k}", v) for k, v in self.cost.predictors.items()]
        for what, f in files:
            if f is not None and not Path(f).is_file():
                raise SearchError(f"{where}: {what} {f!r} does not exist; allowed: an existing file")
        if self.cost.objective == "learned":
            missing = [d for d in self.devices if d not in self.cost.predictors]
            if missing:
                raise SearchError(f"{where}: [cost] objective='learned' needs predictors for {missing}; "
                                  "e.g. predictors = { asic-tpu32 = \"measurements/asic-tpu32/predictor.json\" }")


def load_harness_spec(path: str | Path) -> HarnessSpec:
    """Read and validate a harness spec TOML file (files it names are checked by :meth:`HarnessSpec.check_files`)."""
    p = Path(path)
    return HarnessSpec.from_dict(read_toml(p, "harness spec", SearchError), str(p))
