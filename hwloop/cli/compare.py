"""``hwloop compare SPEC``, ``hwloop search optuna SPEC`` and ``hwloop search worker --study NAME --storage URL``.

``search optuna`` creates (or resumes) an Optuna study over the same space as the differentiable
search and runs it with ``--workers`` processes; ``search worker`` joins a running study from any
machine that reaches its storage; ``compare`` runs both searches on one task and reports fronts,
hypervolume versus compute and the compute ratio.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from hwloop.cli._app import app, search_app

__all__ = ["compare", "optuna_search", "worker"]


@app.command("compare")
def compare(
    spec: Path = typer.Argument(..., help="compare spec TOML, e.g. search/compare-digits.toml"),
    out: Path = typer.Option(None, "--out", "-o", help="output directory (default: runs/<spec name>)"),
    storage: str = typer.Option(None, "--storage", help="Optuna storage URL (default: sqlite in the output dir)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Differentiable search vs Optuna (TPE, NSGA-II, random): fronts, hypervolume vs compute, compute ratio."""
    import dataclasses

    from rich.console import Console

    from hwloop.search.compare import load_compare_spec, run_compare
    from hwloop.search.optuna_search import parse_storage_url

    from hwloop.search.spec import check_runnable

    s = load_compare_spec(spec)
    check_runnable(s.search_spec())
    if storage:
        parse_storage_url(storage)
        s = dataclasses.replace(s, storage=storage)
    console = Console(stderr=True)
    run_dir = out or Path("runs") / s.name
    summary = run_compare(s, run_dir, progress=progress, echo=lambda m: console.print(m, highlight=False))
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    ratio = summary["compute_ratio_baseline_over_differentiable"]
    console.print(f"compute ratio {summary['baseline']}/differentiable: "
                  f"{'not reached' if ratio is None else f'{ratio:.2f}x'}; outputs in {run_dir}")


@search_app.command("optuna")
def optuna_search(
    spec: Path = typer.Argument(..., help="search spec TOML (same format as 'hwloop search run')"),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe | nsga2 | random"),
    n_trials: int = typer.Option(20, "--n-trials", help="trials the study must finish (exactly)"),
    study: str = typer.Option(None, "--study", help="study name (default: <spec name>-<sampler>)"),
    storage: str = typer.Option(None, "--storage",
                                help="sqlite:///FILE (default sqlite:///hwloop-optuna.db), journal:FILE or "
                                     "postgresql://USER@HOST/DB"),
    workers: int = typer.Option(1, "--workers", help="worker processes on this machine"),
    target: float = typer.Option(None, "--target", help="latency budget (fraction of the original): constraint"),
    latency: str = typer.Option("predictor", "--latency", help="predictor | measure (on the spec's device)"),
    finetune_epochs: int = typer.Option(None, "--finetune-epochs", help="fine-tuning per trial (default: spec)"),
    pruner: str = typer.Option("none", "--pruner",
                               help="none | median | halving | hyperband (single objective: accuracy under --target)"),
    out: Path = typer.Option(None, "--out", "-o", help="where pre-trained weights go (default: runs/<study>)"),
    seed: int = typer.Option(0, "--seed", help="base seed of the samplers"),
    run: bool = typer.Option(True, "--run/--no-run", help="run workers now (--no-run only creates the study)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Create (or resume) an Optuna study over the shared compression space and run it."""
    from rich.console import Console

    from hwloop.errors import ConfigError
    from hwloop.search.baselines import LATENCY_SOURCES
    from hwloop.search.compare import CompareSpec, _pretrain
    from hwloop.search.optuna_search import (
        SAMPLERS,
        StudySettings,
        create_study,
        parse_storage_url,
        run_worker,
        study_status,
    )
    from hwloop.search.spec import check_runnable, load_spec

    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    if latency not in LATENCY_SOURCES:
        raise ConfigError(f"latency source {latency!r} is unknown; allowed: {', '.join(LATENCY_SOURCES)}")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be >= 1")
    if n_trials < 1:
        raise ConfigError(f"--n-trials {n_trials} must be >= 1")
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target {target} must be a fraction of the original latency in (0, 1]")
    if finetune_epochs is not None and finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs {finetune_epochs} must be >= 0")
    parse_storage_url(storage)
    s = load_spec(spec)
    check_runnable(s)
    name = study or f"{s.name}-{sampler}"
    console = Console(stderr=True)
    search = {k: v for k, v in s.to_dict().items() if k not in ("name", "seed")}
    cs = CompareSpec(name=s.name, search=search, seed=s.seed, samplers=(sampler,), baseline=sampler)
    from hwloop.search.accounting import ComputeLedger

    ckpt = None
    if s.schedule.pretrain_epochs or s.model.checkpoint:
        run_dir = Path(out or Path("runs") / name)
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = _pretrain(cs, run_dir, ComputeLedger(), lambda m: console.print(m), progress)
    if ckpt:
        ckpt = str(Path(ckpt).resolve())
    mode = "pareto" if pruner == "none" else "accuracy"
    params = {"spec": s.to_dict(), "target": target if target is not None else s.budget.target, "latency": latency,
              "checkpoint": ckpt, "mode": mode}
    if finetune_epochs is not None:
        params["finetune_epochs"] = finetune_epochs
    from hwloop.search.baselines import CompressionObjective

    obj = CompressionObjective(params)  # validates the space (one-line errors) before anything is stored
    settings = StudySettings(sampler=sampler, n_trials=n_trials, directions=obj.directions,
                             objective={"name": "compression", "params": params}, seed=seed, pruner=pruner)
    st = create_study(name, storage, settings)
    console.print(f"study {name!r}: {study_status(st).n_finished}/{n_trials} trials finished")
    if not run:
        return
    procs = [subprocess.Popen([sys.executable, "-m", "hwloop", "search", "worker", "--study", name,
                               *(["--storage", storage] if storage else []), "--no-progress"])
             for _ in range(workers - 1)]
    rep = run_worker(name, storage, objective=obj, progress=progress)
    codes = [p.wait() for p in procs]
    status = study_status(st)
    console.print(f"study {name!r}: {status.n_finished}/{status.n_requested} finished ({dict(status.counts)}); "
                  f"this process ran {len(rep.trials)}; extra workers exited {codes}")
    if any(codes):
        raise typer.Exit(1)


@search_app.command("worker")
def worker(
    study: str = typer.Option(..., "--study", help="name of a study created by 'hwloop search optuna'"),
    storage: str = typer.Option(None, "--storage", help="the study's storage URL"),
    max_trials: int = typer.Option(None, "--max-trials", help="stop after this many trials"),
    heartbeat_s: int = typer.Option(10, "--heartbeat-s", help="heartbeat period of running trials"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for trials running elsewhere to finish"),
    allow_import: bool = typer.Option(False, "--allow-import",
                                      help="allow module:factory objectives named in the storage"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Join a running study and work on its remaining trials (resumes after crashes)."""
    from rich.console import Console

    from hwloop.errors import ConfigError
    from hwloop.search.optuna_search import parse_storage_url, run_worker

    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"--max-trials {max_trials} must be >= 1")
    if heartbeat_s < 1:
        raise ConfigError(f"--heartbeat-s {heartbeat_s} must be >= 1")
    parse_storage_url(storage)
    rep = run_worker(study, storage, max_trials=max_trials, heartbeat_interval_s=heartbeat_s, wait_for_running=wait,
                     allow_import=allow_import, progress=progress)
    Console(stderr=True).print(f"worker {rep.worker_id}: ran trials {list(rep.trials)}"
                               + (f", re-enqueued crashed trials {list(rep.recovered)}" if rep.recovered else ""))
    print(" ".join(str(t) for t in rep.trials))
