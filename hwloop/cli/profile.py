"""``hwloop profile MODEL --device NAME`` and ``hwloop demo``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from hwloop.cli._app import app
from hwloop.cli._common import console, err_console, parse_model_ref, timing_with


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def print_report(rep: Any, *, top: int | None = None, timing: Any = None) -> None:
    """Print a :class:`hwloop.profiling.ProfileReport` as a rich table plus the whole-model line.

    Unstable measurements are marked ``*``; a loaded machine and unstable rows get a warning
    that names the remedy."""
    from hwloop.profiling import timing_warnings

    table = Table(title=f"{rep.model.label} on {rep.device_name} (fingerprint {rep.fingerprint_key})")
    for col, just in (("#", "right"), ("layer", "left"), ("op", "left"), ("output", "left"), ("MMACs", "right"),
                      ("isolated ms", "right"), ("in-context ms", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    rows = rep.rows if top is None else rep.rows[:top]
    for i, r in enumerate(rows):
        table.add_row(str(i), r.spec.name, r.spec.op + (f"/{r.spec.variant}" if r.spec.variant else ""),
                      "x".join(map(str, r.spec.out_shape)), f"{r.spec.macs / 1e6:.3f}",
                      _fmt(r.isolated_ms) + (" *" if r.unstable else ""), _fmt(r.in_context_ms),
                      style="yellow" if r.unstable else None)
    console.print(table)
    if top is not None and len(rep.rows) > top:
        console.print(f"... {len(rep.rows) - top} more layers (use --all)")
    ratio = rep.isolated_sum_ms / rep.model_ms if rep.model_ms and not math.isnan(rep.model_ms) else float("nan")
    console.print(f"[bold]whole model: {_fmt(rep.model_ms)} ms{' *' if rep.model_unstable else ''}[/bold] "
                  f"(CV {rep.model_cv:.1%}); "
                  f"sum of isolated layers: {rep.isolated_sum_ms:.4f} ms ({ratio:.0%} of the whole model); "
                  f"{rep.workload.macs / 1e6:.2f} MMACs, {rep.workload.params:,} params, "
                  f"{len(rep.workload.layers)} ops traced via {rep.workload.method}")
    again = f", measured again {rep.remeasured_unstable} unstable stored rows" if rep.remeasured_unstable else ""
    load = f"; load average {rep.load['load1']} on {rep.load['cores']} cores" if rep.load else ""
    console.print(f"measured {rep.measured} jobs, reused {rep.reused} from the store{again}"
                  + (f" ({rep.store_url})" if rep.store_url else "") + load)
    for e in rep.errors:
        console.print(f"[red]failed[/red] {e}")
    for w in [*timing_warnings(rep.load, rep.unstable_count, timing), *([rep.stale] if rep.stale else [])]:
        err_console.print(f"[yellow]warning:[/yellow] {w}")


def run_profile(model: str, device: str, store: str | None, kwargs: str | None, input_shape: str | None, batch: int,
                dtype: str, repeats: int | None, warmup: int | None, no_store: bool, show_all: bool,
                remeasure: bool = False, anchor: str | None = None) -> Any:
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.profiling import profile_model

    ref = parse_model_ref(model, kwargs, input_shape, batch, dtype)
    anchor_ref = parse_model_ref(anchor, None, input_shape, batch, dtype) if anchor else None
    prof = load_profile(device)
    timing = timing_with(prof.timing, repeats=repeats, warmup=warmup)
    st = None
    if not no_store:
        from hwloop.store import MeasurementStore

        st = MeasurementStore(store)
    dev = create_device(prof)
    try:
        rep = profile_model(ref, dev, st, timing, remeasure=remeasure)
        anchored = _anchored(dev, ref, anchor_ref, timing, st) if anchor_ref is not None else None
    finally:
        dev.close()
        if st is not None:
            st.close()
    print_report(rep, top=None if show_all else 40, timing=timing)
    if anchored is not None:
        a = anchored.extra["anchor"]
        console.print(f"[bold]anchored whole model: {_fmt(anchored.latency_ms)} ms[/bold]"
                      f"{' *' if anchored.unstable else ''} = {a['ratio']:.4f} (interleaved, 95% CI "
                      f"{a['ratio_ci'][0]:.4f}–{a['ratio_ci'][1]:.4f}) × the anchor's reference {a['ms']:.4f} ms "
                      f"({a['source']}); the anchor ran at {a['now_ms'] / a['ms']:.3f}× its reference just now")
        if st is None:
            err_console.print("[yellow]warning:[/yellow] --no-store: the anchor's reference was measured now and not "
                              "kept, so this figure is not comparable with other runs")
    return rep


def _anchored(dev: Any, ref: Any, anchor_ref: Any, timing: Any, st: Any) -> Any:
    from hwloop.devices import MeasureRequest
    from hwloop.devices.anchor import calibrate_anchor, measure_anchored

    anchor = calibrate_anchor(dev, MeasureRequest.for_model(anchor_ref), timing, store=st)
    (res,) = measure_anchored(dev, [MeasureRequest.for_model(ref)], anchor, timing)
    if not res.ok:
        err_console.print(f"[red]failed[/red] anchored measurement: {res.error}")
        return None
    return res


@app.command("profile")
def profile(
    model: str = typer.Argument(..., help="built-in model (small_cnn, resnet20, resnet56, vgg16, mobilenetv2) "
                                          "or package.module:factory"),
    device: str = typer.Option("local-cpu", "--device", "-d", help="device name or profile path"),
    store: str = typer.Option(None, "--store", help="store URL or SQLite path (default ~/.hwloop/measurements.db)"),
    kwargs: str = typer.Option(None, "--kwargs", help="model factory kwargs as JSON"),
    input_shape: str = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 3,32,32"),
    batch: int = typer.Option(1, "--batch", min=1),
    dtype: str = typer.Option("float32", "--dtype"),
    repeats: int = typer.Option(None, "--repeats", help="timed samples per job"),
    warmup: int = typer.Option(None, "--warmup"),
    no_store: bool = typer.Option(False, "--no-store", help="measure without storing"),
    show_all: bool = typer.Option(False, "--all", help="print every layer"),
    remeasure: bool = typer.Option(False, "--remeasure", help="measure again instead of reusing stored rows (the "
                                                              "newest row is used; older ones stay as history)"),
    anchor: str = typer.Option(None, "--anchor", help="also give the whole-model latency anchored to this built-in "
                                                      "model (interleaved with it, times its reference kept in the "
                                                      "store): comparable across runs on a drifting machine"),
) -> None:
    """Profile a model: per-layer table (isolated and in context) and whole-model latency."""
    run_profile(model, device, store, kwargs, input_shape, batch, dtype, repeats, warmup, no_store, show_all,
                remeasure, anchor)


@app.command("demo")
def demo(
    store: str = typer.Option(None, "--store", help="store URL or SQLite path (default ~/.hwloop/measurements.db)"),
    device: str = typer.Option("local-cpu", "--device", "-d", help="a cpu-backend device profile"),
    out: Path = typer.Option(None, "--out", help="folder for the run (default $HWLOOP_HOME/demo)"),
    target: float = typer.Option(0.6, "--target", help="latency target as a fraction of the original, in (0, 1)"),
    quick: bool = typer.Option(False, "--quick", help="a smaller budget (fewer epochs and layers; for tests)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="measure again instead of reusing stored rows"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """The whole loop on the embedded default: profile the digits CNN on the local CPU, fit a latency
    predictor from those measurements, search to a latency target, extract the smaller model and measure
    it against the original on the device."""
    from hwloop.demo import DemoConfig, run_demo

    cfg = DemoConfig(device=device, store=store, out=out, target=target, quick=quick, remeasure=remeasure,
                     progress=progress)
    run_demo(cfg, echo=console.print, warn=lambda w: err_console.print(f"[yellow]warning:[/yellow] {w}"))
