"""Latency studies of recorded search results (``search/results/*/`` scripts call these; no training).

* :func:`uniform_width_study`: what uniform widths × bit-widths reach on a device (``reachable.py``).
* :func:`stage_split_study`: where a model's latency is, per stage and op, plus what-if widths of a saved plan
  (``stage_split.py``).
* :func:`schedule_rows`, :func:`schedule_markdown`, :func:`plot_schedules`: the ``report.json`` of several
  ``bench_search.py`` runs side by side (``front.py``).

The latency of a model here is the sum of one layer request per op of the extracted model with the plan's bits
(:func:`layer_sum_ms`; on the simulated ASIC, cost model 2, equal to its whole-model path).

Example:
    >>> from hwloop.devices import create_device
    >>> from hwloop.models import ModelRef
    >>> ref = ModelRef("small_cnn", {}, input_shape=(1, 8, 8))
    >>> ms = layer_sum_ms(create_device("asic-tpu32"), ref.build().eval(), ref.example_input())
    >>> ms > 0
    True
    >>> resnet_stage("layers.4.conv1"), resnet_stage("fc"), resnet_stage("conv1")
    ('stage2', 'head', 'stem')
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hwloop.compress.plan import CompressionPlan

__all__ = ["layer_sum_ms", "plot_schedules", "resnet_stage", "schedule_markdown", "schedule_rows", "stage_latency",
           "stage_split_study", "uniform_width_study"]


def layer_sum_ms(dev: Any, model: torch.nn.Module, example: torch.Tensor, plan: CompressionPlan | None = None) -> float:
    """One layer request per op of ``model`` (``w_bits``/``a_bits`` from ``plan``) on ``dev``, summed."""
    from hwloop.devices import MeasureRequest
    from hwloop.search.report import layer_specs_with_bits

    specs = [s for s in layer_specs_with_bits(model, example, plan) if s.op != "other"]
    return sum(r.latency_ms for r in dev.measure([MeasureRequest.for_layer(s) for s in specs]))


def resnet_stage(name: str) -> str:
    """CIFAR ResNet-20's stage of a module name: ``stem``, ``stage1``..``stage3`` (3 blocks each) or ``head``."""
    if name.startswith("layers."):
        return f"stage{int(name.split('.')[1]) // 3 + 1}"
    return "head" if name.startswith(("fc", "pool", "linear")) else "stem"


def stage_latency(dev: Any, model: torch.nn.Module, example: torch.Tensor, plan: CompressionPlan | None = None,
                  stage_of: Callable[[str], str] = resnet_stage) -> dict[str, dict[str, float]]:
    """Per stage, the measured latency of each op kind and the stage's ``total`` (ms; one layer request per op)."""
    from hwloop.devices import MeasureRequest
    from hwloop.search.report import layer_specs_with_bits

    specs = [s for s in layer_specs_with_bits(model, example, plan) if s.op != "other"]
    out: dict[str, dict[str, float]] = {}
    for s, r in zip(specs, dev.measure([MeasureRequest.for_layer(s) for s in specs])):
        d = out.setdefault(stage_of(s.name), {})
        d[s.op] = d.get(s.op, 0.0) + r.latency_ms
        d["total"] = d.get("total", 0.0) + r.latency_ms
    return out


def uniform_width_study(ref: Any, device: str, widths: Sequence[float], *,
                        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every prunable channel group kept at the same fraction ``r`` of its channels (rounded), every conv/linear at
    8 or 4-bit weights, activations of the quantized layers at 8 or 4 bits; latency / the unpruned 8-bit model's.

    Returns ``{"original_ms", "uniform_width": [{"width": r, "W8A8": ratio, ...}, ...]}``; ``say`` gets the table
    line by line.
    """
    from hwloop.devices import create_device
    from hwloop.search.space import SearchSpace, SpaceOptions

    ex, dev = ref.example_input(), create_device(device)
    t0 = layer_sum_ms(dev, ref.build().eval(), ex)
    rows = []
    say(f"unpruned 8-bit ResNet-20 on {device}: {t0:.4f} ms; latency / unpruned at uniform width r:")
    say(f"  {'r':>6s} " + " ".join(f"{f'W{w}A{a}':>7s}" for a in (8, 4) for w in (8, 4)))
    for r in widths:
        row: dict[str, float] = {"width": r}
        for a_bits in (8, 4):
            space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=a_bits, tile=32, bit_levels=(4, 8)))
            cfg = {f"width:{g.key}": max(1, round(r * g.channels)) / g.channels for g in space.graph.groups}
            for w_bits in (8, 4):
                model, plan = space.compress({**cfg, **{f"bits:{n}": w_bits for n in space.bit_layers}})
                row[f"W{w_bits}A{a_bits}"] = layer_sum_ms(dev, model, ex, plan) / t0
        rows.append(row)
        say(f"  {r:6.3f} " + " ".join(f"{row[f'W{w}A{a}']:7.3f}" for a in (8, 4) for w in (8, 4)))
    return {"original_ms": t0, "uniform_width": rows}


def stage_split_study(ref: Any, device: str, fill: Path | None, *,
                      say: Callable[[str], None] = print) -> dict[str, Any]:
    """Where CIFAR ResNet-20's latency on ``device`` is (per stage and op), and, given a saved plan directory
    ``fill``, each stage's cost under that plan and what-if widths around it (ratios to the original)."""
    from hwloop.compress.extract import load_compressed
    from hwloop.devices import create_device
    from hwloop.search.space import SearchSpace, SpaceOptions

    ex, dev = ref.example_input(), create_device(device)
    base = stage_latency(dev, ref.build().eval(), ex)
    t0 = sum(d["total"] for d in base.values())
    report: dict[str, Any] = {"original_ms": t0, "stages": base}
    say(f"original {t0:.4f} ms")
    for k, d in base.items():
        say(f"  {k:7s} {d['total']:.4f} ms {d['total'] / t0:6.1%}  conv {d.get('conv2d', 0.0) / t0:6.1%}")
    if fill is None or not fill.is_dir():
        return report
    fm, fplan = load_compressed(fill)
    fs = stage_latency(dev, fm, ex, fplan)
    report["fill_plan_vs_own"] = {k: fs[k]["total"] / base[k]["total"] for k in base}
    say(f"fill plan vs each stage's own cost: { {k: round(v, 2) for k, v in report['fill_plan_vs_own'].items()} }")
    sp = SearchSpace.from_ref(ref, SpaceOptions(bits=True, a_bits=8, tile=32, bit_levels=(4, 8)))
    groups = {g.key: g.channels for g in sp.graph.groups}

    def ratio(widths: Mapping[str, int], bits: Mapping[str, int]) -> float:
        cfg: dict[str, float] = {f"width:{k}": widths.get(k, c) / c for k, c in groups.items()}
        cfg.update({f"bits:{n}": b for n, b in bits.items()})
        m, p = sp.compress(cfg)
        return sum(d["total"] for d in stage_latency(dev, m, ex, p).values()) / t0

    lo = {k: sp.min_keep(c) for k, c in groups.items()}
    w, b = dict(fplan.widths), dict(fplan.w_bits)
    s1 = ("conv1", "layers.0.conv1", "layers.1.conv1", "layers.2.conv1")
    cases: dict[str, tuple[Mapping[str, int], Mapping[str, int]]] = {
        "every group at its minimum": (lo, b),
        "conv1 group 16, every other group at its minimum": ({**lo, "conv1": 16}, b),
        "fill plan": (w, b),
        **{f"fill plan, conv1 group {c}": ({**w, "conv1": c}, b) for c in (4, 8, 16)},
        "fill plan, stage-1 internal groups 8": ({**w, **{k: 8 for k in s1[1:]}}, b),
        "fill plan, all four stage-1 groups 8": ({**w, **{k: 8 for k in s1}}, b),
        "full widths, 4-bit weights": ({}, {n: 4 for n in sp.bit_layers}),
        **{f"every group >= {r:.0%} (min_keep_ratio {r})": ({k: max(lo[k], -(-int(r * 100) * c // 100))
                                                             for k, c in groups.items()}, b) for r in (0.25, 0.5)},
    }
    report["what_if"] = {name: ratio(*args) for name, args in cases.items()}
    for name, v in report["what_if"].items():
        say(f"  {name:52s} {v:.3f} x original")
    return report


def schedule_rows(results: Path, runs: Mapping[str, str], *, method: str = "predictor") -> list[dict[str, Any]]:
    """One row per run folder of ``results`` (``runs``: folder → schedule label) from its ``report.json``: where the
    search ended (soft / hard sizes), the measured ratio to the run's own baseline, accuracy, cost. A folder
    without ``report.json`` is skipped with a note on stderr."""
    rows = []
    for folder, label in runs.items():
        path = results / folder / "report.json"
        if not path.is_file():
            print(f"skipping {folder}: no report.json", file=sys.stderr)
            continue
        rep = json.loads(path.read_text(encoding="utf-8"))
        b, x = rep["baseline"], rep["runs"][method]
        rows.append({"folder": folder, "schedule": label, "target": x["target"],
                     "soft_end": x.get("soft_final_ratio", math.nan),
                     "hard_search": x.get("hard_search_ratio", math.nan),
                     "measured_ratio": x["measured_ms"] / b["measured_ms"], "pred_error": x["prediction_error"],
                     "accuracy": x["accuracy"], "accuracy_extracted": x["accuracy_extracted"],
                     "baseline_accuracy": b["accuracy"], "drop": x["accuracy_drop"],
                     "macs": x["macs"] / x["original_macs"], "w_bits": x["mean_w_bits"], "cost": x["cost_ratio"],
                     "search_s": x["seconds"]["total"], "baseline_s": b["seconds"]})
    return rows


def schedule_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`schedule_rows` (``front.md``)."""
    lines = [("| run | schedule | target | latency ratio, search end (soft / hard) | measured / baseline | "
              "pred. error | accuracy % (after extraction) | baseline % | Δacc | MACs | mean w-bits | "
              "wall s (search / baseline) | cost |"),
             "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| `{r['folder']}` | {r['schedule']} | {r['target']:.2f} | {r['soft_end']:.3f} / "
                     f"{r['hard_search']:.3f} | {r['measured_ratio']:.3f} | {r['pred_error']:+.1%} | "
                     f"{r['accuracy']:.2f} ({r['accuracy_extracted']:.2f}) | {r['baseline_accuracy']:.2f} | "
                     f"{-r['drop']:+.2f} | {r['macs']:.1%} | {r['w_bits']:.1f} | "
                     f"{r['search_s']:.0f} / {r['baseline_s']:.0f} | {r['cost']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_schedules(rows: Sequence[Mapping[str, Any]], colors: Mapping[str, str], path: Path, *, device: str,
                   title: str) -> None:
    """Accuracy vs measured latency / the baseline's, one line per schedule label (``colors``: label → colour), the
    baselines as one point (their mean accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    base = [r["baseline_accuracy"] for r in rows]
    if base:
        ax.scatter([1.0], [sum(base) / len(base)], color="k", label="unpruned, same epochs")
    for label, color in colors.items():
        pts = sorted((r["measured_ratio"], r["accuracy"], r["target"]) for r in rows if r["schedule"] == label)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        for m, a, t in pts:
            ax.annotate(f"target {t:.2f}", (m, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel(f"measured latency on {device} / unpruned")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
