"""Differentiable search versus Optuna baselines on the same task, space, device and budget grid.

:func:`run_compare` (``hwloop compare SPEC``) pre-trains the base model once (shared by every
method, not charged to either), then

1. runs the differentiable search once per latency target of the grid (or per fixed λ),
2. runs each Optuna sampler for ``n_trials`` trials of the compression objective
   (:mod:`hwloop.search.baselines`) with the loosest target as the constraint,
3. measures every candidate (and the original model) on the device, and
4. reports the (accuracy, measured latency) Pareto fronts, hypervolume versus compute spent, the
   compute each method needs to reach TPE's best hypervolume, and the best accuracy per target.

Compute is counted with :class:`~hwloop.search.accounting.ComputeLedger` (training images by
default; wall seconds, device seconds, epochs and measurements are recorded too). The hypervolume
uses the reference point (``reference_accuracy``, ``reference_latency`` × the original's measured
latency; default 1.0: every model faster than the original counts). Output: ``candidates.csv``, ``summary.md``, ``summary.json``,
``ledger.json``, ``fronts.png`` and ``hv_vs_compute.png``.

Example spec (``search/compare-digits.toml``)::

    name = "compare-digits"
    search = "digits_small_cnn.toml"     # a search spec (path relative to this file) or an inline table
    [differentiable]
    targets = [0.3, 0.5, 0.7]
    [optuna]
    samplers = ["tpe", "nsga2", "random"]
    n_trials = 12
    [report]
    unit = "train_images"

Example:
    >>> from hwloop.search.compare import CompareSpec
    >>> spec = CompareSpec.from_dict({"name": "c", "search": {"data": {"task": "digits"}},
    ...                               "differentiable": {"targets": [0.5, 0.3]}})
    >>> spec.targets, spec.samplers
    ((0.5, 0.3), ('tpe', 'nsga2', 'random'))
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwloop._toml import read_toml
from hwloop.errors import ConfigError, SearchError
from hwloop.search.accounting import COMPUTE_UNITS, ComputeLedger, ComputeRecord
from hwloop.search.baselines import LATENCY_SOURCES
from hwloop.search.optuna_search import PRUNERS, SAMPLERS
from hwloop.search.pareto import compute_to_reach, hypervolume_curve, pareto_front

__all__ = ["CompareSpec", "load_compare_spec", "run_compare", "summarize_candidates"]

_TOP = {"name", "seed", "search", "differentiable", "optuna", "report"}
_SECTIONS: dict[str, set[str]] = {
    "differentiable": {"targets", "lams"},
    "optuna": {"samplers", "n_trials", "finetune_epochs", "latency", "target", "n_startup_trials",
               "population_size", "pruner", "storage", "skip_infeasible"},
    "report": {"unit", "reference_accuracy", "reference_latency", "measure", "repeats", "baseline"},
}


@dataclass(frozen=True)
class CompareSpec:
    """A comparison run (see the module docstring); validated on construction."""

    name: str
    search: Mapping[str, Any]
    targets: tuple[float, ...] = (0.3, 0.5, 0.7)
    lams: tuple[float, ...] = ()
    samplers: tuple[str, ...] = SAMPLERS
    n_trials: int = 12
    finetune_epochs: int | None = None
    latency: str = "predictor"
    target: float | None = None
    n_startup_trials: int = 4
    population_size: int = 6
    pruner: str = "none"
    storage: str | None = None
    skip_infeasible: bool = True
    unit: str = "train_images"
    reference_accuracy: float = 0.0
    reference_latency: float = 1.0
    measure: bool = True
    repeats: int | None = None
    baseline: str = "tpe"
    seed: int = 0

    def __post_init__(self) -> None:
        from hwloop.search.spec import SearchSpec

        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("compare spec 'name' must be a non-empty string")
        SearchSpec.from_dict({"name": self.name, **dict(self.search)})  # validates the shared search spec
        object.__setattr__(self, "targets", tuple(float(t) for t in self.targets))
        object.__setattr__(self, "lams", tuple(float(v) for v in self.lams))
        object.__setattr__(self, "samplers", tuple(self.samplers))
        if not self.targets and not self.lams:
            raise ConfigError("[differentiable] needs a non-empty 'targets' (fractions) or 'lams' list")
        if any(not 0 < t <= 1 for t in self.targets):
            raise ConfigError(f"targets {list(self.targets)} must be fractions of the original latency in (0, 1]")
        if any(v < 0 for v in self.lams):
            raise ConfigError(f"lams {list(self.lams)} must be >= 0")
        for s in self.samplers:
            if s not in SAMPLERS:
                raise ConfigError(f"sampler {s!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if self.baseline not in self.samplers:
            raise ConfigError(f"report baseline {self.baseline!r} must be one of the samplers {list(self.samplers)}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"n_trials={self.n_trials!r} must be a positive integer")
        if self.latency not in LATENCY_SOURCES:
            raise ConfigError(f"latency source {self.latency!r} is unknown; allowed: {', '.join(LATENCY_SOURCES)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner {self.pruner!r} is unknown; allowed: {', '.join(PRUNERS)}")
        if self.unit not in COMPUTE_UNITS:
            raise ConfigError(f"compute unit {self.unit!r} is unknown; allowed: {', '.join(COMPUTE_UNITS)}")
        if self.target is not None and not 0 < self.target <= 1:
            raise ConfigError(f"[optuna] target={self.target!r} must be in (0, 1]")
        if not 0 < self.reference_latency <= 10:
            raise ConfigError(f"[report] reference_latency={self.reference_latency!r} must be a latency ratio "
                              "in (0, 10]")

    @property
    def budget(self) -> float:
        """The loosest latency budget (fraction of the original): Optuna's constraint."""
        if self.target is not None:
            return float(self.target)
        return max(self.targets) if self.targets else 1.0

    def search_spec(self) -> Any:
        from hwloop.search.spec import SearchSpec

        return SearchSpec.from_dict({"name": self.name, "seed": self.seed, **dict(self.search)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path | None = None) -> CompareSpec:
        extra = set(d) - _TOP
        if extra:
            raise ConfigError(f"compare spec has unknown key(s) {sorted(extra)}; allowed: {sorted(_TOP)}")
        search = d.get("search", {})
        if isinstance(search, str):
            p = Path(search) if base_dir is None or Path(search).is_absolute() else base_dir / search
            search = read_toml(p, "search spec (named by the compare spec)")
        if not isinstance(search, Mapping):
            raise ConfigError("compare spec 'search' must be a search spec path or table")
        search = {k: v for k, v in search.items() if k not in ("name", "seed")}
        kw: dict[str, Any] = {}
        for sec, keys in _SECTIONS.items():
            tbl = d.get(sec, {})
            if not isinstance(tbl, Mapping) or set(tbl) - keys:
                raise ConfigError(f"[{sec}] has unknown key(s) {sorted(set(tbl) - keys) if isinstance(tbl, Mapping) else tbl}; "
                                  f"allowed: {sorted(keys)}")
            kw.update(tbl)
        import typing

        from hwloop._toml import describe_type, fits_type

        hints = typing.get_type_hints(cls)
        for k, v in {**kw, "seed": d.get("seed", 0)}.items():
            if not fits_type(v, hints[k]):
                raise ConfigError(f"compare spec: {k}={v!r} must be {describe_type(hints[k])}")
        try:
            return cls(name=str(d.get("name", "")), search=search, seed=int(d.get("seed", 0)), **kw)
        except TypeError as e:
            raise ConfigError(f"compare spec: {e}") from e


def load_compare_spec(path: str | Path) -> CompareSpec:
    """Read and validate a compare spec TOML file."""
    p = Path(path)
    return CompareSpec.from_dict(read_toml(p, "compare spec"), p.parent)


@dataclass
class _Candidate:
    method: str
    index: int
    accuracy: float
    predicted_ratio: float
    plan: Mapping[str, Any]
    compute: ComputeRecord
    setting: str = ""
    measured_ms: float = float("nan")
    latency_ratio: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def _pretrain(spec: CompareSpec, out: Path, ledger: ComputeLedger, say: Callable[[str], None], progress: bool
              ) -> str | None:
    s = spec.search_spec()
    if s.model.checkpoint or not s.schedule.pretrain_epochs:
        return s.model.checkpoint
    import torch
    from safetensors.torch import save_file

    from hwloop.search.train import make_task, train_epochs

    path = out / "pretrained.safetensors"
    if path.exists():
        say(f"reusing pre-trained weights {path}")
        return str(path)
    task = make_task(s.data.task, s.model.name, batch_size=s.data.batch_size, train_limit=s.data.train_limit,
                     val_limit=s.data.val_limit, seed=s.seed, model_kwargs=dict(s.model.kwargs), data_root=s.data.root)
    torch.manual_seed(s.seed)
    model = task.ref.build().train()
    with ledger.phase("pretrain") as ph:
        r = train_epochs(model, task.train, s.schedule.pretrain_epochs, s.schedule.lr,
                         weight_decay=s.schedule.weight_decay, progress=progress, desc="pretrain",
                         max_steps=s.schedule.max_steps)
        ph.train_images, ph.epochs = int(r["images"]), r["epochs"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    say(f"pre-trained {s.schedule.pretrain_epochs} epochs (shared by every method, not charged): "
        f"accuracy {task.eval_fn(model):.2f}")
    return str(path)


def _differentiable(spec: CompareSpec, obj: Any, ledger: ComputeLedger, say: Callable[[str], None],
                    progress: bool) -> list[_Candidate]:
    from tqdm.auto import tqdm

    from hwloop.methods.base import MethodContext

    s = obj.spec
    settings = [("target", t) for t in spec.targets] if spec.targets and not spec.lams else \
        [("lam", v) for v in spec.lams]
    base = s.method.build(s.method_defaults())   # the spec's [method] (default l1l2) through hwloop.methods.METHODS
    keys = set(base.config.to_dict())
    out: list[_Candidate] = []
    for i, (kind, v) in enumerate(tqdm(settings, desc="differentiable sweep", disable=not progress)):
        # float activations, as the Optuna trials fine-tune and score them; no per-epoch evaluation: like an Optuna
        # trial, each candidate is evaluated once, after fine-tuning
        over = {k: x for k, x in (("quantize_activations", False), ("lam", v if kind == "lam" else None))
                if k in keys and x is not None}
        method = type(base)(dataclasses.replace(base.config, **over))
        ctx = MethodContext(model=obj.space.model, ref=obj.task.ref, space=obj.space, train=obj.task.train,
                            eval_fn=None, latency=obj.latency, target=v if kind == "target" else None, seed=s.seed,
                            ledger=ledger, trial=i)
        res = method.run(ctx).candidates[0]
        with ledger.phase("eval", trial=i):
            acc = float(obj.task.eval_fn(res.model))
        ratio = res.predicted / res.original
        say(f"differentiable {kind}={v}: accuracy {acc:.2f}, predicted latency {ratio:.3f} x original")
        out.append(_Candidate("differentiable", i, acc, ratio, res.plan.to_dict(),
                              ledger.total(trial=i), setting=f"{kind}={v}"))
    return out


def _optuna(spec: CompareSpec, sampler: str, obj: Any, params: Mapping[str, Any], storage: str, progress: bool,
            say: Callable[[str], None]) -> list[_Candidate]:
    from hwloop.search.optuna_search import StudySettings, create_study, run_worker, trial_rows

    name = f"{spec.name}-{sampler}"
    settings = StudySettings(sampler=sampler, n_trials=spec.n_trials, directions=obj.directions,
                             objective={"name": "compression", "params": dict(params)}, seed=spec.seed,
                             pruner=spec.pruner, n_startup_trials=spec.n_startup_trials,
                             population_size=spec.population_size)
    study = create_study(name, storage, settings)
    run_worker(name, storage, objective=obj, worker_id=f"compare-{sampler}", progress=progress)
    out = []
    for k, row in enumerate(trial_rows(study)):
        compute = ComputeLedger.from_dict(row["user_attrs"]["compute"]).total() if "compute" in row["user_attrs"] \
            else ComputeRecord("total")
        ok = row["state"] == "COMPLETE"
        out.append(_Candidate(sampler, k, float(row["values"][0]) if ok else float("nan"),
                              float(row["user_attrs"].get("predicted_ratio", float("nan"))),
                              row["user_attrs"].get("plan", {}) if ok else {}, compute,
                              setting=f"trial {row['number']} {row['state'].lower()}"))
    done = [c for c in out if not math.isnan(c.accuracy)]
    say(f"optuna {sampler}: {len(out)} trials, {len(done)} complete, best accuracy "
        f"{max((c.accuracy for c in done), default=float('nan')):.2f}")
    return out


def _measure_all(spec: CompareSpec, obj: Any, cands: Sequence[_Candidate], ledger: ComputeLedger,
                 say: Callable[[str], None], progress: bool) -> float:
    from tqdm.auto import tqdm

    from hwloop.compress import CompressionPlan, from_plan
    from hwloop.devices import create_device, load_profile
    from hwloop.devices.base import TimingConfig
    from hwloop.search.report import measure_compressed

    prof = load_profile(obj.spec.device.name)
    timing = prof.timing
    if spec.repeats:
        timing = TimingConfig.from_dict({**timing.to_dict(), "repeats": spec.repeats})
    dev = create_device(prof)
    example = obj.task.ref.example_input()
    try:
        import copy

        t0 = time.perf_counter()
        # the device's whole-model truth (measure_compressed's "auto": one model request on the CPU; on the ASIC
        # its layer requests, which cost model 2 makes equal to the whole-model path)
        m0 = measure_compressed(dev, copy.deepcopy(obj.space.model), CompressionPlan(base=obj.task.ref.to_dict()),
                                example=example, timing=timing)
        ledger.add("measure-original", wall_s=time.perf_counter() - t0, device_s=time.perf_counter() - t0,
                   device_measurements=int(m0["n_requests"]))
        original = float(m0["latency_ms"])
        for c in tqdm([c for c in cands if c.plan], desc="measure candidates", disable=not progress):
            plan = CompressionPlan.from_dict(c.plan)
            t0 = time.perf_counter()
            m = measure_compressed(dev, from_plan(plan), plan, example=example, timing=timing)
            dt = time.perf_counter() - t0
            c.measured_ms = float(m["latency_ms"])
            c.latency_ratio = c.measured_ms / original
            rec = ComputeRecord("measure", wall_s=dt, device_s=dt, device_measurements=int(m["n_requests"]))
            c.compute = c.compute + rec
            if c.method == "differentiable":   # its phases live in the run's ledger (Optuna's in each trial's)
                ledger.extend([dataclasses.replace(rec, trial=c.index)])
    finally:
        dev.close()
    say(f"measured {sum(bool(c.plan) for c in cands)} candidates on {dev.name}; original {original:.4g} ms")
    return original


def summarize_candidates(cands: Sequence[_Candidate], *, unit: str, reference: tuple[float, float],
                         baseline: str, targets: Sequence[float]) -> dict[str, Any]:
    """Per-method fronts, hypervolume curves and compute-to-reach figures (see the module docstring)."""
    methods = list(dict.fromkeys(c.method for c in cands))
    per: dict[str, Any] = {}
    for m in methods:
        cs = [c for c in cands if c.method == m]
        pts = [(c.accuracy, c.latency_ratio) for c in cs]
        curve = hypervolume_curve(pts, [c.compute.value(unit) for c in cs], reference)
        valid = [i for i, p in enumerate(pts) if not any(math.isnan(x) for x in p)]
        front = [valid[j] for j in pareto_front([pts[i] for i in valid])]
        best = {}
        for t in targets:
            ok = [c.accuracy for c in cs if not math.isnan(c.accuracy) and c.latency_ratio <= t]
            best[f"{t:g}"] = max(ok) if ok else None
        per[m] = {"n_candidates": len(cs), "n_valid": len(valid), "front": [cs[i].index for i in front],
                  "hypervolume": curve[-1].hypervolume if curve else 0.0,
                  "compute_total": sum(c.compute.value(unit) for c in cs),
                  "curve": [dataclasses.asdict(h) for h in curve], "best_accuracy_at_target": best}
    target_hv = per[baseline]["hypervolume"] if baseline in per else 0.0
    for m in methods:
        curve = [h for h in hypervolume_curve([(c.accuracy, c.latency_ratio) for c in cands if c.method == m],
                                              [c.compute.value(unit) for c in cands if c.method == m], reference)]
        per[m]["compute_to_baseline_hv"] = compute_to_reach(curve, target_hv) if target_hv > 0 else None
    ratio = None
    if "differentiable" in per and baseline in per:
        a, b = per[baseline]["compute_to_baseline_hv"], per["differentiable"]["compute_to_baseline_hv"]
        ratio = (a / b) if a and b else None
    return {"unit": unit, "reference": list(reference), "baseline": baseline, "baseline_hv": target_hv,
            "methods": per, "compute_ratio_baseline_over_differentiable": ratio}


def _write_outputs(out: Path, spec: CompareSpec, cands: Sequence[_Candidate], summary: dict[str, Any],
                   original_ms: float | None) -> None:
    with open(out / "candidates.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "index", "setting", "accuracy", "predicted_ratio", "measured_ms", "latency_ratio",
                     "on_front", *COMPUTE_UNITS])
        for c in cands:
            on = c.index in summary["methods"][c.method]["front"]
            w.writerow([c.method, c.index, c.setting, f"{c.accuracy:.4f}", f"{c.predicted_ratio:.5f}",
                        f"{c.measured_ms:.6g}", f"{c.latency_ratio:.5f}", int(on),
                        *[f"{c.compute.value(u):.6g}" for u in COMPUTE_UNITS]])
    (out / "summary.json").write_text(json.dumps({"spec": _spec_dict(spec), "original_ms": original_ms,
                                                  **summary}, indent=1, default=float) + "\n", encoding="utf-8")
    unit = summary["unit"]
    lines = [f"# {spec.name}: differentiable search vs Optuna", "",
             (f"Hypervolume reference: accuracy {summary['reference'][0]:g} %, latency {summary['reference'][1]:g} x "
              f"original{'' if original_ms is None else f' ({original_ms:.4g} ms measured)'}; compute in {unit}."), "",
             f"| method | candidates | hypervolume | total {unit} | {unit} to reach {summary['baseline']}'s best HV |",
             "|---|---:|---:|---:|---:|"]
    for m, r in summary["methods"].items():
        reach = r["compute_to_baseline_hv"]
        lines.append(f"| {m} | {r['n_valid']}/{r['n_candidates']} | {r['hypervolume']:.4g} | "
                     f"{r['compute_total']:.4g} | {'not reached' if reach is None else f'{reach:.4g}'} |")
    ratio = summary["compute_ratio_baseline_over_differentiable"]
    lines += ["", (f"Compute ratio ({summary['baseline']} / differentiable, to reach {summary['baseline']}'s best "
                   f"hypervolume): {'n/a (not reached)' if ratio is None else f'{ratio:.2f}x'}"), "",
              "| method | " + " | ".join(f"best acc @ <= {t}" for t in next(iter(summary["methods"].values()))
                                         ["best_accuracy_at_target"]) + " |",
              "|---|" + "---:|" * len(next(iter(summary["methods"].values()))["best_accuracy_at_target"])]
    for m, r in summary["methods"].items():
        lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{v:.2f}"
                                             for v in r["best_accuracy_at_target"].values()) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(out, cands, summary)


def _spec_dict(spec: CompareSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["search"] = dict(spec.search)
    return d


def _plot(out: Path, cands: Sequence[_Candidate], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"differentiable": "tab:red", "tpe": "tab:blue", "nsga2": "tab:green", "random": "tab:gray"}
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, r in summary["methods"].items():
        cs = [c for c in cands if c.method == m and not math.isnan(c.accuracy) and not math.isnan(c.latency_ratio)]
        col = colors.get(m, None)
        ax.scatter([c.latency_ratio for c in cs], [c.accuracy for c in cs], s=18, alpha=0.45, color=col)
        fr = sorted((c for c in cs if c.index in r["front"]), key=lambda c: c.latency_ratio)
        if fr:
            ax.step([c.latency_ratio for c in fr], [c.accuracy for c in fr], where="post", color=col, label=m)
    ax.axvline(summary["reference"][1], color="k", ls=":", lw=1, label="HV reference")
    _finish(plt, fig, ax, "measured latency / original", "accuracy (%)",
            "Pareto fronts (accuracy vs measured latency)", out / "fronts.png")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, r in summary["methods"].items():
        xs = [h["compute"] for h in r["curve"]]
        ys = [h["hypervolume"] for h in r["curve"]]
        if xs:
            ax.step([0.0, *xs], [0.0, *ys], where="post", color=colors.get(m), label=m)
    if summary["baseline_hv"] > 0:
        ax.axhline(summary["baseline_hv"], color="tab:blue", ls=":", lw=1, label=f"{summary['baseline']} best HV")
    _finish(plt, fig, ax, f"compute ({summary['unit']})", "hypervolume", "Hypervolume vs compute",
            out / "hv_vs_compute.png")


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Label, grid and legend ``ax``; save ``fig`` to ``path`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_compare(spec: CompareSpec, out_dir: str | Path, *, progress: bool = True,
                echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the comparison (module docstring) into ``out_dir``; returns the summary dict.

    Optuna studies live in ``spec.storage`` (default ``sqlite:///<out_dir>/optuna.db``), so an
    interrupted comparison resumes its studies when run again.
    """
    import torch

    from hwloop.search.baselines import CompressionObjective

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda _m: None)
    torch.manual_seed(spec.seed)
    ledger = ComputeLedger()
    ckpt = _pretrain(spec, out, ledger, say, progress)
    search = {"name": spec.name, "seed": spec.seed, **dict(spec.search)}
    params: dict[str, Any] = {"spec": search, "target": spec.budget, "latency": spec.latency,
                              "skip_infeasible": spec.skip_infeasible, "checkpoint": ckpt,
                              "mode": "pareto" if spec.pruner == "none" else "accuracy"}
    if spec.finetune_epochs is not None:
        params["finetune_epochs"] = spec.finetune_epochs
    obj = CompressionObjective(params)
    say(f"space: {len(obj.space.dimensions())} dimensions; latency model {obj.latency.kind} ({obj.latency.unit})")
    cands: list[_Candidate] = _differentiable(spec, obj, ledger, say, progress)
    storage = spec.storage or f"sqlite:///{out.resolve()}/optuna.db"
    for sampler in spec.samplers:
        cands += _optuna(spec, sampler, obj, params, storage, progress, say)
    original_ms: float | None = None
    if spec.measure:
        original_ms = _measure_all(spec, obj, cands, ledger, say, progress)
    else:
        for c in cands:
            c.latency_ratio = c.predicted_ratio if c.plan else float("nan")
    if not any(c.plan for c in cands):
        raise SearchError("no candidate finished; raise n_trials or the latency target")
    reference = (spec.reference_accuracy, spec.reference_latency)
    summary = summarize_candidates(cands, unit=spec.unit, reference=reference, baseline=spec.baseline,
                                   targets=spec.targets or (spec.budget,))
    summary["latency"] = "measured" if spec.measure else "predicted"
    summary["ratio_by_unit"] = {
        u: summarize_candidates(cands, unit=u, reference=reference,
                                baseline=spec.baseline, targets=spec.targets or (spec.budget,))[
            "compute_ratio_baseline_over_differentiable"] for u in ("train_images", "epochs", "wall_s")}
    full = ComputeLedger(ledger.records)
    full.extend(dataclasses.replace(c.compute, phase=f"{c.method}:{c.setting}", trial=None) for c in cands
                if c.method != "differentiable")   # the differentiable runs' phases are already in `ledger`
    full.save(out / "ledger.json")
    _write_outputs(out, spec, cands, summary, original_ms)
    say(f"wrote {out}/summary.md, candidates.csv, fronts.png, hv_vs_compute.png")
    return summary
