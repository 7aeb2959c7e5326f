"""``hwloop bench list|run``: the benchmark and recorder scripts in the checkout's ``benchmarks/``; ``hwloop bench
methods SPEC``: the evidence harness (methods vs controls, :mod:`hwloop.search.harness`).

Benchmarks print the figures the docs quote; they are scripts (not timed unit tests) so
their output can be re-run and compared on any machine.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table

from hwloop.cli._app import bench_app
from hwloop.cli._common import console
from hwloop.errors import ConfigError


def _bench_dir() -> Path:
    for d in (Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"):
        if d.is_dir():
            return d
    raise ConfigError("no benchmarks/ folder found; run from an hwloop checkout")


def _scripts() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_bench_dir().glob("*.py")) if not p.name.startswith("_")}


def _summary(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@bench_app.command("list")
def list_benchmarks() -> None:
    """List the benchmark and data-set recorder scripts."""
    table = Table(title=f"benchmarks ({_bench_dir()})")
    table.add_column("name")
    table.add_column("what it measures")
    for name, path in _scripts().items():
        table.add_row(name, _summary(path))
    console.print(table)


@bench_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_benchmark(ctx: typer.Context, name: str = typer.Argument(..., help="script name, e.g. bench_harness")) -> None:
    """Run a benchmark script; arguments after ``--`` are passed to it (``-- --help`` shows its own)."""
    scripts = _scripts()
    key = name.removesuffix(".py")
    if key not in scripts:
        raise ConfigError(f"benchmark {name!r} is unknown; allowed: {', '.join(scripts)}")
    rc = subprocess.call([sys.executable, str(scripts[key]), *ctx.args])
    if rc:
        raise typer.Exit(rc)


@bench_app.command("methods")
def bench_methods(
    spec: Path = typer.Argument(..., help="harness spec TOML, e.g. search/bench-methods-cifar10-resnet20.toml"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default: search/results/<spec name>)"),
    max_cells: int = typer.Option(None, "--max-cells", min=1, help="stop after this many new cells (smoke runs)"),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="starting weights instead of the spec's [task] checkpoint "
                                                           "(default --out then ends in -<file stem>)"),
    only: str = typer.Option(None, "--only", help="run only cells whose key contains this text, "
                                                  "e.g. l1l2__asic-tpu32__t0.5__s0"),
    table_only: bool = typer.Option(False, "--table-only", help="only write the table and plot from the finished "
                                                               "cells (safe while another run adds cells)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
) -> None:
    """Methods vs controls (uniform, magnitude, FLOPs, random, TPE, TPE to plateau) on one task, devices, targets
    and seeds: one table (mean ± std) and one Pareto plot. Resumable: finished cells are skipped."""
    import dataclasses

    from rich.console import Console

    from hwloop.search.harness import run_harness
    from hwloop.search.harness_spec import load_harness_spec

    s = load_harness_spec(spec)
    err = Console(stderr=True)
    run_dir = out or Path("search/results") / s.name
    if checkpoint is not None:
        s = dataclasses.replace(s, task=dataclasses.replace(s.task, checkpoint=str(checkpoint)))
        run_dir = out or Path("search/results") / f"{s.name}-{checkpoint.stem}"
    summary = run_harness(s, run_dir, log=lambda m: err.print(m, highlight=False, markup=False, soft_wrap=True),
                          progress=progress, max_cells=0 if table_only else max_cells, only=(lambda c: only in c.key) if only else None)
    if summary["table"] is not None:
        print(Path(summary["table"]).read_text(encoding="utf-8"))
    err.print(f"{summary['done']} of {summary['cells']} cells done ({summary['ran']} this run"
              f"{', failed: ' + ', '.join(summary['failed']) if summary['failed'] else ''}); outputs in {run_dir}; "
              "run the same command again to resume", highlight=False, markup=False)
    if summary["failed"]:
        raise typer.Exit(1)
