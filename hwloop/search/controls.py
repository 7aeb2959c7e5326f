"""The controls an honest comparison of compression methods needs (used by :mod:`hwloop.search.harness`).

Given a method's result on a task (its *measured* latency ratio on the device and the training images it used),
each control builds its own compressed model on the same search space and gets the same training:

* :func:`uniform_config` — every channel group scaled by one width multiplier; :func:`bisect_measured` finds
  the multiplier whose **measured** latency lands on the method's measured latency (measured on the device at
  every step, not predicted).
* :func:`magnitude_config` — global channel magnitude pruning: every channel of every coupled group ranked by
  Torch-Pruning's group L2 importance (normalised per group, as its global pruning does) and the weakest removed
  until the measured latency lands on the method's (:func:`bisect_measured` again).
* :func:`black_box` — random search or Optuna TPE over the same space (:func:`~hwloop.search.baselines.
  suggest_config`, samplers from :func:`~hwloop.search.optuna_search.make_sampler`): a configuration over the
  budget on the method's own cost source is rejected without training; a feasible one is fine-tuned briefly
  and scored on the **validation** split. Either a training-image budget (the same compute as the method) or
  until the best validation accuracy has not improved for ``patience`` trained trials (the plateau control).
* :func:`train_images` — fine-tuning for a number of training images (the method's total), and
  :func:`recalibrate_bn` — batch-norm statistics re-estimated without training (for methods that do not
  retrain, e.g. OBC, compared with controls that do not retrain either).

The "method with FLOPs instead of latency" control is the method itself run on the FLOPs cost source; the
harness does that.

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn"))
    >>> sorted(set(uniform_config(space, 0.5).values()))
    [0.5]
    >>> x, ratio, steps = bisect_measured(lambda m: m * m, goal=0.25, tol=0.01)   # a monotone "latency"
    >>> round(x, 2), ratio <= 0.25 * 1.01
    (0.5, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hwloop.errors import SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.space import SearchSpace

__all__ = ["CONTROLS", "BlackBoxResult", "bisect_measured", "black_box", "channel_scores", "magnitude_config",
           "recalibrate_bn", "train_images", "uniform_config"]

#: control name -> one line (the harness spec's ``[controls] run`` list takes these names)
CONTROLS: Mapping[str, str] = {
    "uniform": "every channel group scaled by one width multiplier, bisected to the method's measured latency",
    "magnitude": "global channel L2 magnitude pruning (Torch-Pruning importance), bisected to the measured latency",
    "flops": "the method itself with the FLOPs (MACs) cost source instead of latency",
    "flops-matched": "the method with the FLOPs cost source, its FLOPs target moved until its runs bracket the "
                     "method's measured latency (both runs within 3 tolerances of it) or one matches it "
                     "(<= [controls] flops_runs runs, default 3); "
                     "accuracy interpolated at it; every run's compute counted",
    "random": "random search over the space at the method's training images (trials + final fine-tune)",
    "tpe": "Optuna TPE over the space at the method's training images (trials + final fine-tune)",
    "tpe-plateau": "Optuna TPE until its best validation accuracy stops improving, then the final fine-tune",
}


def _width_dims(space: SearchSpace) -> list[Any]:
    dims = [d for d in space.dimensions() if d.name.startswith("width:")]
    if not dims:
        raise SearchError("the uniform and magnitude controls need channel groups: set [space] channels = true")
    return dims


def uniform_config(space: SearchSpace, multiplier: float) -> dict[str, float | int]:
    """Every channel group at ``multiplier`` of its width (clamped to the space's minimum keep)."""
    return {d.name: min(1.0, max(d.low, float(multiplier))) for d in _width_dims(space)}


def channel_scores(space: SearchSpace) -> dict[str, torch.Tensor]:
    """Group L2 importance of every channel of every channel group (Torch-Pruning's ``GroupMagnitudeImportance``,
    normalised by the group mean so groups compare; the same scores :func:`~hwloop.compress.extract.prune_groups_`
    keeps channels by)."""
    import torch_pruning as tp

    imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer="mean")
    graph = space.graph
    out: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        if g.kind != "channel" or f"width:{g.key}" not in {d.name for d in _width_dims(space)}:
            continue
        root = graph.roots[g.key]
        pruner = graph.dg.get_pruner_of_module(root)
        grp = graph.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            out[g.key] = imp(grp).detach().float().reshape(-1)
    return out


def magnitude_config(space: SearchSpace, keep_fraction: float, scores: Mapping[str, torch.Tensor]
                     ) -> dict[str, float | int]:
    """Keep the ``keep_fraction`` of all channels with the largest global scores (each group >= its minimum)."""
    dims = {d.name.partition(":")[2]: d for d in _width_dims(space)}
    pool = sorted(((float(s), k) for k, t in scores.items() for s in t.tolist()), reverse=True)
    total = len(pool)
    want = max(1, round(float(keep_fraction) * total))
    kept = {k: 0 for k in scores}
    for _, k in pool[:want]:
        kept[k] += 1
    cfg: dict[str, float | int] = {}
    for k, d in dims.items():
        n = max(space.min_keep(d.size), kept.get(k, d.size))
        cfg[d.name] = min(1.0, n / d.size)
    return cfg


def bisect_measured(measure: Callable[[float], float], goal: float, *, lo: float = 0.0, hi: float = 1.0,
                    steps: int = 8, tol: float = 0.02) -> tuple[float, float, list[tuple[float, float]]]:
    """The knob ``x`` in ``[lo, hi]`` whose measured ratio ``measure(x)`` lands on ``goal`` (latency grows with x).

    Bisects for at most ``steps`` measurements and stops early once a point is within ``goal·(1 ± tol)``.
    Returns ``(x, ratio, [(x, ratio) measured])``: of the points measured, the largest ratio within
    ``goal·(1 + tol)`` (the fastest model that is not slower than the method's, up to ``tol``); if every point
    was slower, the fastest one (the caller reports it as a miss).
    """
    if not goal > 0:
        raise SearchError(f"bisect goal={goal!r} must be a latency ratio > 0")
    seen: list[tuple[float, float]] = []
    a, b = float(lo), float(hi)
    for _ in range(max(1, int(steps))):
        x = (a + b) / 2
        r = float(measure(x))
        seen.append((x, r))
        if abs(r / goal - 1) <= tol:
            break
        if r > goal:
            b = x
        else:
            a = x
    ok = [(x, r) for x, r in seen if r <= goal * (1 + tol)]
    x, r = max(ok, key=lambda p: p[1]) if ok else min(seen, key=lambda p: p[1])
    return x, r, seen


def train_images(net: nn.Module, loader: Any, images: int, lr: float, *, weight_decay: float = 5e-4,
                 ledger: ComputeLedger | None = None, phase: str = "finetune") -> int:
    """Fine-tune ``net`` (SGD, cosine) for about ``images`` training images (whole batches); returns the images seen.

    Uses :func:`hwloop.search.baselines.finetune` with as many full epochs as fit and ``max_steps`` for the rest.
    """
    from hwloop.search.baselines import finetune

    images = int(images)
    if images <= 0:
        return 0
    bs = int(loader.batch_size or 1)
    steps = max(1, math.ceil(images / bs))
    epochs = max(1, math.ceil(steps / len(loader)))
    per = math.ceil(steps / epochs)
    led = ledger if ledger is not None else ComputeLedger()
    with led.phase(phase) as ph:
        seen, _ = finetune(net, loader, epochs, lr, weight_decay=weight_decay, max_steps=per)
        ph.train_images += seen
        ph.epochs += seen / max(1, len(loader.dataset))
    return seen


@torch.no_grad()
def recalibrate_bn(net: nn.Module, loader: Any, batches: int) -> int:
    """Re-estimate every batch-norm layer's running statistics from ``batches`` training batches (no weights
    change); returns the images seen. A no-op for a model without batch norm."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the batches
    net.train()
    seen = 0
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        net(x)
        seen += int(x.shape[0])
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.eval()
    return seen


@dataclass
class BlackBoxResult:
    """What :func:`black_box` found: the best feasible configuration on the validation split and every trial."""

    config: dict[str, float | int] | None
    accuracy: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    proposals: int = 0
    stopped: str = ""


def black_box(space: SearchSpace, latency: Any, target: float, train: Any, eval_val: Callable[[nn.Module], float],
              *, sampler: str, seed: int, trial_images: int, lr: float, weight_decay: float = 5e-4,
              budget_images: int | None = None, patience: int | None = None, max_trials: int = 200,
              max_proposals: int = 2000, n_startup: int = 5, ledger: ComputeLedger | None = None,
              log: Callable[[str], None] | None = None) -> BlackBoxResult:
    """Random search or TPE over ``space`` under ``target`` (a fraction of ``latency``'s original cost).

    A proposal over the budget is told to the sampler with a negative value (how far over) and costs no
    training; a feasible one is compressed, fine-tuned for ``trial_images`` and scored by ``eval_val``.
    Stops when the next trial would pass ``budget_images``, or (``patience``) when the best score has not
    improved for ``patience`` trained trials, or at ``max_trials`` trained trials / ``max_proposals`` proposals.
    """
    import optuna

    from hwloop.search.baselines import suggest_config
    from hwloop.search.optuna_search import make_sampler

    if sampler not in ("random", "tpe"):
        raise SearchError(f"black-box sampler {sampler!r} is unknown; allowed: random, tpe")
    if budget_images is None and patience is None:
        raise SearchError("black_box needs budget_images or patience")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed=seed,
                                                                          n_startup_trials=n_startup))
    led = ledger if ledger is not None else ComputeLedger()
    original = float(latency.original())
    res = BlackBoxResult(config=None, accuracy=None)
    since_best = 0
    while res.proposals < max_proposals:
        trained = sum(1 for t in res.trials if t["accuracy"] is not None)
        if trained >= max_trials:
            res.stopped = f"max_trials={max_trials}"
            break
        if budget_images is not None and res.images + trial_images > budget_images:
            res.stopped = f"training-image budget {budget_images} spent"
            break
        if patience is not None and trained and since_best >= patience:
            res.stopped = f"no improvement in {patience} trained trials"
            break
        trial = study.ask()
        res.proposals += 1
        cfg = suggest_config(trial, space)
        plan = space.plan_from_config(cfg)
        ratio = float(latency.plan_latency(plan)) / original
        if ratio > target * (1 + 1e-6):
            study.tell(trial, -100.0 * (ratio / target - 1))
            continue
        with led.phase("build"):
            net, _ = space.compress(cfg)
        seen = train_images(net, train, trial_images, lr, weight_decay=weight_decay, ledger=led, phase="trial")
        res.images += seen
        with led.phase("eval"):
            acc = float(eval_val(net))
        study.tell(trial, acc)
        res.trials.append({"number": trial.number, "ratio": ratio, "accuracy": acc, "images": res.images})
        if res.accuracy is None or acc > res.accuracy:
            res.config, res.accuracy, since_best = dict(cfg), acc, 0
        else:
            since_best += 1
        if log is not None:
            log(f"{sampler} trial {trial.number}: ratio {ratio:.3f}, val {acc:.2f} (best {res.accuracy:.2f})")
    else:
        res.stopped = f"max_proposals={max_proposals}"
    return res
