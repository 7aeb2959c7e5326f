"""The black-box baseline objective: one Optuna trial = one physically compressed, fine-tuned model.

The trial samples every decision of the shared :class:`~hwloop.search.space.SearchSpace` (the
same object the differentiable search gates: per-group channel keep ratios, ranks, bit-widths —
names and bounds from :meth:`SearchSpace.dimensions`, no second copy), builds the real smaller
model with :meth:`SearchSpace.compress`, gets its latency from the same latency model the
differentiable search uses (or measures it on the device when asked), records the latency budget
with Optuna's constraints API (``trial.set_constraint``), fine-tunes for a short budget and returns
``(accuracy %, latency ratio)``. With one objective (accuracy under the latency constraint) the
intermediate accuracy of each epoch goes to Optuna's pruner.

Objective params (JSON, stored in the study so every worker rebuilds the same objective)::

    {"spec": SearchSpec.to_dict(),   # task, model (+checkpoint), data, device, predictor, space, schedule
     "target": 0.7,                  # latency budget as a fraction of the original (constraint), or None
     "finetune_epochs": 2, "lr": 0.05, "max_steps": None,
     "latency": "predictor",         # or "measure" (on spec.device)
     "mode": "pareto",               # or "accuracy" (single objective; pruning on intermediate accuracy)
     "skip_infeasible": true}        # prune a config over budget before training it

Example:
    >>> import optuna
    >>> from hwloop.search.baselines import CompressionObjective
    >>> obj = CompressionObjective({"spec": {"name": "d", "data": {"task": "digits", "train_limit": 128}},
    ...                             "finetune_epochs": 1, "target": None})           # doctest: +SKIP
    >>> obj.suggest(optuna.trial.FixedTrial(obj.space.default_config()))            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hwloop.compress.keys import SizeKey, rank_group
from hwloop.compress.plan import CompressionPlan
from hwloop.errors import ConfigError, SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.space import SearchSpace

__all__ = [
    "LATENCY_SOURCES",
    "MODES",
    "CompressionObjective",
    "compression_objective",
    "config_from_plan",
    "finetune",
    "suggest_config",
]

LATENCY_SOURCES = ("predictor", "measure")
MODES = ("pareto", "accuracy")
_PARAM_KEYS = {"spec", "target", "finetune_epochs", "lr", "max_steps", "latency", "mode", "skip_infeasible",
               "checkpoint", "threads"}


def suggest_config(trial: Any, space: SearchSpace) -> dict[str, float | int]:
    """Ask ``trial`` for every dimension of ``space`` (ratios as floats, bit-widths as categoricals).

    Example:
        >>> import optuna
        >>> from hwloop.models import ModelRef
        >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
        >>> cfg = suggest_config(optuna.trial.FixedTrial(space.default_config()), space)
        >>> cfg == space.default_config()
        True
    """
    dims = space.dimensions()
    if not dims:
        raise SearchError("the search space is empty: enable channels, lowrank or bits in [space]")
    cfg: dict[str, float | int] = {}
    for d in dims:
        if d.kind == "ratio":
            cfg[d.name] = float(trial.suggest_float(d.name, d.low, d.high))
        else:
            cfg[d.name] = int(trial.suggest_categorical(d.name, list(d.choices)))
    return cfg


def config_from_plan(space: SearchSpace, plan: CompressionPlan) -> dict[str, float | int]:
    """The space configuration that reproduces ``plan`` (its inverse of :meth:`SearchSpace.plan_from_config`).

    Used to check that a plan from the differentiable search and an Optuna trial with the same
    configuration build the same model.
    """
    sizes, dense = space.sizes_of_plan(plan)
    cfg: dict[str, float | int] = {}
    for d in space.dimensions():
        kind, _, target = d.name.partition(":")
        if kind == "bits":
            cfg[d.name] = int(sizes[SizeKey.bits(target)])
        elif kind == "rank":
            cfg[d.name] = 1.0 if target in dense else sizes[SizeKey.channels(rank_group(target))] / d.size
        else:
            cfg[d.name] = sizes[SizeKey.channels(target)] / d.size
    return cfg


def finetune(net: nn.Module, loader: Any, epochs: int, lr: float, *, w_bits: Mapping[str, int] | None = None,
             weight_decay: float = 5e-4, momentum: float = 0.9, max_steps: int | None = None,
             on_epoch: Callable[[int], None] | None = None) -> tuple[int, float]:
    """SGD + cosine fine-tuning (weights fake-quantized to ``w_bits``); returns (images, epochs) processed.

    :func:`hwloop.search.train.train_epochs` (the one training loop) with this older return shape;
    ``on_epoch(epoch)`` runs after each epoch (e.g. to report intermediate accuracy; it may raise
    ``optuna.TrialPruned``).
    """
    from hwloop.search.train import train_epochs

    r = train_epochs(net, loader, epochs, lr, momentum=momentum, weight_decay=weight_decay, max_steps=max_steps,
                     w_bits=w_bits, on_epoch=on_epoch)
    return int(r["images"]), float(r["epochs"])


class CompressionObjective:
    """The Optuna objective over the shared search space (see the module docstring).

    Building it sets up the task, the (pre-trained) base model, the space and the latency model
    once per worker process; calling it runs one trial.

    Args:
        params: the objective params (module docstring).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        from hwloop.search.latency import select_latency_model
        from hwloop.search.pipeline import space_options
        from hwloop.search.spec import SearchSpec
        from hwloop.search.train import make_task

        extra = set(params) - _PARAM_KEYS
        if extra:
            raise ConfigError(f"objective params have unknown key(s) {sorted(extra)}; allowed: {sorted(_PARAM_KEYS)}")
        self.params = dict(params)
        self.spec = SearchSpec.from_dict(params.get("spec", {"name": "optuna"}))
        sch = self.spec.schedule
        self.target: float | None = params.get("target", self.spec.budget.target)
        if self.target is not None and not 0 < float(self.target) <= 1:
            raise ConfigError(f"target={self.target!r} must be a fraction of the original latency in (0, 1]")
        self.finetune_epochs = int(params.get("finetune_epochs", sch.finetune_epochs))
        self.lr = float(params.get("lr", sch.lr))
        self.max_steps = params.get("max_steps", sch.max_steps)
        self.latency_source = str(params.get("latency", "predictor"))
        if self.latency_source not in LATENCY_SOURCES:
            raise ConfigError(f"latency source {self.latency_source!r} is unknown; allowed: "
                              f"{', '.join(LATENCY_SOURCES)}")
        self.mode = str(params.get("mode", "pareto"))
        if self.mode not in MODES:
            raise ConfigError(f"objective mode {self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        if self.mode == "accuracy" and self.target is None:
            raise ConfigError("objective mode 'accuracy' needs a latency target (the constraint)")
        self.skip_infeasible = bool(params.get("skip_infeasible", True))
        threads = params.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.task = make_task(self.spec.data.task, self.spec.model.name, batch_size=self.spec.data.batch_size,
                              train_limit=self.spec.data.train_limit, val_limit=self.spec.data.val_limit,
                              seed=self.spec.seed, model_kwargs=dict(self.spec.model.kwargs),
                              data_root=self.spec.data.root)
        torch.manual_seed(self.spec.seed)
        base = self.task.ref.build()
        ckpt = params.get("checkpoint") or self.spec.model.checkpoint
        if ckpt:
            from safetensors.torch import load_file

            try:
                base.load_state_dict(load_file(str(ckpt)))
            except Exception as e:  # missing file, wrong keys or shapes
                raise SearchError(f"cannot load checkpoint {ckpt!r}: {str(e).splitlines()[0]}") from e
        base.eval()
        self.space = SearchSpace.from_ref(self.task.ref, space_options(self.spec), model=base)
        if not self.space.dimensions():
            raise SearchError("the search space is empty: enable channels, lowrank or bits in [space]")
        self.latency = select_latency_model(self.space, predictor_path=self.spec.predictor.path,
                                            store=self.spec.predictor.store, device=self.spec.device.name,
                                            objective=self.spec.predictor.objective,
                                            max_grid_points=self.spec.predictor.max_grid_points,
                                            aggregate=self.spec.predictor.aggregate)
        self.original = float(self.latency.original())
        self._measured_original: float | None = None

    @property
    def directions(self) -> tuple[str, ...]:
        return ("maximize", "minimize") if self.mode == "pareto" else ("maximize",)

    def suggest(self, trial: Any) -> tuple[nn.Module, CompressionPlan, dict[str, float | int]]:
        """Sample a configuration and build its physically compressed model."""
        cfg = suggest_config(trial, self.space)
        net, plan = self.space.compress(cfg)
        return net, plan, cfg

    def measured_original_ms(self, ledger: ComputeLedger | None = None) -> float:
        """The uncompressed model's latency on the spec's device (measured once per process)."""
        if self._measured_original is None:
            self._measured_original = self._measure(copy.deepcopy(self.space.model),
                                                    CompressionPlan(base=self.task.ref.to_dict()), ledger, None)
        return self._measured_original

    def _measure(self, net: nn.Module, plan: CompressionPlan, ledger: ComputeLedger | None, trial: int | None
                 ) -> float:
        from hwloop.search.report import measure_compressed

        t0 = time.perf_counter()
        m = measure_compressed(self.spec.device.name, net, plan, example=self.task.ref.example_input())
        if ledger is not None:
            ledger.add("measure", trial=trial, wall_s=time.perf_counter() - t0, device_s=time.perf_counter() - t0,
                       device_measurements=int(m["n_requests"]))
        return float(m["latency_ms"])

    def __call__(self, trial: Any, ledger: ComputeLedger) -> Sequence[float]:
        import optuna

        n = int(trial.number)
        with ledger.phase("build", trial=n):
            net, plan, _ = self.suggest(trial)
        predicted = float(self.latency.plan_latency(plan))
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("predicted", predicted)
        trial.set_user_attr("predicted_ratio", predicted / self.original)
        trial.set_user_attr("latency_unit", self.latency.unit)
        ratio = predicted / self.original
        if self.latency_source == "measure":
            ms = self._measure(net, plan, ledger, n)
            ratio = ms / self.measured_original_ms(ledger)
            trial.set_user_attr("measured_ms", ms)
        trial.set_user_attr("latency_ratio", ratio)
        if self.target is not None:
            trial.set_constraint("latency", ratio - float(self.target))
            if self.skip_infeasible and ratio > float(self.target):
                raise optuna.TrialPruned(f"latency ratio {ratio:.3f} is over the budget {self.target}")

        def report(ep: int) -> None:
            if self.mode != "accuracy":
                return
            with ledger.phase("eval", trial=n):
                acc_ep = float(self.task.eval_fn(net))
            trial.report(acc_ep, ep)
            if trial.should_prune():
                raise optuna.TrialPruned(f"accuracy {acc_ep:.2f} after epoch {ep + 1}")

        with ledger.phase("finetune", trial=n) as ph:
            ph.train_images, ph.epochs = finetune(net, self.task.train, self.finetune_epochs, self.lr,
                                                  w_bits=plan.w_bits, weight_decay=self.spec.schedule.weight_decay,
                                                  max_steps=self.max_steps, on_epoch=report)
        with ledger.phase("eval", trial=n):
            acc = float(self.task.eval_fn(net))
        trial.set_user_attr("accuracy", acc)
        return [acc, ratio] if self.mode == "pareto" else [acc]


def compression_objective(params: Mapping[str, Any]) -> CompressionObjective:
    """Factory registered as the ``compression`` objective of :mod:`hwloop.search.optuna_search`."""
    return CompressionObjective(params)
