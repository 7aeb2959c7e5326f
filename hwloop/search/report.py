"""Truth on the device: measure a search result, set predicted against measured, write the run directory.

:func:`measure_compressed` times a compressed model on any device. On the ``asic``
backend (and quantized plans on devices other than the CPU) it is sent as one layer request
per conv/linear/... of the extracted model with ``w_bits``/``a_bits`` from the plan, and
summed; otherwise as one whole-model request through
``ModelRef("hwloop.compress:from_plan", {"plan": ...})`` so remote devices can rebuild it from
JSON. The CPU has no low-bit kernels, so there a quantized plan is timed as the real extracted
float model, end to end. :func:`compare_compressed` measures the compressed model *against*
the original: on the CPU both whole models interleaved
(:func:`hwloop.devices.base.compare`), elsewhere alternating measurements; it returns the
ratio that searches and reports quote. :func:`write_report` writes ``metrics.json``, the plan +
safetensors weights, and two PNGs (latency vs accuracy, per-layer chosen sizes).

Example:
    >>> from hwloop.compress import CompressionPlan, from_plan
    >>> from hwloop.search.report import measure_compressed
    >>> plan = CompressionPlan(base={"name": "small_cnn"}, widths={"features.3": 8}, w_bits={"features.3": 4})
    >>> m = measure_compressed("asic-tpu32", from_plan(plan.to_dict()), plan)
    >>> m["latency_ms"] > 0, m["method"]
    (True, 'layers')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwloop.compress.plan import CompressionPlan
from hwloop.errors import ConfigError, DeviceError, SearchError

__all__ = ["compare_compressed", "median_pass", "layer_specs_with_bits", "measure_compressed", "plot_report", "predict_compressed",
           "write_report"]

#: backends whose quantized plans are timed as the extracted float model (no low-bit kernels)
FLOAT_ONLY_BACKENDS = ("cpu",)


def layer_specs_with_bits(model: nn.Module, example: torch.Tensor, plan: CompressionPlan | None) -> list[Any]:
    """The extracted model's layer specs, with the plan's ``w_bits``/``a_bits`` set on quantized layers."""
    import warnings

    from hwloop.workload import WorkloadWarning, extract_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        specs = extract_layers(model, example)
    if plan is None or not plan.w_bits:
        return specs
    out = []
    quantized = False   # ops after a quantized conv/linear (BN, ReLU, add, pool) run on its a_bits activations
    from hwloop.compress.actions import Quantize

    # per layer: a plan may mix them (sbs)
    a_of = {a.layer: a.a_bits for a in plan.of_kind(Quantize) if isinstance(a, Quantize)}
    cur_a = None
    for s in specs:
        b = plan.w_bits.get(s.name)
        if s.op in ("conv2d", "linear"):
            quantized, cur_a = b is not None, a_of.get(s.name)
        if b is not None:
            out.append(s.replace(w_bits=b, a_bits=a_of.get(s.name), out_shape=s.out_shape))
        elif quantized and cur_a and s.op != "other":
            out.append(s.replace(a_bits=cur_a, out_shape=s.out_shape))
        else:
            out.append(s)
    return out


def measure_compressed(device: str | Any, model: nn.Module, plan: CompressionPlan | None, *,
                       example: torch.Tensor | None = None, method: str = "auto", timing: Any = None
                       ) -> dict[str, Any]:
    """Measure ``model`` (the result of ``plan``) on ``device`` (a name or a Device).

    Returns:
        ``{"latency_ms", "method", "device", "n_requests", "failed"}``.
    """
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.models import ModelRef

    dev = create_device(device) if isinstance(device, str) else device
    backend = getattr(dev, "backend", "")
    if example is None:
        if plan is None:
            raise SearchError("measure_compressed needs an example input or a plan with a base model")
        example = plan.model_ref.example_input()
    if method == "auto":
        quantized_layers = plan is not None and bool(plan.w_bits) and backend not in FLOAT_ONLY_BACKENDS
        method = "layers" if (backend == "asic" or quantized_layers or plan is None
                              or plan.base is None) else "model"
    if method not in ("layers", "model"):
        raise SearchError(f"measure method {method!r} is unknown; allowed: auto, layers, model")
    if method == "model":
        assert plan is not None
        base = plan.model_ref
        ref = ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict()}, input_shape=base.input_shape,
                       batch=base.batch, dtype=base.dtype)
        res = dev.measure([MeasureRequest.for_model(ref)], timing)
        if not res[0].ok:
            raise DeviceError(f"device {dev.name!r} failed to measure the compressed model: {res[0].error}")
        return {"latency_ms": float(res[0].latency_ms), "method": "model", "device": dev.name, "n_requests": 1,
                "failed": 0}
    specs = [s for s in layer_specs_with_bits(model, example, plan) if s.op != "other"]
    results = dev.measure([MeasureRequest.for_layer(s) for s in specs], timing)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise DeviceError(f"device {dev.name!r} failed {len(failed)} of {len(specs)} layers, e.g. {failed[0]}")
    return {"latency_ms": float(sum(r.latency_ms for r in results)), "method": "layers", "device": dev.name,
            "n_requests": len(specs), "failed": 0}


def _plan_ref(plan: CompressionPlan) -> Any:
    from hwloop.models import ModelRef

    base = plan.model_ref
    return ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict()}, input_shape=base.input_shape,
                    batch=base.batch, dtype=base.dtype)


def median_pass(comps: Sequence[Any]) -> Any:
    """The comparison whose compressed/original ratio (``ratios[1]``) is the median of ``comps`` (the lower
    middle one for an even count), so a single pass that landed far from the others is never reported."""
    from hwloop.devices.base import median_comparison

    if not comps:
        raise SearchError("median_pass needs at least one comparison")
    return median_comparison(comps, 1)


def compare_compressed(device: str | Any, model: nn.Module, plan: CompressionPlan | None, original: nn.Module, *,
                       example: torch.Tensor | None = None, timing: Any = None, rounds: int = 2,
                       passes: int = 3, max_passes: int = 7) -> dict[str, Any]:
    """Measure the compressed ``model`` (the result of ``plan``) against ``original`` on ``device``.

    On a device that interleaves (the CPU backend) both whole models are timed in an
    interleaved comparison (original first): the ratio is the median of per-round ratios, so
    load that drifts during the measurement cancels, with its 95% interval and an ``unstable``
    flag when the interval stays wider than ``± max_cv`` after the retries. ``passes`` such
    comparisons run, each on freshly built models, more (up to ``max_passes``) while the median pass
    ratio has no two neighbours within 5% of it (:func:`hwloop.devices.base.compare_passes`), and the
    one with the median ratio is reported (``pass_ratios`` lists all): one comparison on a quiet 2-core
    VM lands 15-40% off the others about once in 25 with a tight interval of its own
    (``benchmarks/bench_cpu_ratio_load.py``), a state of that build rather than load. Elsewhere
    :func:`measure_compressed` runs ``rounds`` times for each model in alternating order and
    each keeps its fastest measurement.

    Returns:
        ``{"latency_ms", "original_ms", "ratio", "ratio_ci", "unstable", "interleaved", "rounds",
        "method", "device", "load"}`` (``load``: the machine load the measurement started under,
        when the device reports it); on an interleaving device also ``passes`` and ``pass_ratios``.

    Raises:
        DeviceError: the device failed to measure either model.
    """
    from hwloop.devices import MeasureRequest, create_device
    from hwloop.devices.base import compare_passes

    if not isinstance(passes, int) or passes < 1:
        raise SearchError(f"passes={passes!r} must be an integer >= 1")
    dev = create_device(device) if isinstance(device, str) else device
    if callable(getattr(dev, "measure_interleaved", None)) and plan is not None and plan.base is not None:
        reqs = [MeasureRequest.for_model(plan.model_ref), MeasureRequest.for_model(_plan_ref(plan))]
        try:
            c, comps = compare_passes(dev, reqs, timing, passes=passes, max_passes=max(passes, max_passes))
        except ConfigError as e:
            raise SearchError(str(e)) from None
        if not c.ok:
            err = next(r.error for r in c.results if not r.ok)
            raise DeviceError(f"device {dev.name!r} failed to measure the compressed model against the original: "
                              f"{err}")
        orig, comp = c.results
        return {"latency_ms": float(comp.latency_ms), "original_ms": float(orig.latency_ms),
                "ratio": float(c.ratios[1]), "ratio_ci": [float(x) for x in c.ratio_ci[1]], "unstable": c.unstable,
                "interleaved": True, "rounds": c.rounds, "method": "model", "device": dev.name,
                "load": dict(c.load), "cv": [float(orig.cv), float(comp.cv)], "passes": len(comps),
                "pass_ratios": [float(x.ratios[1]) for x in comps]}
    orig_plan = CompressionPlan(base=plan.base) if plan is not None and plan.base is not None else None
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(max(1, rounds)):
        m = measure_compressed(dev, model, plan, example=example, timing=timing)
        m0 = measure_compressed(dev, original, orig_plan, example=example, timing=timing, method=m["method"])
        runs.append((m, m0))
    best = min(a["latency_ms"] for a, _ in runs)
    best0 = min(b["latency_ms"] for _, b in runs)
    ratios = [a["latency_ms"] / b["latency_ms"] for a, b in runs]
    return {"latency_ms": best, "original_ms": best0, "ratio": best / best0, "ratio_ci": [min(ratios), max(ratios)],
            "unstable": False, "interleaved": False, "rounds": len(runs), "method": runs[0][0]["method"],
            "device": dev.name, "load": {}}


def predict_compressed(predictor: Any, model: nn.Module, example: torch.Tensor, plan: CompressionPlan | None,
                       *, aggregate: str = "calibrated") -> float:
    """A predictor's whole-model latency of the extracted model (every op but reshapes).

    Args:
        aggregate: ``calibrated`` (the predictor's whole-model aggregation when it has one, via
            ``predict_workload``) or ``sum`` (per-op predictions added: what :func:`measure_compressed`
            reports when it times op by op); use the search's ``PredictorLatency.aggregate``.
    """
    if aggregate not in ("calibrated", "sum"):
        raise SearchError(f"aggregate={aggregate!r} is unknown; allowed: calibrated, sum")
    specs = [s for s in layer_specs_with_bits(model, example, plan) if s.op != "other"]
    if aggregate == "calibrated" and hasattr(predictor, "predict_workload"):
        return float(predictor.predict_workload(specs))
    return float(sum(predictor.predict(specs)))


def write_report(run_dir: str | Path, metrics: Mapping[str, Any], history: Sequence[Mapping[str, float]],
                 sizes: Mapping[str, Mapping[str, float]]) -> Path:
    """Write ``metrics.json`` and the PNG plots into ``run_dir``; returns the metrics path."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    doc = {"metrics": dict(metrics), "history": [dict(h) for h in history], "sizes": {k: dict(v) for k, v in sizes.items()}}
    path = d / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")
    plot_report(d, metrics, sizes)
    return path


def plot_report(run_dir: Path, metrics: Mapping[str, Any], sizes: Mapping[str, Mapping[str, float]]) -> None:
    """``latency_vs_accuracy.png`` (original/baseline vs searched, predicted and measured) and
    ``layer_sizes.png`` (chosen vs original size per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    pts = [("original", metrics.get("original_measured_ms"), metrics.get("original_accuracy"), "tab:gray"),
           ("baseline (same budget)", metrics.get("original_measured_ms"), metrics.get("baseline_accuracy"), "k"),
           ("searched", metrics.get("measured_ms"), metrics.get("accuracy"), "tab:red")]
    for label, x, y, c in pts:
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y)):
            ax.scatter([x], [y], label=label, color=c, s=50)
    if metrics.get("predicted_ms") is not None and metrics.get("accuracy") is not None:
        ax.scatter([metrics["predicted_ms"]], [metrics["accuracy"]], marker="x", color="tab:red",
                   label="searched (predicted)")
    ax.set_xlabel(f"latency on {metrics.get('device', 'device')} (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(str(metrics.get("name", "search")))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "latency_vs_accuracy.png", dpi=120)
    plt.close(fig)

    names = list(sizes)
    if names:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(names)), 4))
        xs = range(len(names))
        ax.bar(xs, [sizes[n]["original"] for n in names], color="lightgray", label="original")
        ax.bar(xs, [sizes[n]["chosen"] for n in names], color="tab:blue", label="chosen")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("channels / rank / bits")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "layer_sizes.png", dpi=120)
        plt.close(fig)
