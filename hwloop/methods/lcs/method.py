"""``lcs``: Learning Compressible Subspaces behind the method contract; the result is a family.

One training run (from scratch, as in the paper) of a line of networks on the context's architecture with
instance norm (``norm="in"``, width) or group norm (``"gn"``, top-k and bits); then one
:class:`~hwloop.methods.base.Candidate` per α on an evenly spaced grid, each a real member
(:meth:`~hwloop.methods.lcs.family.LcsFamily.at`) with its plan, its predicted cost from the context's latency
model, its accuracy, and the budget verdict against the context's target (members above it are ``missed``: a
family spans the whole range, ``select`` picks the one that fits; the first candidate is that pick for the context's
target, the rest follow in α order). The family itself rides on the result
(:class:`LcsResult`: ``family``, ``select_ms(budget_ms, device)``). ``finetune_epochs`` > 0 fine-tunes every
member alone after extraction (not part of LCS, which deploys members as trained; off by default).

Example:
    >>> from hwloop.methods import make_method
    >>> m = make_method("lcs", {"epochs": 1, "grid": 3})
    >>> m.config.mode, m.config.norm, m.config.lo
    ('width', 'in', None)
    >>> make_method("lcs", {"mode": "width", "norm": "gn"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hwloop.errors.SearchError: [method] lcs: mode 'width' needs norm='in' ...
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hwloop.errors import ConfigError, SearchError
from hwloop.methods.base import Candidate, CompressionMethod, MethodConfig, MethodContext, MethodResult
from hwloop.methods.lcs.family import LcsFamily, Selection, default_grid
from hwloop.methods.lcs.lines import MODES

__all__ = ["LcsConfig", "LcsMethod", "LcsResult"]


@dataclass(frozen=True)
class LcsConfig(MethodConfig):
    """The ``lcs`` method's keys.

    Attributes:
        mode: ``width`` (structured), ``topk`` (unstructured) or ``bits`` (3..8-bit weights and activations).
        norm: the family's norm layers: ``in`` (instance norm; width) or ``gn`` (group norm; topk, bits); opt-in
            ``frozen_bn`` (width, with ``init = "context"``): the context's batch norms with their running statistics
            frozen for every α and γ/β on the line — a per-channel affine at each α, nothing re-estimated on the
            device, and every member an ordinary batch-norm model of the context's architecture (docs/lcs.md).
        clip_grad: clip each training step's gradient norm to this (0: off; opt-in, for ``frozen_bn``).
        train_stats: ``frozen_bn`` only: ``frozen`` (default: the checkpoint's statistics in training too) or, opt-in,
            ``batch``: train every α with its batch's statistics, then store a per-α statistics table with the family
            (``calib_batches`` training batches at each of the ``grid`` α, interpolated between them; nothing is
            re-estimated on the device; :meth:`LcsFamily.calibrate_statistics`).
        calib_batches: batches per grid α for that table.
        sort_channels: ``width`` with ``init = "context"``: order each channel group of the start by magnitude
            before training (function-preserving), so the fixed prefix order keeps the important channels.
        fold_start: ``frozen_bn`` only: before training, fold the width-``lo`` member's batch statistics on this many
            training batches into the α = 0 endpoint's γ/β (:meth:`LcsFamily.fold_statistics`; 0: off).
        distill: ``width`` only, opt-in: in-place distillation (Yu & Huang 2019, not LCS's): each batch's α = 1
            member is trained on the labels first and members with α < 1 on ``(1 − distill)·CE + distill·KL`` to its
            detached softmax (:func:`~hwloop.methods.lcs.train.distill_loss`); 0 (default): cross-entropy at every α.
        epochs / lr / momentum / weight_decay / max_steps: the training schedule (cosine LR).
        beta / beta_norms: weight of the cos² endpoint regulariser, and whether norm weights are in it.
        lo / hi: the compression range over α ∈ [0, 1]: width factor (default 0.25..1) or kept fraction (0.05..1).
        bits_lo / bits_hi: the bit range of ``bits``.
        n_samples: α values per batch in width mode (sandwich rule).
        endpoint_prob: top-k's chance of sampling an endpoint.
        warmup: top-k's share of training with the kept fraction annealed from dense.
        line_convs: convs/linears on the line too (False: shared weights, only norms on the line). Default: False
            for ``width`` (the reference code's structured setting; on digits it gave a monotone family, lines a dip
            at width 0.5, docs/lcs.md), True for ``topk`` and ``bits``.
        grid: candidates at ``grid`` evenly spaced α in [0, 1].
        finetune_epochs: fine-tune each member alone after extraction (0: LCS's own setting).
        init: ``context`` (default): start from the context's pre-trained weights (conv/linear weights and the
            norm's γ/β; batch-norm statistics dropped); ``scratch``: the architecture's fresh initialisation, as in
            the paper. On CIFAR-10 an instance-norm ResNet-20 from scratch stayed at chance for 50–100 SGD steps
            (docs/lcs.md, "CIFAR-10 ResNet-20").
    """

    mode: str = "width"
    norm: str = "in"
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_steps: int | None = None
    beta: float = 1.0
    beta_norms: bool = False
    lo: float | None = None
    hi: float = 1.0
    bits_lo: int = 3
    bits_hi: int = 8
    n_samples: int = 4
    endpoint_prob: float = 0.5
    warmup: float = 0.5
    line_convs: bool | None = None
    grid: int = 7
    finetune_epochs: int = 0
    init: str = "context"
    fold_start: int = 0
    clip_grad: float = 0.0
    train_stats: str = "frozen"
    calib_batches: int = 16
    sort_channels: bool = False
    distill: float = 0.0

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> SearchError:
            return SearchError(f"{key}={getattr(self, key)!r} must be {allowed}")

        if self.mode not in MODES:
            raise SearchError(f"mode={self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        if self.norm not in ("in", "gn", "frozen_bn"):
            raise SearchError(f"norm={self.norm!r} is unknown; allowed: in, gn, frozen_bn (batch norm statistics "
                              "re-estimated per alpha are not allowed)")
        if self.mode == "width" and self.norm == "gn":
            raise SearchError("mode 'width' needs norm='in' or 'frozen_bn' (group norm's groups do not follow a "
                              "sliced channel count)")
        if self.norm == "frozen_bn" and self.mode != "width":
            raise SearchError(f"norm='frozen_bn' is for mode 'width' (mode={self.mode!r} needs norm='gn')")
        if not (math.isfinite(self.clip_grad) and self.clip_grad >= 0):
            raise bad("clip_grad", "a number >= 0 (0: off)")
        if self.fold_start < 0 or (self.fold_start and self.norm != "frozen_bn"):
            raise bad("fold_start", "an integer >= 0, and > 0 only with norm='frozen_bn'")
        if self.train_stats not in ("frozen", "batch") or (self.train_stats == "batch" and self.norm != "frozen_bn"):
            raise bad("train_stats", "'frozen' or 'batch', and 'batch' only with norm='frozen_bn'")
        if self.train_stats == "batch" and self.fold_start:
            raise bad("fold_start", "0 with train_stats='batch' (the table replaces the fold)")
        if isinstance(self.calib_batches, bool) or not isinstance(self.calib_batches, int) or self.calib_batches < 1:
            raise bad("calib_batches", "an integer >= 1")
        if not isinstance(self.sort_channels, bool):
            raise bad("sort_channels", "true or false")
        if self.sort_channels and (self.mode != "width" or self.init != "context" or self.norm != "frozen_bn"):
            raise bad("sort_channels", "false unless mode='width', init='context' and norm='frozen_bn' (the sort "
                      "permutes batch-norm channels)")
        if (isinstance(self.distill, bool) or not isinstance(self.distill, (int, float))
                or not (math.isfinite(self.distill) and 0 <= self.distill <= 1)):
            raise bad("distill", "a number in [0, 1] (0: off)")
        if self.distill > 0 and self.mode != "width":
            raise bad("distill", "0 unless mode='width' (in-place distillation from the widest member)")
        if self.norm == "frozen_bn" and self.init != "context":
            raise SearchError("norm='frozen_bn' needs init='context' (the statistics are frozen at the context's "
                              "trained batch norms)")
        for k in ("epochs", "finetune_epochs"):
            if getattr(self, k) < 0:
                raise bad(k, "an integer >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a number > 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a number >= 0")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise bad("beta", "a number >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "an integer >= 1 or absent")
        if not 0 < self.hi <= 1:
            raise bad("hi", "in (0, 1]")
        if self.lo is not None and not 0 < self.lo <= self.hi:
            raise bad("lo", f"in (0, hi={self.hi}]")
        if not 1 <= self.bits_lo <= self.bits_hi <= 16:
            raise SearchError(f"bits_lo={self.bits_lo}, bits_hi={self.bits_hi} must satisfy 1 <= bits_lo <= "
                              "bits_hi <= 16")
        if self.n_samples < 1:
            raise bad("n_samples", "an integer >= 1")
        if not 0 <= self.endpoint_prob <= 1:
            raise bad("endpoint_prob", "in [0, 1]")
        if not 0 <= self.warmup < 1:
            raise bad("warmup", "in [0, 1)")
        if self.init not in ("context", "scratch"):
            raise SearchError(f"init={self.init!r} is unknown; allowed: context, scratch")
        if not 2 <= self.grid <= 101:
            raise bad("grid", "an integer in [2, 101]")


@dataclass
class LcsResult(MethodResult):
    """A :class:`MethodResult` whose candidates are one family's members; ``family`` is the family."""

    family: LcsFamily | None = None

    def save_artifacts(self, run_dir: Path) -> dict[str, str]:
        """The family (``run_dir/family``: ``family.json`` + ``endpoints.safetensors``, :meth:`LcsFamily.save`), so a
        run folder of ``hwloop search run`` holds every member, not only the pick."""
        if self.family is None:
            return {}
        self.family.save(Path(run_dir) / "family")
        return {"family": "family"}

    def select_ms(self, budget_ms: float, device: str) -> Selection:
        """The family's :meth:`~hwloop.methods.lcs.family.LcsFamily.select` (its α → latency table on ``device``)."""
        if self.family is None:
            raise SearchError("this result carries no family")
        return self.family.select(budget_ms, device)


def family_ref(context: MethodContext, norm: str) -> Any:
    """The context's architecture with ``norm`` layers (a one-line SearchError when it has no norm option)."""
    from hwloop.models import ModelRef

    r = context.ref
    ref = ModelRef(r.name, {**dict(r.kwargs), "norm": norm}, input_shape=r.input_shape, batch=r.batch, dtype=r.dtype)
    try:
        ref.build()
    except (ConfigError, TypeError) as e:
        raise SearchError(f"[method] lcs: model {r.label} cannot be built with norm={norm!r} ({e}); "
                          "allowed: small_cnn, resnet20, resnet56") from e
    return ref


def _sizes(space: Any, sizes: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per decision, the chosen and original size (the run report's layer-size chart)."""
    full = space.full_sizes()
    return {k: {"chosen": float(v), "original": float(full.get(k, v))} for k, v in sizes.items()}


class LcsMethod(CompressionMethod):
    """Learning Compressible Subspaces (see the module docstring)."""

    name: ClassVar[str] = "lcs"
    summary: ClassVar[str] = ("one trained line of networks ω(α) (width, top-k or bits), a member per α picked at "
                              "run time for the latency budget (Nunez et al., LCS)")
    config_class: ClassVar[type[MethodConfig]] = LcsConfig
    smoke_config: ClassVar[dict[str, Any]] = {"epochs": 1, "max_steps": 4, "grid": 3, "hi": 0.75, "lr": 0.05}

    def run(self, context: MethodContext) -> LcsResult:
        import torch

        from hwloop.compress.plan import CompressionPlan
        from hwloop.compress.sparsity import sparsity_kept
        from hwloop.methods.lcs.train import train_lines
        from hwloop.search.accounting import ComputeRecord
        from hwloop.search.train import train_epochs

        cfg = self.config
        assert isinstance(cfg, LcsConfig)
        ledger = context.ledger
        assert ledger is not None
        n0 = len(ledger)
        ref = family_ref(context, "bn" if cfg.norm == "frozen_bn" else cfg.norm)
        torch.manual_seed(context.seed)
        line_convs = cfg.mode != "width" if cfg.line_convs is None else cfg.line_convs
        init = context.model.state_dict() if cfg.init == "context" else None
        fam = LcsFamily.create(ref, cfg.mode, lo=cfg.lo, hi=cfg.hi, line_convs=line_convs, init=init,
                               frozen_bn=cfg.norm == "frozen_bn", sort_channels=cfg.sort_channels,
                               train_stats=cfg.train_stats)
        if cfg.fold_start:
            moved = fam.fold_statistics(context.train, batches=cfg.fold_start)
            context.say(f"lcs: folded the narrowest member's statistics into alpha=0: {moved}")
        fam.state.bits_lo, fam.state.bits_hi = cfg.bits_lo, cfg.bits_hi
        t0 = time.perf_counter()
        h = train_lines(fam.net, fam.state, context.train, epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay, beta=cfg.beta, beta_norms=cfg.beta_norms,
                        n_samples=cfg.n_samples, endpoint_prob=cfg.endpoint_prob, warmup=cfg.warmup,
                        seed=context.seed, max_steps=cfg.max_steps, progress=context.progress,
                        clip_grad=cfg.clip_grad, distill=cfg.distill)
        ledger.add("train", trial=context.trial, wall_s=time.perf_counter() - t0,
                   train_images=int(h["train_image_passes"]), epochs=float(cfg.epochs))
        context.say(f"lcs: trained the {cfg.mode} line for {cfg.epochs} epoch(s), {h['train_image_passes']:.0f} "
                    f"image passes, loss {h['loss']:.3f}, cos2 {h['cos2']:.2e}")
        if cfg.train_stats == "batch":   # the per-alpha statistics table, stored with the family (forward passes)
            t1 = time.perf_counter()
            cal = fam.calibrate_statistics(context.train, default_grid(cfg.grid), batches=cfg.calib_batches)
            ledger.add("calibrate", trial=context.trial, wall_s=time.perf_counter() - t1)
            context.say(f"lcs: batch-norm statistics table at {cal['alphas']:.0f} alphas, {cal['images']:.0f} "
                        "forward image passes")
        lat, space = context.latency, context.space
        original = float(lat.original())
        cands: list[Candidate] = []
        for a in default_grid(cfg.grid):
            m = fam.at(a)
            t1 = time.perf_counter()
            if cfg.finetune_epochs and m.plan is not None:
                with sparsity_kept(m.model, m.plan.actions):     # topk members keep their zeros
                    fh = train_epochs(m.model, context.train, cfg.finetune_epochs, cfg.lr * 0.1,
                                      max_steps=cfg.max_steps)
                ledger.add("finetune", trial=context.trial, wall_s=fh["seconds"], train_images=int(fh["images"]),
                           epochs=float(cfg.finetune_epochs))
            cost_plan = m.plan
            if cfg.mode == "bits":
                cost_plan = CompressionPlan(base=ref.to_dict(), w_bits={n: int(m.level["bits"])
                                                                        for n in getattr(space, "bit_layers", ())})
            sizes, dense = space.sizes_of_plan(cost_plan)
            v = lat(sizes, dense)
            pred = float(v.detach()) if hasattr(v, "detach") else float(v)
            acc = float(context.eval_fn(m.model)) if context.eval_fn is not None else None
            if acc is not None:
                fam.accuracy[a] = acc
            ledger.add("eval", trial=context.trial, wall_s=time.perf_counter() - t1)
            cand = Candidate(setting=f"alpha={a:g}", model=m.model, plan=m.plan if m.plan is not None else cost_plan,
                             original=original, predicted=pred, unit=lat.unit,
                             predicted_ms=pred if lat.unit == "ms" else None, accuracy=acc, accuracy_extracted=acc,
                             target=context.target, history=[h], sizes=_sizes(space, sizes),
                             extra={"alpha": a, "mode": cfg.mode, **m.level, "plan_rebuilds": m.plan is not None})
            cand.judge(context.base_accuracy, context.max_repair_drop)
            cands.append(cand)
        cost = ComputeRecord("total")
        for r in ledger.records[n0:]:
            cost = cost + r
        for c in cands:
            c.cost = cost   # one training run produced every member
        context.say("lcs: " + ", ".join(f"{c.setting} {c.predicted_ratio:.2f}x acc {c.accuracy}" for c in cands))
        res = LcsResult(method=self.name, config=cfg.to_dict(), candidates=cands, family=fam)
        # the first candidate is the family's pick for the context's budget (what a single-model caller such as
        # the search pipeline takes): the most accurate within it, else the fastest (reported missed)
        pick = res.select(context.target) if context.target is not None else max(
            cands, key=lambda c: (-math.inf if c.accuracy is None else c.accuracy, c.extra["alpha"]))
        pick = pick or min(cands, key=lambda c: c.predicted)
        res.candidates = [pick] + [c for c in cands if c is not pick]
        return res
