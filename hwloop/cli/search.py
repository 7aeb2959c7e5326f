"""``hwloop search run SPEC``, ``hwloop search space MODEL`` and ``hwloop search show RUN_DIR``.

``run`` executes a search spec (``search/*.toml``): pretrain or load a checkpoint → search
with the latency model in the loss → extract → fine-tune → measure on the device, writing
a run directory (log, plan, safetensors weights, metrics JSON, PNG plots).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from hwloop.cli._app import search_app

__all__ = ["run", "show", "space"]


@search_app.command("run")
def run(
    spec: Path = typer.Argument(..., help="search spec TOML, e.g. search/digits_small_cnn.toml"),
    out: Path = typer.Option(None, "--out", "-o", help="run directory (default: runs/<spec name>)"),
    predictor: str = typer.Option(None, "--predictor", help="predictor file (overrides [predictor] path)"),
    objective: str = typer.Option(None, "--objective", help="auto | learned | surrogate | flops"),
    target: float = typer.Option(None, "--target", help="latency budget as a fraction of the original"),
    no_measure: bool = typer.Option(False, "--no-measure", help="skip measuring on the device"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Run a differentiable hardware-aware compression search from a spec."""
    import dataclasses

    from rich.console import Console

    from hwloop.search.pipeline import run_spec
    from hwloop.search.spec import check_runnable, load_spec

    s = load_spec(spec)
    if predictor or objective:
        changes: dict[str, Any] = {k: v for k, v in (("path", predictor), ("objective", objective)) if v}
        s = dataclasses.replace(s, predictor=dataclasses.replace(s.predictor, **changes))
    if target is not None:
        s = dataclasses.replace(s, budget=dataclasses.replace(s.budget, target=target))
    if no_measure:
        s = dataclasses.replace(s, device=dataclasses.replace(s.device, measure=False))
    s = type(s).from_dict(s.to_dict(), s.path)  # re-validate overrides
    check_runnable(s)
    console = Console(stderr=True)
    run_dir = out or Path("runs") / s.name
    metrics = run_spec(s, run_dir, progress=progress, echo=lambda m: console.print(m, highlight=False))
    _print_summary(metrics)
    console.print(f"run directory: {run_dir}")


def _print_summary(m: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"search {m.get('name')}")
    t.add_column("metric")
    t.add_column("original", justify="right")
    t.add_column("searched", justify="right")
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    t.add_row("accuracy %", fmt(m.get("original_accuracy")), fmt(m.get("accuracy")))
    t.add_row(f"latency model ({m.get('latency_unit')})", fmt(m.get("model_original")), fmt(m.get("model_predicted")))
    if "predicted_ms" in m:
        t.add_row("predicted ms", fmt(m.get("original_predicted_ms")), fmt(m.get("predicted_ms")))
    if "measured_ms" in m:
        t.add_row(f"measured ms ({m.get('device')})", fmt(m.get("original_measured_ms")), fmt(m.get("measured_ms")))
    t.add_row("MACs", fmt(m.get("original_macs")), fmt(m.get("macs")))
    t.add_row("params", fmt(m.get("original_params")), fmt(m.get("params")))
    if "baseline_accuracy" in m:
        t.add_row("baseline accuracy % (same epochs)", fmt(m.get("baseline_accuracy")), "")
        t.add_row("wall time vs baseline", "1.0", fmt(m.get("cost_ratio")))
    Console().print(t)
    for line in _honesty_lines(m):
        print(line)


def _ratio(v: Any) -> str:
    return "-" if v is None else f"{v:.3f} x"


def _honesty_lines(m: dict[str, Any]) -> list[str]:
    """Where the method itself ended, what repairs changed, the budget verdict, and predicted vs measured ratios
    (runs recorded before these fields existed print only what they have)."""
    lines = []
    if "target" in m or "search_ratio" in m:
        lines.append(f"budget: target {_ratio(m.get('target'))}; the method itself ended at "
                     f"{_ratio(m.get('search_ratio'))} ({m.get('latency_model')} latency model), the result "
                     f"{_ratio(m.get('model_ratio'))}")
    for r in m.get("repairs") or []:
        same = abs(r["after"] - r["before"]) <= 1e-9 * max(abs(r["before"]), 1e-30)
        lines.append(f"repair: {r.get('step')} ({r.get('when')}): {r['before']:.4g} -> {r['after']:.4g} "
                     f"{m.get('latency_unit') or ''}".rstrip() + (" (no change)" if same else ""))
    if "repairs" in m and not m["repairs"]:
        lines.append("repairs: none")
    if m.get("budget_status"):
        reason = m.get("budget_reason")
        lines.append(f"status: {m['budget_status']}" + (f" ({reason})" if reason else ""))
    if "measured_ratio" in m:
        ci = m.get("measured_ratio_ci")
        ci_text = f", 95% interval {ci[0]:.3f}-{ci[1]:.3f}" if isinstance(ci, list) and len(ci) == 2 else ""
        unstable = "; UNSTABLE, measure again on a quieter machine" if m.get("measure_unstable") else ""
        if m.get("predicted_ratio") is not None:
            pred = f"predicted {_ratio(m['predicted_ratio'])} vs "
        elif m.get("model_ratio") is not None:   # no predictor in ms: the search's own latency model
            pred = f"{m.get('latency_model')} latency model {_ratio(m['model_ratio'])} vs "
        else:
            pred = ""
        err = (f" (prediction error {m['prediction_error']:+.1%} in ms)" if m.get("prediction_error") is not None
               else "")
        lines.append(f"latency ratio: {pred}measured {_ratio(m['measured_ratio'])} on {m.get('device')} "
                     f"({m.get('measure_method')}{ci_text}){err}{unstable}")
        low = ci[0] if isinstance(ci, list) and len(ci) == 2 else m["measured_ratio"]
        if m.get("target") is not None and low > m["target"]:
            lines.append(f"measured: MISSES the target {_ratio(m['target'])} on the device (the status above is "
                         f"judged in the {m.get('latency_model')} latency model)")
    return lines


@search_app.command("space")
def space(
    model: str = typer.Argument(..., help="built-in model name or package.module:factory"),
    kwargs: str = typer.Option(None, "--kwargs", help="model kwargs as a JSON object"),
    input_shape: str = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 3,32,32"),
    lowrank: bool = typer.Option(False, "--lowrank", help="include low-rank dimensions"),
    bits: bool = typer.Option(False, "--bits", help="include bit-width dimensions"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List the searchable dimensions of a model (coupled channel groups, ranks, bit-widths)."""
    from rich.console import Console
    from rich.table import Table

    from hwloop.cli._common import parse_model_ref
    from hwloop.search.space import SearchSpace, SpaceOptions

    ref = parse_model_ref(model, kwargs, input_shape)
    sp = SearchSpace.from_ref(ref, SpaceOptions(lowrank=lowrank, bits=bits))
    groups = {f"width:{g.key}": g for g in sp.graph.groups}
    rows: list[dict[str, Any]] = []
    for d in sp.dimensions():
        g = groups.get(d.name)
        rows.append({"name": d.name, "kind": d.kind, "size": d.size, "low": round(d.low, 4), "high": d.high,
                     "choices": list(d.choices), "coupled": list(g.out_layers) if g else []})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"search space of {ref.label}: {len(rows)} dimensions")
    for c in ("name", "kind", "size", "range / choices", "coupled layers"):
        t.add_column(c)
    for r in rows:
        rng = f"{r['low']:.3f}..{r['high']}" if r["kind"] == "ratio" else ",".join(map(str, r["choices"]))
        t.add_row(r["name"], r["kind"], str(r["size"]), rng, ", ".join(c for c in r["coupled"]))
    Console().print(t)


_SUMMARY_NUMBERS = ("target", "search_ratio", "model_ratio", "measured_ratio", "predicted_ratio", "prediction_error",
                    "original_accuracy", "accuracy", "model_original", "model_predicted", "original_predicted_ms",
                    "predicted_ms", "original_measured_ms", "measured_ms", "original_macs", "macs",
                    "original_params", "params", "baseline_accuracy", "cost_ratio")


def _check_honesty_fields(p: Path, m: dict[str, Any]) -> None:
    """``repairs`` a list of {step, when, before, after} objects; ``budget_status``/``budget_reason`` text."""
    import math

    from hwloop.errors import SearchError

    reps = m.get("repairs")
    if reps is not None:
        if not isinstance(reps, list):
            raise SearchError(f"{p}: repairs is a JSON {type(reps).__name__}; allowed: a list of "
                              "{step, when, before, after} objects")
        for i, r in enumerate(reps):
            ok = isinstance(r, dict) and all(
                isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) and math.isfinite(r[k])
                for k in ("before", "after"))
            if not ok:
                raise SearchError(f"{p}: repairs[{i}]={r!r:.80} is malformed; allowed: an object with numbers "
                                  "'before' and 'after'")
    for k in ("budget_status", "budget_reason"):
        v = m.get(k)
        if v is not None and not isinstance(v, str):
            raise SearchError(f"{p}: {k}={v!r:.80} is not text; allowed: a string or null")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line SearchError when it is unreadable, not JSON or not an object."""
    from hwloop.errors import SearchError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SearchError(f"{path} is not UTF-8 text (byte {e.start}); {what} must be a UTF-8 JSON object") from e
    except OSError as e:
        raise SearchError(f"{path} cannot be read ({e.strerror}); {what} must be a JSON file") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SearchError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {what} must be a JSON object") from e
    if not isinstance(obj, dict):
        raise SearchError(f"{path} holds a JSON {type(obj).__name__}; {what} must be a JSON object")
    return obj


@search_app.command("show")
def show(run_dir: Path = typer.Argument(..., help="a run directory written by 'hwloop search run'")) -> None:
    """Print the summary of a finished search run (metrics.json; plan.json and weights are checked)."""
    import math

    from hwloop.errors import HwloopError, SearchError

    p = run_dir / "metrics.json"
    if not p.is_file():
        raise SearchError(f"{run_dir} has no metrics.json; is it a run directory of 'hwloop search run'?")
    doc = _read_json_object(p, "metrics.json")
    m = doc.get("metrics")
    if not isinstance(m, dict):
        got = "no 'metrics' key" if "metrics" not in doc else f"'metrics' is a JSON {type(m).__name__}"
        raise SearchError(f"{p}: {got}; allowed: a JSON object {{\"metrics\": {{...}}}} as 'hwloop search run' "
                          "writes it")
    for k in _SUMMARY_NUMBERS:
        v = m.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise SearchError(f"{p}: {k}={v!r} is not a number; allowed: a finite number or null")
    _check_honesty_fields(p, m)
    notes = []
    plan_path = run_dir / "plan.json"
    if plan_path.exists():
        from hwloop.compress.plan import CompressionPlan

        try:
            plan = CompressionPlan.from_dict(_read_json_object(plan_path, "plan.json"))
        except SearchError:
            raise
        except HwloopError as e:
            raise SearchError(f"{plan_path}: {e}") from e
        notes.append(f"plan: {len(plan.widths)} channel groups, {len(plan.lowrank)} low-rank layers, "
                     f"{len(plan.w_bits)} quantized layers")
    w = run_dir / "weights.safetensors"
    if w.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(w), framework="pt") as f:
                n = len(list(f.keys()))
        except Exception as e:  # safetensors raises its own error types (and OSError) on a malformed header
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SearchError(f"{w} is not a readable safetensors file ({first})") from e
        notes.append(f"weights: {n} tensors")
    _print_summary(m)
    for line in notes:
        print(line)
