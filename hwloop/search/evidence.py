"""The search benchmark's parts (``benchmarks/bench_search.py`` calls them): a learned predictor fitted on random
variants measured on the device, the spaces and FLOPs-like proxies of the target sweeps (fronts), and the
Markdown/PNG reports of a single run and of a sweep.

Example:
    >>> from hwloop.models import ModelRef
    >>> from hwloop.search.space import SearchSpace
    >>> space = SearchSpace.from_ref(ModelRef("small_cnn", {}, input_shape=(1, 8, 8)),
    ...                              fronts_space_options("bits", "asic-tpu32"))
    >>> space.options.bits, space.options.tile, type(proxy_latency(space, "bitops")).__name__
    (True, 32, 'SurrogateLatency')
    >>> proxy_latency(space, "params")
    Traceback (most recent call last):
    ...
    hwloop.errors.ConfigError: proxy 'params' is unknown; allowed: flops, bitops
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwloop.errors import ConfigError
from hwloop.search.latency import SurrogateLatency
from hwloop.search.space import SearchSpace, SpaceOptions

__all__ = ["bench_markdown", "fronts_markdown", "fronts_space_options", "load_state_file", "plot_bench",
           "plot_fronts", "proxy_latency", "record_and_fit", "write_keeping_note"]


def record_and_fit(space: SearchSpace, device: str, n_models: int, seed: int, out: Path) -> tuple[Any, dict[str, Any]]:
    """Measure the layers of ``n_models`` random compressed variants on ``device``; fit XGBoost on them.

    80 % of the layers fit a predictor that scores the other 20 % (``holdout_mape``, ``holdout_within_10pct``);
    the saved predictor (``out/predictor.json``) is then fitted on all of them. With fewer measured layers than
    :func:`hwloop.predict.fitting.learned_policy` asks for, the ℓ1/ℓ2 surrogate (one fitted constant) is fitted
    instead; ``kind`` and ``kind_reason`` in the returned info say which.
    """
    from tqdm.auto import tqdm

    from hwloop.devices import MeasureRequest, create_device
    from hwloop.predict.fitting import learned_policy
    from hwloop.predict.learned import XGBoostPredictor
    from hwloop.predict.surrogate import SurrogatePredictor
    from hwloop.search.report import layer_specs_with_bits

    rng = np.random.default_rng(seed)
    dev = create_device(device)
    specs, ms = [], []
    t0 = time.perf_counter()
    for _ in tqdm(range(n_models), desc=f"recording {device}", leave=False):
        cfg = space.sample(rng)
        net, plan = space.compress(cfg)
        layer_specs = [s for s in layer_specs_with_bits(net, space.example, plan) if s.op != "other"]
        res = dev.measure([MeasureRequest.for_layer(s) for s in layer_specs])
        for s, r in zip(layer_specs, res):
            if r.ok:
                specs.append(s)
                ms.append(r.latency_ms)
    rec_s = time.perf_counter() - t0
    n = len(specs)
    idx = rng.permutation(n)
    cut = int(0.8 * n)
    learned, why = learned_policy(n)
    mode = "asic" if getattr(dev, "backend", "") == "asic" else "eager"
    pred = (XGBoostPredictor(n_estimators=400, max_depth=6, n_jobs=2, fingerprint=dev.fingerprint(), mode=mode)
            if learned else SurrogatePredictor(fingerprint=dev.fingerprint(), mode=mode))
    y = np.asarray(ms)
    pred.fit([specs[i] for i in idx[:cut]], y[idx[:cut]])
    test = pred.predict([specs[i] for i in idx[cut:]])
    ape = np.abs(test / y[idx[cut:]] - 1)
    pred.fit(specs, y)
    pred.save(out / "predictor.json")
    info = {"layers": n, "models": n_models, "record_s": rec_s, "holdout_mape": float(ape.mean()),
            "holdout_within_10pct": float((ape <= 0.10).mean()), "kind": pred.kind, "kind_reason": why}
    return pred, info


def load_state_file(path: str, what: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """A safetensors ``state_dict`` (no pickle); a missing or unreadable file is a one-line :class:`ConfigError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"{what} {path}: no such file (a .safetensors state_dict)")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{what} {path}: not a readable safetensors file ({e})") from e


def write_keeping_note(path: Path, text: str) -> None:
    """Write a regenerated Markdown report, keeping the note quoted at the top of the old file (its leading
    ``> ...`` lines, e.g. a "superseded" warning added after the run)."""
    old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    note = old[:next((i for i, line in enumerate(old) if line.strip() and not line.startswith(">")), 0)]
    path.write_text("\n".join(note) + ("\n" if note else "") + text, encoding="utf-8")


def fronts_space_options(space: str, device: str) -> SpaceOptions:
    """The space both searches of a sweep share: ``bits`` (channels + weight bits {2, 4, 8}, 8-bit
    activations) or ``channels`` (channels only, 8-bit weights and activations); tile 32 on ``asic-tpu*``."""
    tile = 32 if device.startswith("asic-tpu") else 1
    if space == "bits":
        return SpaceOptions(bits=True, a_bits=8, tile=tile)
    if space == "channels":
        return SpaceOptions(bits=False, tile=tile)
    raise ConfigError(f"space {space!r} is unknown; allowed: bits, channels")


def proxy_latency(space: SearchSpace, proxy: str) -> SurrogateLatency:
    """A FLOPs-like objective: ``flops`` (MACs) or ``bitops`` (MACs · w_bits · a_bits / 32²)."""
    if proxy == "flops":
        return SurrogateLatency(space, bits_aware=False)
    if proxy == "bitops":
        return SurrogateLatency(space, bits_aware=True, a_bits=space.options.a_bits or 8)
    raise ConfigError(f"proxy {proxy!r} is unknown; allowed: flops, bitops")


def fronts_markdown(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], sweeps: Sequence[str],
                    seeds: Sequence[int]) -> str:
    """The Markdown of a sweep (``fronts.md``): per method and target the mean ± sd accuracy and measured latency
    ratio, hypervolume per seed, and the lowest measured latency that reaches an accuracy."""
    a = summary["args"]
    lines = [(f"#### {a['model']} on {a['task']} (train {a['train_limit'] or 'all'}, val {a['val_limit'] or 'all'}), "
              f"device {a['device']}, epochs pretrain,search,finetune = {a['epochs']}, seeds {a['seeds']}"), "",
             "| method | target | accuracy % (mean ± sd) | measured latency / original | MACs | mean w-bits |",
             "|---|---:|---:|---:|---:|---:|"]
    for method in ("original", *sweeps):
        ts = sorted({r["target"] for r in rows if r["method"] == method})
        for t in ts:
            rs = [r for r in rows if r["method"] == method and r["target"] == t]
            acc = np.array([r["accuracy"] for r in rs])
            rat = np.array([r["ratio"] for r in rs])
            lines.append(f"| {method} | {t:g} | {acc.mean():.2f} ± {acc.std():.2f} | {rat.mean():.3f} "
                         f"({rat.min():.3f}–{rat.max():.3f}) | {np.mean([r['macs'] for r in rs]):.1%} | "
                         f"{np.mean([r['mean_bits'] for r in rs]):.1f} |")
    lines += ["", (f"Hypervolume per seed (accuracy above {a['reference_accuracy']:g} % × latency below the "
                   "original's):"), ""]
    for method, hv in summary["hv"].items():
        lines.append(f"* {method}: " + ", ".join(f"{v:.2f}" for v in hv) + f" (mean {np.mean(hv):.2f})")
    lines += ["", "Lowest measured latency reaching an accuracy (all seeds pooled):", "",
              "| accuracy ≥ | " + " | ".join(sweeps) + " |", "|---:|" + "---:|" * len(sweeps)]
    accs = sorted({round(r["accuracy"]) for r in rows if r["method"] != "original"})
    levels: Sequence[float] = np.unique(np.percentile(accs, [20, 40, 60, 80, 95]).round()).tolist() if accs else []
    for lv in levels:
        cells = []
        for method in sweeps:
            ok = [r["ratio"] for r in rows if r["method"] == method and r["accuracy"] >= lv]
            cells.append(f"{min(ok):.3f}" if ok else "–")
        lines.append(f"| {lv:g} % | " + " | ".join(cells) + " |")
    lines += ["", ("Per seed, the lowest measured latency reaching an accuracy; mean over the seeds that reach it "
                   "(how many):"), "", "| accuracy ≥ | " + " | ".join(sweeps) + " |", "|---:|" + "---:|" * len(sweeps)]
    for lv in (90.0, 95.0, 97.0, 98.0):
        cells = []
        for method in sweeps:
            per = [min((r["ratio"] for r in rows if r["method"] == method and r["seed"] == s and r["accuracy"] >= lv),
                       default=None) for s in seeds]
            hit = [v for v in per if v is not None]
            cells.append(f"{np.mean(hit):.3f} ({len(hit)}/{len(seeds)})" if hit else f"– (0/{len(seeds)})")
        lines.append(f"| {lv:g} % | " + " | ".join(cells) + " |")
    lines += ["", f"wall {summary['wall_s']:.0f} s, torch threads {summary['torch_threads']}"]
    return "\n".join(lines) + "\n"


def plot_fronts(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], args: Mapping[str, Any],
                path: Path) -> None:
    """``fronts.png``: every point of a sweep and each method's Pareto front (accuracy vs measured latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    colors = {"predictor": "tab:red", "flops": "tab:blue", "bitops": "tab:green"}
    labels = {"predictor": "learned-predictor search", "flops": "FLOPs-only search", "bitops": "bit-ops search"}
    for method in summary["fronts"]:
        col = colors.get(method, "tab:gray")
        rs = [r for r in rows if r["method"] == method]
        ax.scatter([r["ratio"] for r in rs], [r["accuracy"] for r in rs], color=col, alpha=0.5, s=22)
        fr = sorted(summary["fronts"][method], key=lambda p: p[1])
        ax.step([p[1] for p in fr], [p[0] for p in fr], where="post", color=col,
                label=f"{labels.get(method, method)} (front)")
    o = [r for r in rows if r["method"] == "original"]
    ax.scatter([1.0] * len(o), [r["accuracy"] for r in o], color="k", marker="*", s=60, label="original")
    ax.set_xlabel(f"measured latency on {args['device']} / original")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{args['model']} on {args['task']}, space {args.get('space', 'bits')}: "
                 f"{len(summary['hv']['predictor'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_markdown(r: Mapping[str, Any]) -> str:
    """The Markdown of a single benchmark run (``report.md``) from its ``report.json``."""
    b = r["baseline"]
    a = r["args"]
    lines = [(f"### {a['model']} on {a['task']} (train {a['train_limit'] or 'all'}, val {a['val_limit'] or 'all'}), "
              f"device {a['device']}, epochs pretrain,search,finetune = {a['epochs']}"), "",
             (f"predictor: {'ℓ1/ℓ2 surrogate' if r['predictor'].get('kind') == 'surrogate' else 'XGBoost'} on "
              f"{r['predictor']['layers']} measured layers, hold-out MAPE "
              f"{r['predictor']['holdout_mape']:.1%} ({r['predictor']['holdout_within_10pct']:.0%} within 10%)"), "",
             *([(f"start: checkpoint {a['checkpoint']} (test accuracy {b['pretrained_accuracy']:.2f}%); the baseline "
                 f"is it trained {b.get('epochs')} more epochs (= search + fine-tune); bit levels "
                 f"{a.get('bit_levels')}"), ""]
               if a.get("checkpoint") else []),
             ("| run | accuracy % | Δacc vs baseline | measured ms | vs baseline | predicted ms | pred. error | MACs | "
              "params | wall s | cost vs baseline |"),
             "|---|---|---|---|---|---|---|---|---|---|---|",
             (f"| unpruned baseline | {b['accuracy']:.2f} | – | {b['measured_ms']:.4f} | – | {b['predicted_ms']:.4f} | "
              f"{b['predicted_ms'] / b['measured_ms'] - 1:+.1%} | 100% | – | {b['seconds']:.1f} | 1.00 |")]
    for label, x in r["runs"].items():
        lines.append(f"| {label}-driven search (target {x['target']:.2f}) | {x['accuracy']:.2f} | "
                     f"{-x['accuracy_drop']:+.2f} | {x['measured_ms']:.4f} | {-x['measured_reduction']:+.1%} | "
                     f"{x['predicted_ms']:.4f} | {x['prediction_error']:+.1%} | {x['macs'] / x['original_macs']:.1%} |"
                     f" {x['params']} | {x['seconds']['total']:.1f} | {x['cost_ratio']:.2f} |")
    lines.append("")
    for label, x in r["runs"].items():
        walls = ", ".join(f"{k} {v:.0f}" for k, v in x["seconds"].items())
        lines.append(f"* {label}: accuracy right after extraction {x['accuracy_extracted']:.2f}%, mean weight bits "
                     f"{x.get('mean_w_bits', float('nan')):.1f}, wall s {walls}")
        if "history" in x:   # runs recorded before the target schedule have no search trace in the report
            trace = "; ".join(f"epoch {h['epoch']}: ratio {h['ratio_end']:.3f}, lambda {h['lambda']:.3g}"
                              for h in x["history"])
            lines.append(f"  search: dual_lr {x['dual_lr']:g}, target warm-up {x['target_warmup']:g} "
                         f"({x['target_curve']}), dual_kp {x['dual_kp']:g}, {x['latency_penalty']} penalty, "
                         f"prune after warm-up {x.get('prune_after_warmup', False)}; {trace}; soft latency at the end "
                         f"of the search {x['soft_final_ratio']:.3f} x (hard sizes {x['hard_search_ratio']:.3f} x), "
                         f"extracted {x['predicted_ratio']:.3f} x original")
        if "budget_status" in x:
            lines.append(f"  budget: {x['budget_status']}"
                         + (f" ({x['budget_reason']})" if x.get("budget_reason") else ""))
    return "\n".join(lines) + "\n"


def plot_bench(r: Mapping[str, Any], path: Path) -> None:
    """``latency_vs_accuracy.png`` of a single run: the baseline and each search, measured (dot) and predicted (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    b = r["baseline"]
    ax.scatter([b["measured_ms"]], [b["accuracy"]], color="k", label="unpruned (same epochs)")
    colors = {"predictor": "tab:red", "flops": "tab:blue"}
    for label, x in r["runs"].items():
        ax.scatter([x["measured_ms"]], [x["accuracy"]], color=colors.get(label, "gray"), label=f"{label}-driven")
        ax.scatter([x["predicted_ms"]], [x["accuracy"]], color=colors.get(label, "gray"), marker="x")
    ax.set_xlabel(f"latency on {r['args']['device']} (ms; x = predicted)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
