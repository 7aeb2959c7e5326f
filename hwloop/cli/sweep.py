"""``hwloop sweep SPEC --device NAME [--device NAME2 ...]``: measure a sweep spec, resumably."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from hwloop.cli._app import app
from hwloop.errors import ConfigError, HwloopError

__all__ = ["sweep"]


def _summary_table(summary: Any, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("device", "measured", "skipped", "by others", "failed", "wall s", "error"):
        table.add_column(col, justify="right" if col not in ("device", "error") else "left")
    for name, st in summary.per_device.items():
        table.add_row(name, str(st["measured"]), str(st["skipped"]), str(st["others"]), str(st["failed"]),
                      f"{st['wall_s']:.1f}", st.get("error") or "")
    if len(summary.per_device) > 1:
        table.add_row("total", str(summary.measured), str(summary.skipped), str(summary.others),
                      str(summary.failed), f"{summary.wall_s:.1f}", "", style="bold")
    return table


#: what a sweep may ask a device that allocates real tensors to run (an ``asic`` simulation allocates none):
#: 2^28 elements per tensor and 4 GiB of inputs + outputs + weights per layer
MAX_TENSOR_ELEMENTS = 2**28
MAX_LAYER_BYTES = 4 * 2**30


def _check_sizes(reqs: list[Any], profiles: list[Any], spec: Path) -> None:
    """Refuse, before anything is measured, layers and models too big to allocate (a clear line, not an OOM)."""
    from hwloop.agent import AgentLimits, check_request_limits
    from hwloop.models import BUILTIN_MODELS, check_size

    if all(p.backend == "asic" for p in profiles):
        return
    limits = AgentLimits(max_elements=MAX_TENSOR_ELEMENTS, max_memory_bytes=MAX_LAYER_BYTES)
    for r in reqs:
        try:
            if r.model is not None:
                check_size(r.model)
                if r.model.name not in BUILTIN_MODELS:
                    continue  # a user model (opted in with --allow-import): the agent's limits take built-ins only
            check_request_limits(r.to_dict(), limits)
        except HwloopError as e:
            what = (f"layer {r.layer.op} in_shape={list(r.layer.in_shape)} out_channels={r.layer.out_channels}"
                    if r.layer is not None else f"model {r.model.label}")
            raise ConfigError(f"sweep spec {spec}: {what}: {str(e).replace('the agent limit ', '')}; "
                              f"allowed: tensors of <= {MAX_TENSOR_ELEMENTS} elements and <= "
                              f"{MAX_LAYER_BYTES // 2**30} GiB per layer") from e


@app.command("sweep")
def sweep(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., help="sweep spec TOML (see docs/store.md)"),
    device: list[str] = typer.Option(["local-cpu"], "--device", "-d",
                                     help="device name or profile path; repeat for a farm (one thread each)"),
    store: str = typer.Option(None, "--store", help="store URL or SQLite path (default ~/.hwloop/measurements.db)"),
    repeats: int = typer.Option(None, "--repeats", help="override timing repeats"),
    warmup: int = typer.Option(None, "--warmup", help="override timing warm-up runs"),
    limit: int = typer.Option(None, "--limit", help="only the first N requests of the spec"),
    batch_size: int = typer.Option(8, "--batch-size", help="requests per device.measure call"),
    retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed",
                                      help="re-measure requests whose stored row is a failure"),
    adaptive: bool = typer.Option(False, "--adaptive", help="pick what to measure by predictor uncertainty"),
    budget: int = typer.Option(None, "--budget", help="measurements for --adaptive"),
    strategy: str = typer.Option("error", "--strategy",
                                 help="--adaptive selection: error (budget follows the committee's out-of-bag "
                                      "misses per op kind, around badly predicted layers), diverse, spread, random"),
    rounds: int = typer.Option(8, "--rounds", help="--adaptive rounds after the random seed set"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
    lease: float = typer.Option(60.0, "--lease",
                                help="seconds a claim on work lives without a heartbeat; sweeps of one spec into "
                                     "one store split the work, and a dead one's claims are taken over after this"),
    log_stored: bool = typer.Option(False, "--log-stored",
                                    help="print one 'stored device=… workload=… timing=… status=…' line per "
                                         "committed result on stdout"),
) -> None:
    """Measure every request of SPEC that the store lacks, on one or several devices."""
    from hwloop.cli._common import console
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.store import MeasurementStore
    from hwloop.store._claims import check_lease
    from hwloop.sweep import SweepSpec, run_farm

    sp = SweepSpec.from_toml(spec)
    check_lease(lease, "--lease")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    if adaptive and (budget is None or budget < 1):
        raise ConfigError("--adaptive needs --budget N (N >= 1 measurements)")
    if adaptive:
        from hwloop.predict.adaptive import STRATEGIES

        if strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
        if rounds < 1:
            raise ConfigError(f"--rounds {rounds} must be >= 1")
    if adaptive and len(device) != 1:
        raise ConfigError(f"--adaptive runs on one device, got {len(device)}: {', '.join(device)}")
    if len(set(device)) != len(device):
        raise ConfigError(f"--device names must be distinct, got {', '.join(device)}")
    profiles = [load_profile(d) for d in device]
    overrides = {k: v for k, v in {"repeats": repeats, "warmup": warmup}.items() if v is not None}
    timings = {p.name: sp.timing_for(p.timing) for p in profiles}
    if overrides:
        from hwloop.devices.base import TimingConfig

        timings = {n: TimingConfig.from_dict({**t.to_dict(), **overrides}) for n, t in timings.items()}
    all_reqs = sp.requests()
    _check_sizes(all_reqs, profiles, spec)
    handler = None
    if log_stored:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log = logging.getLogger("hwloop.sweep")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    st = MeasurementStore(store)
    devs: list[Any] = []
    try:
        devs = [create_device(p) for p in profiles]
        if adaptive:
            try:
                from hwloop.predict.adaptive import run_adaptive_sweep
            except ImportError as e:
                raise ConfigError(f"--adaptive needs hwloop.predict.adaptive, which cannot be imported ({e})") from e
            result = run_adaptive_sweep(sp, devs[0], st, budget=budget, timing=timings[devs[0].name],
                                        rounds=rounds, strategy=strategy, progress=progress)
            console.print(result)
            return
        reqs = all_reqs
        if limit is not None:
            reqs = reqs[:limit]
        before = st.count()
        try:
            summary = run_farm(reqs, devs, st, progress=progress, batch_size=batch_size,
                               retry_failed=retry_failed, timings=timings, lease_s=lease)
        except KeyboardInterrupt:
            if isinstance(ctx.obj, dict):  # main() prints it as the one "interrupted; ..." line
                ctx.obj["interrupted"] = (f"{st.count() - before} new results were stored in {st!r}; "
                                          "run the same command again to measure the rest")
            raise
    finally:
        for d in devs:
            d.close()
        st.close()
        if handler is not None:
            logging.getLogger("hwloop.sweep").removeHandler(handler)
    console.print(_summary_table(summary, f"sweep {sp.name}: {len(reqs)} requests → {st!r}"))
    console.print(f"sweep {sp.name}: measured {summary.measured}, already stored {summary.skipped}, "
                  f"stored by other workers {summary.others}, failed {summary.failed}"
                  + (f", took over {summary.taken_over} expired claim(s)" if summary.taken_over else ""),
                  highlight=False, soft_wrap=True)
    if summary.errors:
        raise typer.Exit(1)
