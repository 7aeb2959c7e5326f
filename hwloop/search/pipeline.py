"""``run_spec``: a whole search run from a :class:`~hwloop.search.spec.SearchSpec` into a run directory.

pretrain (or load the user's safetensors checkpoint) → search → extract → fine-tune →
measure on the device → report. The run directory holds ``search.log`` (including which
latency model was used and why), ``plan.json`` + ``weights.safetensors``, ``metrics.json``
and the PNG plots. With ``[schedule] baseline = true`` the unpruned model is also trained
for the same number of epochs (pretrain + search + fine-tune), which gives the accuracy
to compare against and the wall time of "training the same model once".

Example:
    >>> from hwloop.search.spec import SearchSpec
    >>> from hwloop.search.pipeline import run_spec
    >>> spec = SearchSpec.from_dict({"name": "doc", "data": {"task": "digits"},
    ...     "schedule": {"search_epochs": 1, "finetune_epochs": 1}, "device": {"measure": False}})
    >>> out = run_spec(spec, tmp_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hwloop.compress.extract import save_compressed
from hwloop.errors import SearchError
from hwloop.methods.base import MethodContext
from hwloop.search.latency import PredictorLatency, select_latency_model
from hwloop.search.report import compare_compressed, predict_compressed, write_report
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.spec import SearchSpec
from hwloop.search.train import make_task, train_epochs

__all__ = ["run_spec", "space_options"]


def space_options(spec: SearchSpec) -> SpaceOptions:
    s = spec.space
    lowrank = s.lowrank if isinstance(s.lowrank, bool) else tuple(s.lowrank)
    return SpaceOptions(channels=s.channels, lowrank=lowrank, bits=s.bits, bit_levels=tuple(s.bit_levels),
                        a_bits=s.a_bits, min_keep_ratio=s.min_keep_ratio, tile=s.tile)


class _RunLog:
    """Appends timestamped lines to ``search.log`` in the run directory (and echoes them)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._echo = echo

    def __call__(self, msg: str) -> None:
        self._fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        self._fh.flush()
        if self._echo:
            self._echo(msg)

    def close(self) -> None:
        self._fh.close()


def _default_store() -> str | None:
    """The default measurement store's URL when its file exists (``$HWLOOP_HOME/measurements.db``)."""
    from hwloop.store import default_store_url

    url = default_store_url()
    return url if Path(url.removeprefix("sqlite:///")).is_file() else None


def run_spec(spec: SearchSpec, run_dir: str | Path, *, progress: bool = True, echo: Callable[[str], None] | None = None,
             predictor: Any = None) -> dict[str, Any]:
    """Run ``spec`` and write everything into ``run_dir``; returns the metrics dict."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = _RunLog(out / "search.log", echo)
    try:
        return _run(spec, out, say, progress, predictor)
    finally:
        say.close()


def _run(spec: SearchSpec, out: Path, say: Callable[[str], None], progress: bool, predictor: Any) -> dict[str, Any]:
    torch.manual_seed(spec.seed)
    sch = spec.schedule
    say(f"run {spec.name}: model {spec.model.name} on {spec.data.task}, device {spec.device.name}")
    task = make_task(spec.data.task, spec.model.name, batch_size=spec.data.batch_size,
                     train_limit=spec.data.train_limit, val_limit=spec.data.val_limit, seed=spec.seed,
                     model_kwargs=dict(spec.model.kwargs), data_root=spec.data.root)
    model = task.ref.build().train()
    t_pre = 0.0
    if spec.model.checkpoint:
        from safetensors.torch import load_file

        try:
            model.load_state_dict(load_file(spec.model.checkpoint))
        except Exception as e:  # missing file, wrong keys or shapes
            raise SearchError(f"cannot load checkpoint {spec.model.checkpoint!r}: {str(e).splitlines()[0]}") from e
        say(f"loaded checkpoint {spec.model.checkpoint}")
    elif sch.pretrain_epochs:
        r = train_epochs(model, task.train, sch.pretrain_epochs, sch.lr, weight_decay=sch.weight_decay,
                         progress=progress, desc="pretrain", max_steps=sch.max_steps)
        t_pre = r["seconds"]
        say(f"pretrained {sch.pretrain_epochs} epochs in {t_pre:.1f} s")
    model.eval()
    acc0 = task.eval_fn(model)
    say(f"original accuracy {acc0:.2f}")

    space = SearchSpace.from_ref(task.ref, space_options(spec), model=model)
    lat = select_latency_model(space, predictor=predictor, predictor_path=spec.predictor.path,
                               store=spec.predictor.store or _default_store(), device=spec.device.name,
                               objective=spec.predictor.objective, log=say, progress=progress,
                               max_grid_points=spec.predictor.max_grid_points, aggregate=spec.predictor.aggregate)
    method = spec.method.build(spec.method_defaults())   # [method] (default l1l2) through hwloop.methods.METHODS
    say(f"method {method.name}: {method.summary}")
    ctx = MethodContext(model=model, ref=task.ref, space=space, train=task.train, eval_fn=task.eval_fn, latency=lat,
                        target=spec.budget.target, device=spec.device.name, seed=spec.seed, base_accuracy=acc0,
                        log=say, progress=progress)
    result = method.run(ctx)
    res = result.candidates[0]
    save_compressed(res.model, res.plan, out)
    artifacts = result.save_artifacts(Path(out))     # e.g. an LCS family: every member, not only the pick
    for what, rel in artifacts.items():
        say(f"{result.method}: {what} written to {Path(out) / rel}")

    example = task.ref.example_input()
    metrics: dict[str, Any] = {
        "name": spec.name, "model": spec.model.name, "task": spec.data.task, "device": spec.device.name,
        "latency_model": lat.kind, "latency_unit": lat.unit, "original_accuracy": acc0, "accuracy": res.accuracy,
        "accuracy_extracted": res.accuracy_extracted, "model_original": res.original, "model_predicted": res.predicted,
        "model_ratio": res.predicted / res.original, "target": spec.budget.target, "seconds": dict(res.seconds),
        "pretrain_seconds": t_pre, "method": result.method, "method_config": result.config,
        "search_ratio": res.search_ratio, "repairs": [r.to_dict() for r in res.repairs],
        "budget_status": res.status, "budget_reason": res.status_reason,
        "params": sum(p.numel() for p in res.model.parameters()),
        "original_params": sum(p.numel() for p in model.parameters()), "artifacts": artifacts,
    }
    from hwloop.workload import extract_layers

    metrics["macs"] = sum(s.macs for s in extract_layers(res.model, example) if s.op in ("conv2d", "linear"))
    metrics["original_macs"] = sum(s.macs for s in extract_layers(model, example) if s.op in ("conv2d", "linear"))
    if isinstance(lat, PredictorLatency):
        metrics["predicted_ms"] = predict_compressed(lat.predictor, res.model, example, res.plan,
                                                     aggregate=lat.aggregate)
        metrics["original_predicted_ms"] = predict_compressed(lat.predictor, model, example, None,
                                                              aggregate=lat.aggregate)
    if spec.device.measure:
        timing = None
        if spec.device.repeats:
            from hwloop.devices import load_profile
            from hwloop.devices.base import TimingConfig

            d = load_profile(spec.device.name).timing.to_dict()
            d["repeats"] = spec.device.repeats
            timing = TimingConfig.from_dict(d)
        # the compressed model against the original: interleaved whole models on the CPU (load that drifts
        # cancels in the ratio), alternating measurements elsewhere
        m = compare_compressed(spec.device.name, res.model, res.plan, model, example=example, timing=timing)
        metrics.update(measured_ms=m["latency_ms"], original_measured_ms=m["original_ms"],
                       measure_method=m["method"], measured_ratio=m["ratio"], measured_ratio_ci=m["ratio_ci"],
                       measure_unstable=m["unstable"], measure_interleaved=m["interleaved"],
                       measure_load=m["load"])
        ci = m["ratio_ci"]
        say(f"measured on {spec.device.name} ({m['method']}{', interleaved' if m['interleaved'] else ''}): "
            f"{m['latency_ms']:.4g} ms vs original {m['original_ms']:.4g} ms = {m['ratio']:.3f} x "
            f"(95% interval {ci[0]:.3f}-{ci[1]:.3f}, {m['rounds']} rounds)")
        if m["unstable"]:
            load = m["load"]
            seen = f"; load average {load['load1']} on {load['cores']} cores" if load else ""
            say(f"warning: the measured ratio is unstable (its interval stayed wider than ±max_cv{seen}); "
                "measure again on a quieter machine")
        if "predicted_ms" in metrics:
            err = metrics["predicted_ms"] / m["latency_ms"] - 1
            metrics["prediction_error"] = err
            metrics["predicted_ratio"] = metrics["predicted_ms"] / metrics["original_predicted_ms"]
            say(f"predicted {metrics['predicted_ms']:.4g} ms vs measured {m['latency_ms']:.4g} ms ({err:+.1%}); "
                f"ratio predicted {metrics['predicted_ratio']:.3f} x, measured {m['ratio']:.3f} x")
    if sch.baseline:
        base = task.ref.build().train()
        epochs = sch.pretrain_epochs + sch.search_epochs + sch.finetune_epochs
        r = train_epochs(base, task.train, epochs, sch.lr, weight_decay=sch.weight_decay, progress=progress,
                         desc="baseline", max_steps=sch.max_steps)
        metrics["baseline_accuracy"] = task.eval_fn(base)
        metrics["baseline_seconds"] = r["seconds"]
        total = t_pre + sum(res.seconds.values())
        metrics["cost_ratio"] = total / r["seconds"]
        say(f"baseline: {epochs} epochs unpruned in {r['seconds']:.1f} s, accuracy {metrics['baseline_accuracy']:.2f};"
            f" search run took {total:.1f} s = {metrics['cost_ratio']:.2f} x")
    write_report(out, metrics, res.history, res.sizes)
    say(f"wrote {out}")
    logging.getLogger(__name__).debug("run %s done", spec.name)
    return metrics
