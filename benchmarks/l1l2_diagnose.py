"""Why does ``l1l2`` lose to uniform / magnitude pruning in the evidence harness? Controlled single-cell experiments.

Every experiment uses the harness's own task (splits, loaders, seed-ordered batches), its starting checkpoint, its
cost source and the controls' fine-tuning (:func:`hwloop.search.controls.train_images`), on one (device, target,
seed). It separates the three things the method decides — the widths (allocation), which channels are kept, and
the weights the fine-tune starts from — by swapping one at a time:

* ``search``: the ``l1l2`` search as the spec runs it (no fine-tune); records its widths, the channels its gates
  keep, and the validation accuracy of the extracted model;
* ``searched_ft``: the searched, extracted model fine-tuned for the method's fine-tune images (the method as is);
* ``ckpt_gate_ft``: the checkpoint's weights pruned to the channels the gates keep, fine-tuned for the whole budget;
* ``ckpt_mag_ft``: the checkpoint pruned to ``l1l2``'s *widths* by magnitude (the magnitude control's procedure,
  its widths replaced by ``l1l2``'s), fine-tuned for the whole budget;
* ``ckpt_gate_ft_rest``: as ``ckpt_gate_ft`` but fine-tuned only for the images the search did not use up to the
  warm-up end (what a method that stops searching once the widths are fixed could afford).

``--gate-grads`` instead prints, on the harness's first three training batches from the checkpoint (no training),
the median gate gradient of the task loss and of the latency ratio (λ = 1), per group the mean latency gradient per
gate, and the latency slope per channel ``∂(L/L₀)/∂s`` of each group: what sizes ``gate_lr`` for
``gate_optimizer = "sgd"``, and why a latency-aware search cuts the first stage first (one JSON line,
``OUT/gate_grads.json``).

Choices are read on the validation split; the test accuracy is recorded beside it. Each experiment's result is one
JSON line in ``OUT/results.jsonl`` (done experiments are skipped on a rerun).

Run (from the repository root)::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/l1l2_diagnose.py \
        search/bench-methods-cifar10-resnet20.toml --device asic-tpu32 --target 0.5 --seed 0 \
        --out search/results/l1l2-diagnose/t0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=None, help="experiment names to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override l1l2 keys for the search (JSON values), e.g. gate_lr=0.01; the label gets them")
    ap.add_argument("--widths-from", default=None,
                    help="a harness cell JSON: take its plan's widths and run only the checkpoint/magnitude experiment "
                         "(no search)")
    ap.add_argument("--gate-grads", action="store_true", help="print the gate-gradient magnitudes and exit")
    a = ap.parse_args(argv)

    from hwloop.compress.extract import analyze, prune_groups_
    from hwloop.methods import make_method
    from hwloop.search import differentiable as D
    from hwloop.search.accounting import ComputeLedger
    from hwloop.search.controls import train_images
    from hwloop.search.harness import Harness
    from hwloop.search.harness_spec import load_harness_spec

    spec = load_harness_spec(a.spec)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    h = Harness(spec, out, progress=False)
    h.setup()
    entry = spec.methods[0]
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    tag = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    res_path = out / "results.jsonl"
    done = set()
    if res_path.is_file():
        done = {json.loads(line)["name"] for line in res_path.read_text().splitlines() if line.strip()}

    def record(name: str, **kw: Any) -> None:
        doc = {"name": name, "device": a.device, "target": a.target, "seed": a.seed, **kw}
        with open(res_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, sort_keys=True, default=float) + "\n")
        print(json.dumps(doc, sort_keys=True, default=float), flush=True)

    def want(name: str) -> bool:
        return (a.only is None or name.split("@")[0] in a.only) and name not in done

    lat = h.latency(a.device)
    sch = spec.schedule
    opts = {**entry.options, "finetune_epochs": 0, **overrides}
    method = make_method(entry.name, opts, defaults=sch.method_defaults(), allow_import=False)
    sc = method.config.search_config(a.target, a.seed)  # type: ignore[attr-defined]
    sfx = f"@{tag}" if tag else ""

    if a.gate_grads:
        return gate_grads(h, lat, a.seed, out / "gate_grads.json")

    if a.widths_from:
        cell = json.loads(Path(a.widths_from).read_text(encoding="utf-8"))
        widths = {x["group"]: int(x["kept"]) for x in cell["plan"]["actions"] if x["kind"] == "channel_prune"}
        name = f"cell_widths_mag_ft:{Path(a.widths_from).stem}"
        if want(name):
            t = time.perf_counter()
            net, plan = h.space.compress({f"width:{k}": w / h.space.graph.group(k).channels for k, w in widths.items()})
            assert plan.widths == widths, plan.widths
            seen = train_images(net, h.loader(a.seed), int(cell["train_images"]), sch.lr, weight_decay=sch.weight_decay)
            record(name, val=h.val_eval(net), test=h.test_eval(net), finetune_images=seen, widths=widths,
                   cell_val=cell["val_accuracy"], cell_test=cell["test_accuracy"], wall_s=time.perf_counter() - t,
                   start="checkpoint weights, the cell's widths, magnitude channels")
        return 0

    # the search (always rerun: it is what the other experiments start from; cheap next to the fine-tunes)
    captured: dict[str, Any] = {}
    orig_extract = D.extract

    def capture(gm: Any, **kw: Any) -> Any:
        captured["masks"] = {k: g.keep_mask(kw["widths"].get(k) if kw.get("widths") else None,
                                            rule=kw.get("rule", "effective")).clone()
                             for k, g in gm.channel_gates.items()}
        return orig_extract(gm, **kw)

    D.extract = capture
    led = ComputeLedger()
    t0 = time.perf_counter()
    try:
        res = D.differentiable_search(h.space, lat, h.loader(a.seed), h.val_eval, sc, model=h.model, ledger=led,
                                      log=lambda m: print(m, flush=True))
    finally:
        D.extract = orig_extract
    search_images = led.total(phase="search").train_images
    widths = {k: int(m.sum()) for k, m in captured["masks"].items()}
    masks = captured["masks"]
    ratio = float(res.predicted) / float(res.original)
    budget = 2 * search_images   # the harness schedule: one search epoch + one fine-tune epoch
    warm = round(sc.target_warmup * search_images) if sc.prune_after_warmup else search_images
    if want("search" + sfx):
        record("search" + sfx, overrides=overrides, widths=widths, predicted_ratio=ratio,
               val_extracted=res.accuracy_extracted, search_images=search_images, wall_s=time.perf_counter() - t0,
               history=res.history, masks={k: m.nonzero().flatten().tolist() for k, m in masks.items()})

    def finish(name: str, net: torch.nn.Module, images: int, t: float, **kw: Any) -> None:
        seen = train_images(net, h.loader(a.seed), images, sch.lr, weight_decay=sch.weight_decay)
        record(name, overrides=overrides, val=h.val_eval(net), test=h.test_eval(net), finetune_images=seen,
               predicted_ratio=ratio, widths=widths, wall_s=time.perf_counter() - t, **kw)

    if want("searched_ft" + sfx):
        t = time.perf_counter()
        finish("searched_ft" + sfx, res.model, budget - search_images, t, start="search-trained weights")
    for name, imgs in (("ckpt_gate_ft", budget), ("ckpt_gate_ft_rest", budget - warm)):
        if want(name + sfx):
            t = time.perf_counter()
            net = copy.deepcopy(h.model).eval()
            graph = analyze(net, h.space.example, ignored=h.space.ignored)
            prune_groups_(graph, {k: m for k, m in masks.items() if not bool(m.all())})
            finish(name + sfx, net, imgs, t, start="checkpoint weights, channels the gates keep")
    if want("ckpt_mag_ft" + sfx):
        t = time.perf_counter()
        cfg = {f"width:{k}": w / h.space.graph.group(k).channels for k, w in widths.items()}
        net, plan = h.space.compress(cfg)
        assert {k: v for k, v in plan.widths.items()} == {k: w for k, w in widths.items()
                                                          if w < h.space.graph.group(k).channels}, plan.widths
        finish("ckpt_mag_ft" + sfx, net, budget, t, start="checkpoint weights, l1l2 widths, magnitude channels")
    return 0


def gate_grads(h: Any, lat: Any, seed: int, path: Path, batches: int = 3) -> int:
    """Gate-gradient magnitudes at the start of a search (see the module docstring)."""
    from hwloop.compress.gated import GatedModel

    gm = GatedModel(h.space, h.model, init_spread=0.1)
    gm.train()
    l0 = float(lat.original())
    task_med, lat_med = [], []
    per_group: dict[str, float] = {}
    for i, (x, y) in enumerate(h.loader(seed)):
        if i >= batches:
            break
        gm.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(gm(x), y).backward()
        task_med.append(float(torch.cat([g.a.grad.abs().flatten() for g in gm.channel_gates.values()]).median()))
        gm.zero_grad(set_to_none=True)
        (lat(gm.sizes()) / l0).backward()
        lat_med.append(float(torch.cat([g.a.grad.abs().flatten() for g in gm.channel_gates.values()]).median()))
        per_group = {k: float(g.a.grad.abs().mean()) for k, g in gm.channel_gates.items()}
    sizes = {k: v.detach().clone().requires_grad_(True) for k, v in gm.sizes().items()}
    (lat(sizes) / l0).backward()
    slope = {str(k): float(v.grad) for k, v in sizes.items() if v.grad is not None}
    doc = {"task_grad_median": task_med, "latency_grad_median": lat_med, "latency_grad_mean_per_group": per_group,
           "latency_slope_per_channel": slope, "batches": batches, "seed": seed}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(doc, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
