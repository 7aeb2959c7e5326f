"""``hwloop predictor fit|eval|show`` and ``hwloop predict MODEL --predictor FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from hwloop.cli._app import app, predictor_app
from hwloop.cli._common import console, err_console
from hwloop.errors import ConfigError
from hwloop.predict import PREDICTOR_KINDS

_KINDS = ", ".join(("auto", *PREDICTOR_KINDS))


def _default_out(device: str, mode: str) -> Path:
    from hwloop.paths import hwloop_home

    return hwloop_home() / "predictors" / f"{device}-{mode}.json"


def _source(store: str | None, data: str | None) -> str:
    if store and data:
        raise ConfigError("give either --store URL or --data DIR, not both")
    if data:
        return data
    from hwloop.store import default_store_url, normalize_url

    return normalize_url(store) if store else default_store_url()


def _check_out(path: Path | None, suffix: str, opt: str) -> None:
    """An output path that can be written: the right suffix and not a folder (checked before any work)."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{opt} {str(path)!r} is a folder; allowed: a file path ending in {suffix}")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"{opt} {str(path)!r} must end in {suffix}")


def _check_store(src: str) -> None:
    """A store source must exist: read-only commands never create one (a typo'd path is an error)."""
    if "://" in src:
        from hwloop.store import MeasurementStore

        MeasurementStore(src, create=False).close()


def _noise_floor(src: str, td: Any) -> float:
    """The noise floor (100 × median CV, %) of the layers ``td`` was fitted on; 0 when the source has no CV."""
    from hwloop.predict.evaluate import noise_floor_pct

    key = td.fingerprint.key if td.fingerprint is not None else None
    if "://" in src:
        from hwloop.store import MeasurementStore

        with MeasurementStore(src, create=False) as st:
            return noise_floor_pct(st.values("cv", key, kind="layer", mode=td.mode))
    f = Path(src) / "measurements.parquet"
    if f.is_file():
        import pandas as pd

        df = pd.read_parquet(f, columns=["device_key", "kind", "mode", "cv", "error"])
        sel = (df["kind"] == "layer") & (df["mode"] == td.mode) & df["error"].isna()
        if key is not None:
            sel &= df["device_key"] == key
        return noise_floor_pct(df.loc[sel, "cv"].to_numpy())
    return 0.0


def _device_fingerprint(name: str) -> Any:
    """The fingerprint of a device profile (probed when the backend opens here, else name/backend only)."""
    from hwloop.devices.base import DeviceFingerprint
    from hwloop.devices.profiles import create_device, load_profile
    from hwloop.errors import HwloopError

    prof = load_profile(name)
    try:
        dev = create_device(prof)
        try:
            return dev.fingerprint()
        finally:
            dev.close()
    except (HwloopError, OSError, RuntimeError):
        return DeviceFingerprint(name=prof.name, backend=prof.backend)


def _metrics_table(metrics: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for c in ("protocol", "n", "MAPE %", "RMSE ms", "±5 %", "±10 %", "Spearman ρ"):
        t.add_column(c, justify="right" if c != "protocol" else "left")
    rows = [("layers, random split", metrics.get("layers_random_split")),
            ("unseen models, raw sum", metrics.get("models_raw_sum")),
            ("unseen models, calibrated", metrics.get("models_calibrated"))]
    for g, v in (metrics.get("per_group") or {}).items():
        rows.append((f"  {g} (calibrated)", v["calibrated"]))
    for name, m in rows:
        if not m:
            continue
        t.add_row(name, str(m["n"]), f"{m['mape']:.1f}", f"{m['rmse_ms']:.4f}", f"{100 * m['acc5']:.1f}",
                  f"{100 * m['acc10']:.1f}", "—" if m["spearman"] is None else f"{m['spearman']:.3f}")
    return t


@predictor_app.command("fit")
def fit_cmd(
    device: str = typer.Option(..., "--device", help="device name (or fingerprint key) whose data to fit"),
    store: str = typer.Option(None, "--store", help="store URL or path (default: $HWLOOP_HOME/measurements.db)"),
    data: str = typer.Option(None, "--data", help="a measurement directory instead of the store"),
    kind: str = typer.Option("auto", "--kind", help=f"predictor kind: {_KINDS}"),
    mode: str = typer.Option(None, "--mode", help="execution mode to fit (default: the data's)"),
    statistic: str = typer.Option("min", "--statistic", help="timing statistic to predict: min or median"),
    out: Path = typer.Option(None, "--out", help="predictor JSON path (default $HWLOOP_HOME/predictors/...)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate and store metrics in the file"),
    plot: Path = typer.Option(None, "--plot", help="parity plot PNG (with --eval)"),
    force: bool = typer.Option(False, "--force", help="save even when the held-out error is far beyond the "
                                                      "data's noise floor"),
) -> None:
    """Fit DEVICE's predictor: the learned one when the store holds its layers, the ℓ1/ℓ2 surrogate otherwise.

    The fitted predictor is saved only if its held-out MAPE is within max(10x the data's noise floor
    (median CV), 25%); ``--force`` saves it anyway (see :func:`hwloop.predict.fitting.quality_check`).
    """
    from hwloop.errors import PredictorError, StoreError
    from hwloop.predict.fitting import fit_predictor, quality_check
    from hwloop.predict.io import TrainingData, load_training_data

    if kind != "auto" and kind not in PREDICTOR_KINDS:
        raise ConfigError(f"--kind {kind!r} is unknown; allowed: {_KINDS}")
    from hwloop.devices.base import EXEC_MODES

    if mode is not None and mode not in EXEC_MODES:
        raise ConfigError(f"--mode {mode!r} is unknown; allowed: {', '.join(EXEC_MODES)}")
    _check_out(out, ".json", "--out")
    _check_out(plot, ".png", "--plot")
    src = _source(store, data)
    try:
        _check_store(src)
        td = load_training_data(src, device=device, mode=mode, statistic=statistic)
    except (PredictorError, StoreError) as e:
        missing_default = not store and not data and "does not exist" in str(e)
        if not missing_default and ("no measurements" not in str(e) and "has no rows" not in str(e)
                                    and "has no data" not in str(e)):
            raise
        fp = _device_fingerprint(device)
        err_console.print(f"no measurements of {device!r} in {src}")
        td = TrainingData(fp, mode or "eager", (), np.array([]), statistic=statistic)
    p = fit_predictor(td, kind, evaluate=evaluate, plot_path=plot)
    console.print(f"[bold]{p.kind}[/bold] predictor for {td.fingerprint.name} ({td.mode}): {p.kind_reason_}")
    if p.metrics_:
        why = quality_check(p.metrics_, _noise_floor(src, td))
        if why and not force:
            raise PredictorError(f"{why}; not saved (fit on more or cleaner data, or pass --force to save it anyway)")
        if why:
            err_console.print(f"warning: {why}; saved anyway (--force)")
    elif td.n_layers:
        err_console.print("warning: held-out error not checked (--no-eval or fewer than 10 layers)")
    path = p.save(out or _default_out(td.fingerprint.name, td.mode))
    if p.metrics_:
        console.print(_metrics_table(p.metrics_, f"{p.kind} on {td.fingerprint.name}"))
    agg = getattr(p, "aggregator_", None)
    if agg is not None:
        console.print(f"whole-model calibration on {agg.n_models_} models; raw sum / measured = "
                      f"{agg.raw_sum_ratio_:.3f} (median)")
    console.print(f"saved {path}")


@predictor_app.command("eval")
def eval_cmd(
    predictor: Path = typer.Argument(..., help="predictor JSON file"),
    store: str = typer.Option(None, "--store", help="store URL or path (default: $HWLOOP_HOME/measurements.db)"),
    data: str = typer.Option(None, "--data", help="a measurement directory instead of the store"),
    plot: Path = typer.Option(None, "--plot", help="parity plot PNG"),
    folds: int = typer.Option(5, "--folds", help="folds for leave-models-out"),
    save: bool = typer.Option(True, "--save/--no-save", help="write the metrics into the predictor's metadata"),
) -> None:
    """Evaluate a predictor's kind on its device's data: random layer split, unseen models, per group."""
    from hwloop.predict import load_predictor, make_predictor
    from hwloop.predict.evaluate import evaluate_predictor
    from hwloop.predict.io import load_training_data

    p = load_predictor(predictor)
    if folds < 2:
        raise ConfigError(f"--folds {folds} must be >= 2")
    _check_out(plot, ".png", "--plot")
    _check_store(_source(store, data))
    dev = p.fingerprint.key if p.fingerprint is not None else None
    td = load_training_data(_source(store, data), device=dev, mode=p.mode,
                            statistic=getattr(p, "target_statistic_", None) or "min")
    params = p.get_params()
    metrics = evaluate_predictor(lambda: make_predictor(p.kind, fingerprint=p.fingerprint, mode=p.mode, **params),
                                 td, folds=folds, plot_path=plot)
    console.print(_metrics_table(metrics, f"{p.kind} on {td.fingerprint.name} ({td.mode})"))
    if save:
        p.metrics_ = metrics
        p.save(predictor)
        console.print(f"metrics saved in {predictor}")
    if plot:
        console.print(f"parity plot: {plot}")


@predictor_app.command("show")
def show_cmd(
    predictor: Path = typer.Argument(..., help="predictor JSON file"),
    as_json: bool = typer.Option(False, "--json", help="print the metadata as JSON"),
) -> None:
    """Show a predictor file's metadata (checked: schema version and hashes)."""
    from hwloop.predict.io import load_predictor

    p = load_predictor(predictor)
    meta = p.metadata_
    if as_json:
        print(json.dumps(meta, indent=1, sort_keys=True))
        return
    fp = meta.get("fingerprint") or {}
    console.print(f"[bold]{meta['predictor']}[/bold] predictor  schema v{meta['schema_version']}  "
                  f"hwloop {meta['hwloop_version']}  created {meta.get('created')}")
    console.print(f"device {fp.get('name', '?')} ({fp.get('key', '?')})  mode {meta['mode']}  "
                  f"target {meta.get('target_statistic') or 'latency'} ms")
    console.print(f"trained on {meta['n_train']} layers (data hash {meta['training_data_hash']}); "
                  f"{len(meta['features'])} features")
    agg = meta.get("aggregator")
    if agg:
        coef = ", ".join(f"{n}={c:.4g}" for n, c in zip(agg["features"], agg["coef"]))
        console.print(f"aggregation ({agg['method']}, {agg['n_models']} models): {coef}")
    if meta.get("metrics"):
        console.print(_metrics_table(meta["metrics"], "metrics"))


@app.command("predict")
def predict_cmd(
    model: str = typer.Argument(..., help="built-in model name, 'package.module:factory', or a JSON / JSON-lines "
                                "file of layer descriptions (no torch needed)"),
    predictor: Path = typer.Option(..., "--predictor", help="predictor JSON file"),
    kwargs: str = typer.Option(None, "--kwargs", help="model kwargs as a JSON object"),
    input_shape: str = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 3,32,32"),
    batch: int = typer.Option(1, "--batch", help="batch size"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16"),
    device: str = typer.Option(None, "--device", help="device the prediction is for (warns on mismatch)"),
    layers: bool = typer.Option(False, "--layers", help="also list the per-op predictions"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    probe: str = typer.Option(None, "--probe", help="measure reference layers here first and on a speed mismatch "
                              "'scale' the predictions (warning) or 'refuse' (default: $HWLOOP_PREDICTOR_PROBE, off)"),
) -> None:
    """Predict MODEL's whole-model latency with a saved predictor."""
    import warnings

    from hwloop.predict import PredictorWarning, load_predictor

    if probe is not None and probe not in ("scale", "refuse", "off"):
        raise ConfigError(f"--probe {probe!r} is unknown; allowed: scale, refuse, off")
    p = load_predictor(predictor, probe="off")  # probed below, where its warning is caught and printed once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PredictorWarning)
        if probe is None:
            from hwloop.predict.probe import env_probe_action, run_probe

            if env_probe_action():
                run_probe(p, on_mismatch=str(env_probe_action()))
        elif probe != "off":
            from hwloop.predict.probe import run_probe

            run_probe(p, on_mismatch=probe)
        if device is not None:
            p.check_device(_device_fingerprint(device))
        wl, label, ref_dict, names = _workload_of(p, model, kwargs, input_shape, batch, dtype)
        cal = p.predict_workload(wl)
        raw = p.predict_workload(wl, calibrated=False)
    for w in caught:
        if issubclass(w.category, PredictorWarning):
            err_console.print(f"warning: {w.message}", soft_wrap=True, markup=False)
    res = getattr(p, "probe_result_", None)
    if res is not None and res.status == "match":
        err_console.print(res.message, soft_wrap=True, markup=False)
    per = p.predict(wl) if layers else None
    if as_json:
        out: dict[str, Any] = {"model": ref_dict, "latency_ms": cal, "raw_sum_ms": raw,
                               "calibrated": getattr(p, "aggregator_", None) is not None,
                               "device": p.fingerprint.name if p.fingerprint else None, "mode": p.mode,
                               "speed_scale": getattr(p, "speed_scale_", 1.0)}
        if res is not None:
            out["probe"] = res.to_dict()
        if per is not None:
            out["layers"] = [{"name": n, "op": o, "latency_ms": float(v)} for (n, o), v in zip(names, per)]
        print(json.dumps(out, indent=1))
        return
    what = "calibrated" if getattr(p, "aggregator_", None) is not None else "sum of ops (no calibration fitted)"
    if getattr(p, "speed_scale_", 1.0) != 1.0:
        what += f", scaled {p.speed_scale_:.3f}x by the probe"
    console.print(f"{label}: [bold]{cal:.4f} ms[/bold] ({what}; raw sum "
                  f"{raw:.4f} ms) on {p.fingerprint.name if p.fingerprint else '?'} ({p.mode})")
    if per is not None:
        from rich.table import Table

        t = Table()
        for c in ("layer", "op", "ms"):
            t.add_column(c)
        for (n, o), v in zip(names, per):
            t.add_row(n, o, f"{v:.4f}")
        console.print(t)


def _workload_of(p: Any, model: str, kwargs: str | None, input_shape: str | None, batch: int, dtype: str
                 ) -> tuple[Any, str, dict[str, Any], list[tuple[str, str]]]:
    """(workload, label, JSON description, [(layer name, op)]) of a model name or a layer-description file.

    A ``.json``/``.jsonl`` file holds layer dicts (see :mod:`hwloop.predict.plain`): no model is built and
    torch is not imported; ``--kwargs``/``--input-shape``/``--batch``/``--dtype`` do not apply to it.
    """
    if model.endswith((".json", ".jsonl")):
        from hwloop.predict.plain import read_layers

        if kwargs or input_shape or batch != 1 or dtype != "float32":
            raise ConfigError("--kwargs, --input-shape, --batch and --dtype do not apply to a layer file (its layers "
                              "give shapes and dtypes)")
        layers = read_layers(model)
        names = [(str(d.get("name", i)) if isinstance(d, dict) else str(i),
                  str(d.get("op", "?")) if isinstance(d, dict) else "?") for i, d in enumerate(layers)]
        return layers, f"{model} ({len(layers)} layers)", {"layers_file": model, "n_layers": len(layers)}, names
    from hwloop.cli._common import parse_model_ref

    ref = parse_model_ref(model, kwargs, input_shape, batch, dtype)
    wl = p.trace(ref.build(), ref.example_input())
    return wl, f"{ref.label} batch {ref.batch} {ref.dtype}", ref.to_dict(), [(s.name, s.op) for s in wl.layers]
