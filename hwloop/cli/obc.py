"""``hwloop search obc CHECKPOINT``: compress a trained model to a latency budget with OBC, no retraining.

A separate module that registers on the ``search`` sub-app (see :mod:`hwloop.cli._app`). It loads the
checkpoint (a safetensors state dict of a built-in model), takes ``--calib`` calibration images from the
task's training split, runs the ``obc`` method (:mod:`hwloop.methods.obc`) for ``--target`` (a fraction of
the dense model's latency on ``--device``), measures the result on the device and writes the plan and
weights (``plan.json``, ``weights.safetensors``) plus ``metrics.json`` into ``--out``.

Example::

    hwloop search obc ../shared/checkpoints/resnet20_cifar10_e35.safetensors --calib 1024 \\
        --device asic-tpu32 --target 0.5 --out runs/obc-r20
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hwloop.cli._app import search_app

__all__ = ["obc"]


@search_app.command("obc")
def obc(
    checkpoint: Path = typer.Argument(..., help="trained weights: a safetensors state dict of --model"),
    model: str = typer.Option("resnet20", "--model", help="the built-in model the checkpoint belongs to"),
    task: str = typer.Option("cifar10", "--task", help="data set of the calibration and test images"),
    data_root: str = typer.Option(None, "--data-root", help="data set location (default: the task's)"),
    calib: int = typer.Option(1024, "--calib", help="calibration images from the training split"),
    device: str = typer.Option("asic-tpu32", "--device", help="device profile the budget is measured on"),
    target: float = typer.Option(0.5, "--target", help="latency budget: a fraction of the dense model's latency"),
    bits: str = typer.Option("8,4", "--bits", help="weight bit-widths offered per layer ('' for none)"),
    eval_limit: int = typer.Option(None, "--eval-limit", help="score only this many validation images"),
    dp: str = typer.Option("additive", "--dp", help="the DP's cost: additive (per-unit savings, corrected against "
                           "the device) or joint (the whole model's op sum; exact on asic devices)"),
    rerank: int = typer.Option(0, "--rerank", help="with --dp joint: stitch its K best answers and keep the lowest "
                               "calibration loss (0: the DP's answer)"),
    joint_source: str = typer.Option("measure", "--joint-source", help="with --dp joint: per-op costs measured "
                                     "live on --device, or 'predictor' (the device's shipped predictor)"),
    calibrate: int = typer.Option(0, "--calibrate", help="with --dp joint: whole-model probes measured before the "
                                  "DP to fit the model's fixed share (the CPU's per-op overhead; 0: none)"),
    calibrate_by: str = typer.Option("whole", "--calibrate-by", help="with --calibrate: 'whole' (one fixed share) "
                                     "'resolution' (one scale per feature-map resolution, deep-cut probes added) or "
                                     "'dp' (one fixed share fitted on the DP's own answers)"),
    margin: float = typer.Option(0.0, "--margin", help="the DP's first answer aims at target x (1 - margin), for a "
                                 "noisy cost such as the CPU's"),
    out: Path = typer.Option(Path("runs/obc"), "--out", "-o", help="output directory"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Compress a trained model to a latency budget with OBC (ExactOBS + OBQ + knapsack DP), no retraining."""
    import torch
    from rich.console import Console

    from hwloop.compress.extract import save_compressed
    from hwloop.errors import SearchError
    from hwloop.methods.base import MethodContext
    from hwloop.methods.measure import measure_candidates
    from hwloop.methods.obc.method import ObcConfig, ObcMethod
    from hwloop.search.costtable import shipped_predictor
    from hwloop.search.latency import select_latency_model
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task

    console = Console(stderr=True)

    def say(m: str) -> None:
        console.print(m, highlight=False)

    if not checkpoint.is_file():
        raise SearchError(f"checkpoint {str(checkpoint)!r} is not a file; give a safetensors state dict")
    if not 0.0 < target <= 1.0:
        raise SearchError(f"--target={target!r} must be a fraction of the dense latency in (0, 1]")
    try:
        bit_list = [int(b) for b in bits.split(",") if b.strip()]
    except ValueError as e:
        raise SearchError(f"--bits={bits!r} must be comma-separated ints, e.g. 8,4") from e
    kinds = ["channels", "bits"] if bit_list else ["channels"]
    cfg = ObcConfig.from_dict({"calib": calib, "kinds": kinds, "bits": bit_list or [8], "cost_source": "table",
                               "check": "device", "dp": dp, "rerank": rerank,
                               "joint_source": joint_source, "calibrate": calibrate,
                               "calibrate_by": calibrate_by, "margin": margin}, where="hwloop search obc")
    t = make_task(task, model, batch_size=128, val_limit=eval_limit, data_root=data_root)
    net = t.ref.build()
    from safetensors.torch import load_file

    try:
        state = load_file(str(checkpoint))
        net.load_state_dict(state)
    except Exception as e:  # safetensors / load_state_dict errors: one line
        raise SearchError(f"checkpoint {str(checkpoint)!r} does not load into {model}: {str(e).splitlines()[0]}") from e
    net.eval()
    torch.manual_seed(0)
    space = SearchSpace.from_ref(t.ref, SpaceOptions(bits=bool(bit_list), bit_levels=tuple(sorted({*bit_list, 8})),
                                                     a_bits=8 if bit_list else None), model=net)
    pred = shipped_predictor(device)
    lat = select_latency_model(space, predictor_path=str(pred) if pred else None, device=device, log=say)
    acc0 = t.eval_fn(net)
    say(f"dense model: {acc0:.2f}% on {eval_limit or 'all'} validation images")
    ctx = MethodContext(model=net, ref=t.ref, space=space, train=t.train, eval_fn=t.eval_fn, latency=lat,
                        target=target, device=device, seed=0, base_accuracy=acc0, log=say, progress=progress)
    result = ObcMethod(cfg).run(ctx)
    measure_candidates(result, ctx)
    c = result.candidates[0]
    save_compressed(c.model, c.plan, out)
    doc = {"checkpoint": str(checkpoint), "device": device, "dense_accuracy": acc0, **c.to_dict()}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=float) + "\n", encoding="utf-8")
    typer.echo(f"obc: {c.accuracy:.2f}% (dense {acc0:.2f}%), measured {c.measured_ratio:.3f}x of the dense latency "
               f"on {device} (target {target}), DP first answer {c.extra['dp_first_whole_ratio']:.3f}x, "
               f"budget {c.status}; written to {out}")
