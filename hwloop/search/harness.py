"""The evidence harness: compression methods and honest controls on the same task, devices, targets and compute.

``hwloop bench methods SPEC`` (:func:`run_harness`) reads a :class:`~hwloop.search.harness_spec.HarnessSpec`, builds
the task once (train / validation carved from the training images / test), and runs one *cell* per
(entry, device, target, seed):

* a **method** entry runs the registered method (:data:`hwloop.methods.METHODS`) through its contract on the
  spec's cost source, selects its candidate on the validation split, measures it against the dense model on
  the device (:func:`~hwloop.methods.measure.measure_candidates`) and scores it on the test set;
* a **control** entry (:mod:`hwloop.search.controls`) runs against a method's finished cell: uniform width
  scaling and global magnitude pruning bisected to the method's *measured* latency ratio, the method with the
  FLOPs cost source, random search and TPE at the method's training images, and TPE until it plateaus; every
  control is fine-tuned for the method's training images (or, when the method did not retrain, gets the same
  none, with batch-norm re-estimation when ``[controls] bn_batches`` is set).

Each finished cell is written as ``cells/<entry>__<device>__t<target>__s<seed>.json`` (atomically) and skipped
on a restart; the output folder keeps the spec's fingerprint and refuses a spec that changed what a cell
means. :func:`~hwloop.search.harness_report.write_table` then writes ``results.csv``, ``results.md`` (mean ±
std over seeds) and ``pareto.png`` (test accuracy vs measured latency ratio, controls drawn in).

Compute comes from a :class:`~hwloop.search.accounting.ComputeLedger` per cell (training images, wall and device
seconds, measurements); the shared costs (pre-training, building each device's cost source) are in
``shared.json`` and in the table's columns.

Example:
    >>> from hwloop.search.harness import run_harness
    >>> from hwloop.search.harness_spec import load_harness_spec
    >>> summary = run_harness(load_harness_spec("search/bench-methods-digits.toml"), "out")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import traceback
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from hwloop.errors import SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.harness_flops import next_flops_target
from hwloop.search.harness_spec import HarnessSpec, MethodEntry

__all__ = ["Cell", "Harness", "next_flops_target", "run_harness"]


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``entry`` (a method label or a control name) on ``device`` at ``target`` with ``seed``."""

    entry: str
    kind: str          # "method" or "control"
    ref: str           # the method label a control runs against (its own label for a method)
    device: str
    target: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.entry}__{self.device}__t{self.target:g}__s{self.seed}"


def _subset(ds: Any, limit: int | None, seed: int) -> Any:
    if limit is None or limit >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    return Subset(ds, sorted(idx))


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two queues may share one spec's folder
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Harness:
    """Builds the task once and runs cells (see the module docstring)."""

    def __init__(self, spec: HarnessSpec, out: str | Path, *, log: Callable[[str], None] | None = None,
                 progress: bool = True) -> None:
        self.spec = spec
        self.out = Path(out)
        self.cells_dir = self.out / "cells"
        self._echo = log
        self.progress = progress
        self._latency: dict[tuple[str, str], Any] = {}
        self._scores: dict[str, torch.Tensor] | None = None
        self._ready = False

    # ----------------------------------------------------------------------------------------- bookkeeping
    def log(self, msg: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "harness.log", "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if self._echo is not None:
            self._echo(msg)

    def claim_folder(self) -> None:
        """Create the output folder or check it holds results of this spec (a changed spec is an error)."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        p = self.out / "spec.json"
        fp = self.spec.fingerprint()
        if p.is_file():
            try:
                old = json.loads(p.read_text(encoding="utf-8")).get("fingerprint")
            except (json.JSONDecodeError, AttributeError):
                old = None
            if old != fp:
                raise SearchError(f"{self.out} holds results of another harness spec (fingerprint {old} != {fp}: "
                                  "task, schedule, cost, space, methods or control settings changed); "
                                  "pick a new --out or restore the spec")
        _write_json(p, {"fingerprint": fp, "spec": self.spec.to_dict()})

    def cells(self) -> list[Cell]:
        """Every cell in run order: per (device, target, seed) the methods first, then their controls."""
        out: list[Cell] = []
        ctl = self.spec.controls
        for seed in self.spec.seeds:
            for dev in self.spec.devices:
                for t in self.spec.targets:
                    for m in self.spec.methods:
                        out.append(Cell(m.label, "method", m.label, dev, t, seed))
                    for ref in ctl.against:
                        for c in ctl.run:
                            name = c if len(ctl.against) == 1 else f"{c}@{ref}"
                            out.append(Cell(name, "control", ref, dev, t, seed))
        return out

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.json"

    def done(self, cell: Cell) -> dict[str, Any] | None:
        p = self.cell_path(cell)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None

    # ----------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data splits, starting weights (pre-trained once and kept in the folder), the search space."""
        if self._ready:
            return
        from hwloop.data import make_loaders
        from hwloop.models import ModelRef
        from hwloop.search.pipeline import space_options
        from hwloop.search.space import SearchSpace
        from hwloop.search.spec import SearchSpec
        from hwloop.search.train import evaluate, train_epochs

        t = self.spec.task
        kw = dict(t.kwargs)
        if t.task == "digits":
            self.ref = ModelRef(t.model, kw, input_shape=(1, 8, 8))
            train_all, test = make_loaders("digits", t.batch_size, seed=t.split_seed)
            ds = train_all.dataset
            if t.holdout >= len(ds):  # type: ignore[arg-type]
                raise SearchError(f"[task] holdout={t.holdout} must be below the {len(ds)} training images")  # type: ignore[arg-type]
            perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(t.split_seed)).tolist()  # type: ignore[arg-type]
            train_ds: Any = Subset(ds, sorted(perm[t.holdout:]))
            val_ds: Any = Subset(ds, sorted(perm[:t.holdout]))
            test_ds = test.dataset
        else:
            if t.model == "small_cnn":
                kw.setdefault("in_channels", 3)
            self.ref = ModelRef(t.model, kw, input_shape=(3, 32, 32))
            tr, va = make_loaders(t.task, t.batch_size, root=t.data_root, seed=t.split_seed, holdout=t.holdout)
            train_ds, val_ds = tr.dataset, va.dataset
            test_ds = make_loaders(t.task, t.batch_size, root=t.data_root, seed=t.split_seed)[1].dataset
        self.train_ds = _subset(train_ds, t.train_limit, t.split_seed)
        self.val = DataLoader(_subset(val_ds, t.val_limit, t.split_seed + 1), batch_size=256, shuffle=False)
        self.test = DataLoader(_subset(test_ds, t.test_limit, t.split_seed + 2), batch_size=256, shuffle=False)
        self.val_eval = lambda m: evaluate(m, self.val)
        self.test_eval = lambda m: evaluate(m, self.test)
        shared = self._shared()
        model = self.ref.build()
        if t.checkpoint:
            from safetensors.torch import load_file

            try:
                model.load_state_dict(load_file(t.checkpoint))
            except Exception as e:
                raise SearchError(f"cannot load checkpoint {t.checkpoint!r}: {str(e).splitlines()[0]}") from e
            shared["pretrain"] = self._checkpoint_cost(t.checkpoint)
        else:
            pre = self.out / "pretrained.safetensors"
            if pre.is_file():
                from safetensors.torch import load_file

                model.load_state_dict(load_file(str(pre)))
            else:
                from safetensors.torch import save_file

                torch.manual_seed(t.split_seed)
                r = train_epochs(model.train(), self.loader(t.split_seed), t.pretrain_epochs, self.spec.schedule.lr * 5,
                                 weight_decay=self.spec.schedule.weight_decay, progress=self.progress, desc="pretrain")
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(pre))
                shared["pretrain"] = {"wall_s": r["seconds"], "train_images": int(r["images"]),
                                      "epochs": t.pretrain_epochs, "source": "pre-trained here"}
        self.model = model.eval()
        sspec = SearchSpec.from_dict({"name": "harness", "space": {k: (list(v) if isinstance(v, tuple) else v)
                                                                  for k, v in vars(self.spec.space).items()}})
        self.space = SearchSpace.from_ref(self.ref, space_options(sspec), model=self.model)
        self.base_val = self.val_eval(self.model)
        self.base_test = self.test_eval(self.model)
        shared.update(base_val_accuracy=self.base_val, base_test_accuracy=self.base_test,
                      checkpoint=t.checkpoint or str(self.out / "pretrained.safetensors"),
                      splits={"train": len(self.train_ds), "val": len(self.val.dataset),  # type: ignore[arg-type]
                              "test": len(self.test.dataset)})  # type: ignore[arg-type]
        self._save_shared(shared)
        self.log(f"task {t.task}/{t.model} from {shared['checkpoint']}: validation {self.base_val:.2f}%, "
                 f"test {self.base_test:.2f}% ({shared['splits']})")
        self._ready = True

    @staticmethod
    def _checkpoint_cost(path: str) -> dict[str, Any]:
        """The pre-training cost recorded beside a checkpoint (``<name>.json``: wall_s, epochs), if any."""
        meta = Path(path).with_suffix(".json")
        try:
            d = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"source": f"{path} (no .json beside it: pre-training cost unknown)"}
        return {"wall_s": d.get("wall_s"), "epochs": d.get("epochs"), "train_images": d.get("train_images"),
                "source": str(meta)}

    def _shared(self) -> dict[str, Any]:
        p = self.out / "shared.json"
        try:
            return dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            return {}

    def _save_shared(self, d: dict[str, Any]) -> None:
        _write_json(self.out / "shared.json", d)

    def loader(self, seed: int) -> DataLoader[Any]:
        """A fresh training loader shuffled by ``seed`` (same order whatever ran before: resumable)."""
        return DataLoader(self.train_ds, batch_size=self.spec.task.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))

    def latency(self, device: str, objective: str | None = None) -> Any:
        """The cost source on ``device`` (the spec's, or ``flops``), built once; its build time goes to shared.json."""
        from hwloop.search.latency import select_latency_model

        obj = objective or self.spec.cost.objective
        key = (device, obj)
        if key not in self._latency:
            t0 = time.perf_counter()
            lines: list[str] = []
            c = self.spec.cost
            self._latency[key] = select_latency_model(
                self.space, predictor_path=c.predictors.get(device) if obj != "flops" else None, device=device,
                objective=obj, log=lines.append, max_grid_points=c.max_grid_points, aggregate=c.aggregate)
            dt = time.perf_counter() - t0
            shared = self._shared()
            shared.setdefault("cost_sources", {})[f"{device}/{obj}"] = {"build_s": dt, "what": " ".join(lines)}
            self._save_shared(shared)
            self.log(f"{device}: {' '.join(lines)} (built in {dt:.1f} s)")
        return self._latency[key]

    # ------------------------------------------------------------------------------------------- run cells
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Run one cell and return its row (not written; :meth:`run` writes it)."""
        self.setup()
        torch.manual_seed(cell.seed)
        t0 = time.perf_counter()
        ledger = ComputeLedger()
        if cell.kind == "method":
            row = self._method_row(self._entry(cell.ref), cell, ledger)
        else:
            from hwloop.search.harness_controls import control_row

            ref = self.done(Cell(cell.ref, "method", cell.ref, cell.device, cell.target, cell.seed))
            if ref is None:
                raise SearchError(f"control {cell.entry} needs the finished cell of method {cell.ref!r} first")
            control = cell.entry.partition("@")[0]
            if control == "flops":
                row = self._method_row(self._entry(cell.ref), cell, ledger, objective="flops")
                row.update(_flops_match(row, ref, self.spec.controls.tolerance))
            elif control == "flops-matched":
                row = self._flops_matched_row(cell, ref, ledger)
            else:
                row = control_row(self, control, cell, ref, ledger)
        tot = ledger.total()
        meas = ledger.total(phase="measure")
        row.update(entry=cell.entry, kind=cell.kind, ref=cell.ref, device=cell.device, target=cell.target,
                   seed=cell.seed, base_val_accuracy=self.base_val, base_test_accuracy=self.base_test,
                   train_images=tot.train_images, epochs=tot.epochs,
                   cell_wall_s=time.perf_counter() - t0 + float(row.get("reused_wall_s") or 0.0),
                   measure_s=meas.wall_s, device_measurements=tot.device_measurements,
                   phases={k: v.to_dict() for k, v in ledger.by_phase().items()},
                   fingerprint=self.spec.fingerprint())
        return row

    def _flops_matched_row(self, cell: Cell, ref: dict[str, Any], ledger: ComputeLedger) -> dict[str, Any]:
        """The method with the FLOPs cost source at the FLOPs target whose MEASURED latency matches the method's:
        run at the cell's target, then move the target (:func:`~hwloop.search.harness_flops.match_flops_target`)
        until the runs bracket the method's measured latency or one is within the tolerance, up to
        ``[controls] flops_runs`` runs. The nearest run is the row; the accuracy linearly interpolated (in measured
        latency) between the bracketing runs is added as ``interp_val_accuracy`` / ``interp_test_accuracy``; every
        run's compute is counted. Each finished run is appended to ``cells/<key>.runs.jsonl`` and reused on a
        restart (same spec fingerprint and goal; their wall seconds, ``reused_wall_s``, are added to the cell's)."""
        from hwloop.search.harness_flops import STOPS, interpolate, match_flops_target

        goal = ref.get("measured_ratio")
        if goal is None or not goal > 0:
            raise SearchError(f"the method cell of {cell.key} has no measured latency ratio")
        goal, tol, cap = float(goal), self.spec.controls.tolerance, self.spec.controls.flops_runs
        log_path = self.cells_dir / f"{cell.key}.runs.jsonl"
        saved = _load_flops_runs(log_path, self.spec.fingerprint(), goal)
        rows: list[dict[str, Any]] = []
        reused_wall = [0.0]

        def run(t: float) -> float | None:
            key = f"{t:.12g}"
            if key in saved:
                rec = saved[key]
                for r in rec["ledger"]:
                    ledger.add(**r)
                reused_wall[0] += sum(float(r.get("wall_s") or 0.0) for r in rec["ledger"])
                self.log(f"{cell.key}: FLOPs target {t:.3f} reused from {log_path.name}")
            else:
                n0 = len(ledger)
                torch.manual_seed(cell.seed)
                row = self._method_row(self._entry(cell.ref), dataclasses.replace(cell, target=t), ledger,
                                       objective="flops")
                new = ledger.records[n0:]
                row["run_train_images"] = sum(r.train_images for r in new)
                row["run_wall_s"] = sum(r.wall_s for r in new)
                rec = {"fingerprint": self.spec.fingerprint(), "goal": goal, "target": key, "row": row,
                       "ledger": [r.to_dict() for r in new]}
                m_new = row.get("measured_ratio")
                if isinstance(m_new, (int, float)) and m_new > 0:   # an unmeasured run is retried next time
                    torn = log_path.is_file() and not log_path.read_bytes().endswith(b"\n") and \
                        log_path.stat().st_size > 0
                    with open(log_path, "a", encoding="utf-8") as fh:   # after a torn line (a kill): a new line
                        fh.write(("\n" if torn else "") + json.dumps(rec, sort_keys=True, default=float) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
            rows.append(rec["row"])
            m = rec["row"].get("measured_ratio")
            self.log(f"{cell.key}: FLOPs target {t:.3f} measured {_fmt(m)} (goal {goal:.3f}), "
                     f"val {_fmt(rec['row'].get('val_accuracy'))}%")
            return float(m) if isinstance(m, (int, float)) and m > 0 else None

        res = match_flops_target(run, float(cell.target), goal, tolerance=tol, max_runs=cap)
        if not res.tried:
            raise SearchError(f"{cell.key}: the FLOPs-cost run was not measured")
        row = dict(rows[res.nearest])
        t_best = res.tried[res.nearest][0]
        row.update(_flops_match(row, ref, tol))
        runs = [{"flops_target": t, "measured_ratio": m, "val_accuracy": r.get("val_accuracy"),
                 "test_accuracy": r.get("test_accuracy"), "train_images": r.get("run_train_images"),
                 "wall_s": r.get("run_wall_s"), "budget_status": r.get("status"),
                 **({"reused_from": r["reused_from"]} if r.get("reused_from") else {})}
                for (t, m), r in zip(res.tried, rows)]
        iv = interpolate([(r["flops_target"], r["measured_ratio"], r["val_accuracy"]) for r in runs], goal)
        it = interpolate([(r["flops_target"], r["measured_ratio"], r["test_accuracy"]) for r in runs], goal)
        row.update(flops_target=t_best, flops_runs=runs, flops_max_runs=cap, flops_stop=res.stop,
                   interp_val_accuracy=iv, interp_test_accuracy=it, reused_wall_s=reused_wall[0],
                   flops_bracket=([res.tried[i][0] for i in res.bracket] if res.bracket else None))
        for k in ("run_train_images", "run_wall_s", "reused_from"):
            row.pop(k, None)
        srcs = sorted({str(r["reused_from"]) for r in runs if r.get("reused_from")})
        n_re = sum(1 for r in runs if r.get("reused_from"))
        reused = f"; {n_re} run(s) reused from {', '.join(srcs)}" if n_re else ""
        interp = (f"accuracy interpolated at {goal:.3f}x between the runs measured "
                  f"{res.tried[res.bracket[0]][1]:.3f}x and {res.tried[res.bracket[1]][1]:.3f}x: val {iv:.2f}%, "
                  f"test {it:.2f}%" if res.bracket and iv is not None and it is not None
                  else "no bracket: no interpolated accuracy" if not res.bracket
                  else "a bracketing run has no recorded accuracy: no interpolated accuracy")
        row["status_reason"] = (f"{row.get('status_reason')}; FLOPs target {t_best:.3f} nearest of {len(res.tried)} "
                                f"run(s) (targets {', '.join(f'{a:.3f}' for a, _ in res.tried)}; measured "
                                f"{', '.join(f'{m:.3f}' for _, m in res.tried)}; stopped at {STOPS[res.stop]}, cap "
                                f"{cap}; all runs' images counted{reused}); {interp}")
        return row

    def _entry(self, label: str) -> MethodEntry:
        return next(m for m in self.spec.methods if m.label == label)

    def _method_row(self, entry: MethodEntry, cell: Cell, ledger: ComputeLedger, objective: str | None = None
                    ) -> dict[str, Any]:
        from hwloop.methods import make_method
        from hwloop.methods.base import MethodContext, MethodResult
        from hwloop.methods.measure import measure_candidates

        lat = self.latency(cell.device, objective)
        method = make_method(entry.name, entry.options, defaults=self.spec.schedule.method_defaults(),
                             allow_import=False)
        ctx = MethodContext(model=self.model, ref=self.ref, space=self.space, train=self.loader(cell.seed),
                            eval_fn=self.val_eval, latency=lat, target=cell.target, device=cell.device, seed=cell.seed,
                            ledger=ledger, base_accuracy=self.base_val, log=self.log, trial=None)
        result = method.run(ctx)
        cand = result.select(cell.target) or min(result.candidates, key=lambda c: c.predicted_ratio)
        measure_candidates(MethodResult(result.method, result.config, [cand]), ctx)
        with ledger.phase("test"):
            test_acc = plan_accuracy(self.test_eval, cand.model, cand.plan)
        return {"method": entry.name, "cost_source": f"{lat.kind}/{objective or self.spec.cost.objective}",
                "latency_unit": lat.unit, "val_accuracy": cand.accuracy, "test_accuracy": test_acc,
                "predicted_ratio": cand.predicted_ratio, "search_ratio": cand.search_ratio,
                "measured_ratio": cand.measured_ratio, "measured_ms": cand.measured_ms,
                "original_measured_ms": cand.original_measured_ms, "status": cand.status,
                "status_reason": cand.status_reason, "plan": cand.plan.to_dict(), "setting": cand.setting,
                "n_candidates": len(result.candidates), "method_config": result.config}

    def run(self, *, only: Callable[[Cell], bool] | None = None, max_cells: int | None = None) -> dict[str, Any]:
        """Run every cell not yet done (``only`` filters; ``max_cells`` stops after that many new cells), then
        write the table and the plot. Returns ``{"done", "ran", "failed", "skipped", "table"}``."""
        from tqdm.auto import tqdm

        self.claim_folder()
        cells = [c for c in self.cells() if only is None or only(c)]
        todo = [c for c in cells if self.done(c) is None]
        self.log(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run")
        ran, failed = 0, []
        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="harness cells", disable=not self.progress)
        for c in todo:
            if max_cells is not None and ran >= max_cells:
                break
            bar.set_postfix_str(c.key)
            if c.kind == "control" and self.done(Cell(c.ref, "method", c.ref, c.device, c.target, c.seed)) is None:
                self.log(f"skip {c.key}: its method cell is not done")
                failed.append(c.key)
                bar.update(1)
                continue
            try:
                row = self.run_cell(c)
            except SearchError:
                raise
            except Exception as e:  # noqa: BLE001 - one failed cell must not lose the others; rerun retries it
                self.log(f"FAILED {c.key}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                (self.cells_dir / f"{c.key}.error.txt").write_text(traceback.format_exc(), encoding="utf-8")
                failed.append(c.key)
                bar.update(1)
                continue
            _write_json(self.cell_path(c), row)
            ran += 1
            bar.update(1)
            self.log(f"done {c.key}: test {_fmt(row['test_accuracy'])}%, measured ratio "
                     f"{_fmt(row.get('measured_ratio'))}, {row['status']}, {row['train_images']} images, "
                     f"{row['cell_wall_s']:.0f} s")
            self.table()   # the partial table after every cell (every finished cell, not only this run's filter)
        bar.close()
        _, table = self.table()
        done = sum(1 for c in cells if self.done(c) is not None)
        return {"done": done, "ran": ran, "failed": failed, "cells": len(cells), "table": table}

    def table(self, cells: list[Cell] | None = None) -> tuple[list[dict[str, Any]], Path | None]:
        """Write the table and plot from the finished cells (of ``cells``, default all); returns (rows, md path)."""
        from hwloop.search.harness_report import write_table

        rows = [d for c in (cells if cells is not None else self.cells()) if (d := self.done(c)) is not None]
        return rows, (write_table(self.out, rows, self._shared(), self.spec) if rows else None)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3f}"


def run_harness(spec: HarnessSpec, out: str | Path, *, log: Callable[[str], None] | None = None,
                progress: bool = True, max_cells: int | None = None,
                only: Callable[[Cell], bool] | None = None) -> dict[str, Any]:
    """Run (or resume) the harness of ``spec`` into ``out`` (see the module docstring)."""
    spec.check_files()
    return Harness(spec, out, log=log, progress=progress).run(only=only, max_cells=max_cells)


def plan_accuracy(eval_fn: Callable[[torch.nn.Module], float], model: torch.nn.Module, plan: Any) -> float:
    """``eval_fn(model)`` with the plan's activation quantization applied (``meta["a_quant"]`` / ``a_amax``: the
    quantizer the method scored its validation accuracy with); the plain ``eval_fn(model)`` for a plan without."""
    from hwloop.compress.actquant import quantized_activations

    with quantized_activations.from_plan(model, plan):
        return float(eval_fn(model))


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A detached copy (controls never change the starting model)."""
    return copy.deepcopy(model).eval()


def _load_flops_runs(path: Path, fingerprint: str, goal: float) -> dict[str, dict[str, Any]]:
    """The finished runs of a flops-matched cell logged by an earlier (interrupted) attempt: target -> record,
    only those of this spec fingerprint and goal (a rerun method cell changes the goal) with a measured ratio;
    unreadable lines skipped."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (isinstance(rec, dict) and rec.get("fingerprint") == fingerprint
                and isinstance(rec.get("goal"), float) and math.isclose(rec["goal"], goal, rel_tol=1e-12)
                and isinstance(rec.get("row"), dict) and isinstance(rec.get("ledger"), list)
                and isinstance(rec["row"].get("measured_ratio"), (int, float)) and rec["row"]["measured_ratio"] > 0):
            out[str(rec.get("target"))] = rec
    return out


def _flops_match(row: dict[str, Any], ref: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """The ``flops`` control runs the method at the same FLOPs *target*; its measured latency is then compared with
    the method's measured latency like the other controls' (``matched`` / ``off-target``), the method's own budget
    verdict kept as ``budget_status``."""
    mine, goal = row.get("measured_ratio"), ref.get("measured_ratio")
    out = {"budget_status": row.get("status"), "budget_reason": row.get("status_reason")}
    if mine is None or not goal:
        return out
    off = float(mine) / float(goal) - 1
    status = "matched" if abs(off) <= tolerance else "off-target"
    reason = (f"measured {float(mine):.3f}x vs the method's {float(goal):.3f}x ({off:+.1%}, tolerance "
              f"±{tolerance:.0%}) at the same FLOPs target; its own budget: {row.get('status')}")
    out.update(status=status, status_reason=reason)
    return out
