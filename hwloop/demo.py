"""``hwloop demo``: the whole loop on the embedded default, in about a minute on two cores.

model → device → store → predictor → search → compressed model → device:

1. **profile** the digits CNN (``small_cnn`` at four times its stock width, 64-128-256 channels:
   at the stock 16-32-64 a batch-1 inference is ~0.1 ms of mostly per-op overhead that pruning
   cannot remove) on the device, every layer in isolation and in context, into the store;
2. **measure** the layers and whole models of random-width variants of it (the search space), fit
   a latency predictor from this device's measurements in the store (refitted on every run, so
   it grows with the store) and save it;
3. **search** to a latency target with the differentiable search pipeline
   (:func:`hwloop.search.pipeline.run_spec`, digits task), which extracts the real smaller model
   and measures it against the original on the device (interleaved on the CPU, so drifting load
   cancels in the ratio);
4. **report**: one line ``compressed model: 0.58× measured latency (predicted 0.56×), accuracy
   98.9% → 98.1%``, a PNG (latency vs accuracy with the target line; chosen vs original widths)
   and where everything was written. Warnings name unstable timings and a loaded machine.

Example:
    >>> from hwloop.demo import DemoConfig
    >>> DemoConfig(target=0.6).target
    0.6
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwloop.errors import ConfigError

__all__ = ["DemoConfig", "DemoResult", "run_demo", "summary_line", "plot_demo"]

#: the demo's model: the digits CNN at four times its stock widths (16-32-64)
DEMO_MODEL = {"name": "small_cnn", "kwargs": {"width_mult": 4.0}}
DIGITS_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on and how long it trains.

    Attributes:
        device: a device profile name or path (default the embedded ``local-cpu``).
        store: store URL or SQLite path (None: ``$HWLOOP_HOME/measurements.db``).
        out: folder for the run (None: ``$HWLOOP_HOME/demo``).
        target: latency target, a fraction of the original's predicted latency, in (0, 1).
        quick: a reduced budget (fewer variants, epochs and training images) for tests.
        remeasure: measure again instead of reusing stored rows.
        progress: show progress bars.
        variants: random-width models measured for the predictor (None: 4 quick, 12 otherwise).
        seed: seed of the variants and the search.
    """

    device: str = "local-cpu"
    store: str | None = None
    out: Path | None = None
    target: float = 0.6
    quick: bool = False
    remeasure: bool = False
    progress: bool = True
    variants: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t < 1:
            raise ConfigError(f"--target {t!r} must be a fraction of the original latency in (0, 1), e.g. 0.6")
        if self.variants is not None and (isinstance(self.variants, bool) or not isinstance(self.variants, int)
                                          or not 0 <= self.variants <= 500):
            raise ConfigError(f"variants={self.variants!r} must be an integer in 0..500")


@dataclass
class DemoResult:
    """What the demo measured and wrote."""

    line: str
    png: Path
    run_dir: Path
    predictor_path: Path
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _home() -> Path:
    from hwloop.paths import hwloop_home

    return hwloop_home()


def summary_line(metrics: dict[str, Any]) -> str:
    """The demo's one-line result.

    Example:
        >>> summary_line({"measured_ratio": 0.581, "predicted_ratio": 0.562, "original_accuracy": 98.89,
        ...               "accuracy": 98.06})
        'compressed model: 0.58× measured latency (predicted 0.56×), accuracy 98.9% → 98.1%'
    """
    pred = metrics.get("predicted_ratio")
    pred_s = f" (predicted {pred:.2f}×)" if pred is not None and math.isfinite(pred) else ""
    return (f"compressed model: {metrics['measured_ratio']:.2f}× measured latency{pred_s}, "
            f"accuracy {metrics['original_accuracy']:.1f}% → {metrics['accuracy']:.1f}%")


def plot_demo(path: Path, metrics: dict[str, Any], sizes: dict[str, dict[str, float]], device: str) -> Path:
    """Two panels: latency (relative to the original) vs accuracy with the target line, and chosen vs
    original channels per layer group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.axvline(metrics["target"], color="tab:green", ls="--", label=f"target {metrics['target']:.2f}×")
    ax.scatter([1.0], [metrics["original_accuracy"]], s=60, color="tab:gray", label="original")
    ax.scatter([metrics["measured_ratio"]], [metrics["accuracy"]], s=60, color="tab:red",
               label=f"compressed, measured {metrics['measured_ratio']:.2f}×")
    lo, hi = metrics.get("measured_ratio_ci") or (None, None)
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        ax.plot([lo, hi], [metrics["accuracy"]] * 2, color="tab:red", lw=1.5, label="95% interval")
    if metrics.get("predicted_ratio") is not None:
        ax.scatter([metrics["predicted_ratio"]], [metrics["accuracy"]], marker="x", s=60, color="tab:blue",
                   label=f"compressed, predicted {metrics['predicted_ratio']:.2f}×")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"latency on {device} (fraction of the original)")
    ax.set_ylabel("digits accuracy (%)")
    ax.set_title("latency vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    names = list(sizes)
    xs = range(len(names))
    bx.bar(xs, [sizes[n]["original"] for n in names], color="lightgray", label="original")
    bx.bar(xs, [sizes[n]["chosen"] for n in names], color="tab:blue", label="chosen")
    bx.set_xticks(list(xs))
    bx.set_xticklabels(names, rotation=30, fontsize=7)
    bx.set_ylabel("channels")
    bx.set_title("chosen vs original widths")
    bx.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _variant_refs(n: int, seed: int) -> list[Any]:
    """Random-width versions of the demo model: the search space the predictor must cover."""
    import numpy as np

    from hwloop.models import ModelRef

    rng = np.random.default_rng(seed)
    full = [int(round(c * DEMO_MODEL["kwargs"]["width_mult"])) for c in (16, 32, 64)]  # type: ignore[index]
    # every other variant in the upper half of each width: trees do not extrapolate, and the original
    # (full width) is what every ratio divides by
    return [ModelRef("small_cnn", {"widths": [int(rng.integers(max(2, c // (16 if i % 2 == 0 else 2)), c + 1))
                                              for c in full]}, input_shape=DIGITS_SHAPE) for i in range(n)]


def run_demo(cfg: DemoConfig, *, echo: Callable[[str], None] = print, warn: Callable[[str], None] | None = None
             ) -> DemoResult:
    """Run the whole loop (see the module docstring) and return what it measured and wrote."""
    import json

    from hwloop.devices.base import MeasureRequest
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.models import ModelRef
    from hwloop.predict.fitting import fit_predictor
    from hwloop.predict.io import load_training_data, save_predictor
    from hwloop.profiling import ISOLATED_OPS, measure_with_store, profile_model, timing_warnings
    from hwloop.search.pipeline import run_spec
    from hwloop.search.spec import SearchSpec
    from hwloop.store import MeasurementStore
    from hwloop.workload import extract_workload

    t0 = time.perf_counter()
    say_warn = warn or (lambda w: echo(f"warning: {w}"))
    out = Path(cfg.out) if cfg.out is not None else _home() / "demo"
    out.mkdir(parents=True, exist_ok=True)
    prof = load_profile(cfg.device)
    dev = create_device(prof)
    timing = prof.timing
    warnings: list[str] = []

    def warn_once(ws: list[str]) -> None:
        for w in ws:
            kind = w.split(" (")[0]  # "the machine is loaded" once, whatever the load average by then
            if all(x.split(" (")[0] != kind for x in warnings):
                warnings.append(w)
                say_warn(w)

    ref = ModelRef(DEMO_MODEL["name"], dict(DEMO_MODEL["kwargs"]), input_shape=DIGITS_SHAPE)  # type: ignore[arg-type]
    store = MeasurementStore(cfg.store)
    try:
        # 1. profile the model
        echo(f"[1/4] profiling {ref.label} on {dev.name} into {store!r}")
        rep = profile_model(ref, dev, store, timing, progress=cfg.progress, remeasure=cfg.remeasure)
        echo(f"      whole model {rep.model_ms:.4f} ms (CV {rep.model_cv:.1%}); {rep.measured} measured, "
             f"{rep.reused} reused from the store")
        warn_once(timing_warnings(rep.load, rep.unstable_count, timing, what="profile measurements", marked=False))
        warn_once([rep.stale] if rep.stale else [])   # reused rows: is this device still as fast as then?

        # 2. measure the search space's layers and whole models; fit the predictor from the store
        n = cfg.variants if cfg.variants is not None else (4 if cfg.quick else 12)
        refs = _variant_refs(n, cfg.seed)
        reqs = []
        for r in refs:
            wl = extract_workload(r.build(), r.example_input(), name=r.label)
            reqs += [MeasureRequest.for_layer(s) for s in wl.layers if s.op in ISOLATED_OPS]
            reqs.append(MeasureRequest.for_model(r))
        echo(f"[2/4] measuring {len(reqs)} layers and models of {n} random-width variants for the predictor")
        got = measure_with_store(reqs, dev, store, timing, progress=cfg.progress, remeasure=cfg.remeasure)
        unstable = sum(1 for x in got.results if x.ok and x.unstable)
        warn_once(timing_warnings(rep.load, unstable, timing, what="predictor measurements", marked=False))
        fp = dev.fingerprint()
        data = load_training_data(store.url, device=fp.key, progress=cfg.progress)
        pred = fit_predictor(data, "auto", evaluate=not cfg.quick and data.n_layers >= 10)
        pred_path = save_predictor(pred, out / "predictor.json")
        echo(f"      fitted {getattr(pred, 'kind', type(pred).__name__)} on {data.n_layers} layers and "
             f"{data.n_models} models of {dev.name} ({pred.kind_reason_}); saved {pred_path}")
    finally:
        dev.close()
        store.close()

    # 3. search to the target, extract, fine-tune, measure against the original on the device
    sched = ({"pretrain_epochs": 1, "search_epochs": 1, "finetune_epochs": 1} if cfg.quick else
             {"pretrain_epochs": 3, "search_epochs": 3, "finetune_epochs": 2})
    spec = SearchSpec.from_dict({
        "name": "demo", "seed": cfg.seed, "model": DEMO_MODEL,
        "data": {"task": "digits", "batch_size": 64, **({"train_limit": 384} if cfg.quick else {})},
        "device": {"name": cfg.device, "measure": True},
        "budget": {"target": cfg.target, "target_warmup": 0.5, "latency_penalty": "hinge",
                   "prune_after_warmup": True},
        "space": {"channels": True, "bits": False},
        "schedule": {**sched, "lr": 0.05, "gate_lr": 0.05}})
    echo(f"[3/4] searching digits to {cfg.target:.2f}× of the original's predicted latency "
         f"({sched['pretrain_epochs']} + {sched['search_epochs']} + {sched['finetune_epochs']} epochs)")
    run_dir = out / "run"
    metrics = run_spec(spec, run_dir, progress=cfg.progress, predictor=pred,
                       echo=(lambda m: echo(f"      {m}")) if cfg.progress else None)
    doc = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if metrics.get("measure_unstable"):
        load = metrics.get("measure_load") or {}
        warn_once([f"the measured ratio is unstable (95% interval {metrics['measured_ratio_ci'][0]:.2f}–"
                   f"{metrics['measured_ratio_ci'][1]:.2f}"
                   + (f", load average {load['load1']} on {load['cores']} cores" if load else "")
                   + "): run `hwloop demo --remeasure` on a quieter machine"])
    if (metrics.get("measure_load") or {}).get("loaded"):
        warn_once(timing_warnings(metrics["measure_load"], 0))

    # 4. report
    png = plot_demo(out / "demo.png", metrics, doc.get("sizes", {}), cfg.device)
    line = summary_line(metrics)
    echo(f"[4/4] {line}")
    echo(f"wrote {png} (plot), {run_dir} (plan.json, weights.safetensors, metrics.json, search.log), "
         f"{pred_path} (predictor)")
    return DemoResult(line=line, png=png, run_dir=run_dir, predictor_path=pred_path, metrics=metrics,
                      warnings=warnings, seconds=time.perf_counter() - t0)
