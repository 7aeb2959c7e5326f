"""``hwloop search run SPEC``, ``hwloop search space MODEL`` and ``hwloop search show RUN_DIR``.

``run`` executes a search spec (``search/*.toml``): pretrain or load a checkpoint → search
with the latency model in the loss → extract → fine-tune → measure on the device, writing
a run directory (log, plan, safetensors weights, metrics JSON, PNG plots).
"""

from __future__ import annotations

import json
from pathlib import Path

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
        s = dataclasses.replace(s, predictor=dataclasses.replace(
            s.predictor, **{k: v for k, v in (("path", predictor), ("objective", objective)) if v}))
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


def _print_summary(m: dict) -> None:
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
    rows = []
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


_SUMMARY_NUMBERS = ("original_accuracy", "accuracy", "model_original", "model_predicted", "original_predicted_ms",
                    "predicted_ms", "original_measured_ms", "measured_ms", "original_macs", "macs",
                    "original_params", "params", "baseline_accuracy", "cost_ratio")


def _read_json_object(path: Path, what: str) -> dict:  # type: ignore[type-arg]
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
