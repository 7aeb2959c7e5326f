"""``hwloop bench list|run``: the benchmark and recorder scripts in the checkout's ``benchmarks/``.

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
