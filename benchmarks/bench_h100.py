"""H100 benchmark: whole nets (CUDA graph and eager) and single layers of the real H100 data.

Reads the shipped import (``measurements/h100``: store export + traced workloads) and prints the tables
docs/predictors.md quotes ("H100"):

1. **CUDA-graph nets, leave one architecture out** — per (batch, dtype) group, fit on every
   ResNet-20 net (all groups) and predict every VGG-16 net, and the reverse. No row of the held-out
   architecture — from any file — enters fitting or calibration. Three fits of :class:`GraphCostPredictor`
   (additive per-op costs fitted end to end on whole nets, one calibration per group):

   * ``signed`` — ``features="gpu"``: the 22 GPU cost terms, signed ridge per group (ridge and isolated-layer
     weight chosen on a split of the training nets, below);
   * ``nonneg`` — ``features="gpu_nonneg"`` (**the shipped fit**): the same 22 terms, non-negative least squares
     per group, no constant; no hyper-parameter;
   * ``physical`` — ``features="physical"``: three non-negative terms per op (kernels, SM waves × main-loop steps,
     bytes), one fit shared by the groups of a mode, then a scale per group; no hyper-parameter;

   beside a per-group constant (the training architecture's median latency) and the MACs proxy (latency ∝
   MACs, the ratio fitted on the training architecture; its Spearman is that of MACs alone).
2. The same within each architecture (50/50 split of every group, seed 0), and for the eager nets.
3. The unseen-batch fallback: calibrated at one batch only, predicting the other.
4. **Single layers** (``layers.csv``, eager): XGBoost on hwloop's features, random 80/20 split and
   leave one channel staircase out (training: every other layer of ``layers.csv``).

Choices are made on validation data, never on the reported test cells: the ridge penalty and the
isolated-layer weight of GraphCostPredictor are picked on a 50/50 split (seed 1) of the *training*
nets only (for leave-one-architecture-out: of the training architecture's nets).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_h100.py [--data measurements/h100] [--json out.json] \
        [--save predictor.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"vgg16_gap": "vgg16", "resnet20": "resnet20"}


def load(data: Path) -> dict[str, Any]:
    """Nets (arch, mode, batch, dtype, ms, workload) and layers (spec, ms, source facts) of the import."""
    from hwloop.models import ModelRef
    from hwloop.store import MeasurementStore
    from hwloop.workload import LayerSpec, Workload

    wl = {}
    with gzip.open(data / "workloads.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            wl[d["model_key"]] = Workload.from_dict(d["workload"])
    nets, layers = [], []
    with MeasurementStore("sqlite://") as st:
        st.import_(data / "measurements.parquet")
        (fingerprint,) = st.devices()
        for row in st.rows():
            extra = json.loads(row["extra_json"] or "{}")
            if row["kind"] == "layer":
                layers.append({"spec": LayerSpec.from_dict(json.loads(row["spec_json"])), "ms": row["latency_ms"],
                               **extra})
            else:
                m = ModelRef.from_dict(json.loads(row["model_json"]))
                nets.append({"arch": ARCH[m.name], "mode": row["mode"], "batch": m.batch, "dtype": m.dtype,
                             "ms": row["latency_ms"], "wl": wl[m.key], "macs": wl[m.key].macs, "net": extra["net"]})
    return {"nets": nets, "layers": layers, "fingerprint": fingerprint}


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    rho = float(spearmanr(pred, y)[0]) if np.ptp(pred) > 0 else float("nan")
    from hwloop.predict.graph_cost import MIN_MS

    return {"spearman": rho, "acc10": float(np.mean(np.abs(pred / y - 1) <= 0.1)), "n": len(y),
            "median_ratio": float(np.median(pred / y)), "n_floored": int(np.sum(pred <= MIN_MS))}


def _fit_predict(train: list[dict], test: list[dict], layers: list[dict], params: dict[str, Any]) -> np.ndarray:
    from hwloop.predict.base import PredictorWarning
    from hwloop.predict.graph_cost import GraphCostPredictor

    p = GraphCostPredictor(**params, mode=train[0]["mode"])
    p.fit_models([n["wl"] for n in train], [n["ms"] for n in train],
                 layers=[x["spec"] for x in layers], layer_ms=[x["ms"] for x in layers])
    with warnings.catch_warnings():  # sums below MIN_MS come back as MIN_MS (counted as n_floored)
        warnings.simplefilter("ignore", PredictorWarning)
        return np.array([p.predict_workload(n["wl"]) for n in test])


def _layers_without(layers: list[dict], arch: str) -> list[dict]:
    """Isolated layers with no row of ``arch``: layers.csv, and in-net layers of the other architecture."""
    return [x for x in layers if x["source"] == "h100/layers.csv" or x.get("arch") not in (arch, None)]


def _groups(nets: list[dict]) -> list[tuple[int, str]]:
    return sorted({(n["batch"], n["dtype"]) for n in nets}, key=lambda g: (g[0], g[1] != "float32"))


#: the fits reported beside each other; None: the signed fit's parameters chosen by :func:`choose_params`
FITS: dict[str, dict[str, Any] | None] = {"signed": None, "nonneg": {"features": "gpu_nonneg"},
                                          "physical": {"features": "physical"}}
SHIPPED_FIT = "nonneg"
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)
LAYER_WEIGHTS = (0.0, 0.1)


def loao(nets: list[dict], layers: list[dict]) -> list[dict[str, Any]]:
    """Leave one architecture out, per (batch, dtype) group: ours, constant, MACs. The parameters are
    chosen on a validation split of the training architecture's nets (:func:`choose_params`)."""
    out = []
    for held in ("vgg16", "resnet20"):
        train = [n for n in nets if n["arch"] != held]
        params = choose_params(train, _layers_without(layers, held))
        test_all = [n for n in nets if n["arch"] == held]
        preds = {f: _fit_predict(train, test_all, _layers_without(layers, held) if fp is None else [], fp or params)
                 for f, fp in FITS.items()}
        for b, dt in _groups(nets):
            idx = [i for i, n in enumerate(test_all) if (n["batch"], n["dtype"]) == (b, dt)]
            y = np.array([test_all[i]["ms"] for i in idx])
            tr = [n for n in train if (n["batch"], n["dtype"]) == (b, dt)]
            const = np.full(len(y), np.median([n["ms"] for n in tr]))
            ratio = np.median([n["ms"] / n["macs"] for n in tr])
            macs = np.array([test_all[i]["macs"] for i in idx]) * ratio
            out.append({"test": held, "batch": b, "dtype": dt, "params": params,
                        **{f: metrics(pr[idx], y) for f, pr in preds.items()}, "constant": metrics(const, y),
                        "macs": metrics(macs, y)})
    return out


def within(nets: list[dict], layers: list[dict], params: dict[str, Any] | None, seed: int = 0,
           fits: tuple[str, ...] = tuple(FITS)) -> list[dict[str, Any]]:
    """50/50 split of every (arch, batch, dtype) group; fit on the first halves (all archs), test the second."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    archs = [a for a in ("resnet20", "vgg16") if any(n["arch"] == a for n in nets)]
    for arch in archs:
        for g in _groups(nets):
            grp = [n for n in nets if n["arch"] == arch and (n["batch"], n["dtype"]) == g]
            perm = rng.permutation(len(grp))
            train += [grp[i] for i in perm[: len(grp) // 2]]
            test += [grp[i] for i in perm[len(grp) // 2:]]
    params = params if params is not None else choose_params(train, layers)
    preds = {f: _fit_predict(train, test, layers if FITS[f] is None else [], FITS[f] or params) for f in fits}
    out = []
    for arch in archs:
        for b, dt in _groups(nets):
            idx = [i for i, n in enumerate(test) if n["arch"] == arch and (n["batch"], n["dtype"]) == (b, dt)]
            y = np.array([test[i]["ms"] for i in idx])
            tr = [n for n in train if n["arch"] == arch and (n["batch"], n["dtype"]) == (b, dt)]
            ratio = np.median([n["ms"] / n["macs"] for n in tr])
            out.append({"test": arch, "batch": b, "dtype": dt, "params": params,
                        **{f: metrics(pr[idx], y) for f, pr in preds.items()},
                        "constant": metrics(np.full(len(y), np.median([n["ms"] for n in tr])), y),
                        "macs": metrics(np.array([test[i]["macs"] for i in idx]) * ratio, y)})
    return out


def fallback(nets: list[dict], layers: list[dict], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Calibrate at one batch only (both archs), predict the other batch (the documented fallback)."""
    from hwloop.predict.base import PredictorWarning

    out = []
    batches = sorted({n["batch"] for n in nets})
    for b_fit in batches:
        train = [n for n in nets if n["batch"] == b_fit]
        for b_test in batches:
            if b_test == b_fit:
                continue
            test = [n for n in nets if n["batch"] == b_test]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PredictorWarning)
                preds = {f: _fit_predict(train, test, layers if fp is None else [], fp or params) for f, fp in FITS.items()}
            y = np.array([n["ms"] for n in test])
            out.append({"fit_batch": b_fit, "test_batch": b_test, **{f: metrics(pr, y) for f, pr in preds.items()}})
    return out


def choose_params(train: list[dict], layers: list[dict], seed: int = 1) -> dict[str, Any]:
    """Ridge penalty and isolated-layer weight picked on a validation split of the *training* nets only:
    each (arch, batch, dtype) group of ``train`` is split 50/50 (seed 1), fitted on one half, scored
    (mean ±10% + mean Spearman) on the other."""
    best: tuple[float, dict[str, Any]] | None = None
    for ridge in RIDGES:
        for lw in LAYER_WEIGHTS:
            params = {"ridge": ridge, "layer_weight": lw}
            cells = within(train, layers, params, seed=seed, fits=("signed",))
            score = float(np.mean([c["signed"]["acc10"] for c in cells])
                          + np.nanmean([c["signed"]["spearman"] for c in cells]))
            if best is None or score > best[0]:
                best = (score, params)
    assert best is not None
    return best[1]


def single_layers(layers: list[dict], seed: int = 0) -> dict[str, Any]:
    """XGBoost (hwloop's default predictor) on layers.csv: random 80/20 and leave one staircase out."""
    from hwloop.predict.learned import XGBoostPredictor

    rows = [x for x in layers if x["source"] == "h100/layers.csv"]
    specs = [x["spec"] for x in rows]
    y = np.array([x["ms"] for x in rows])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rows))
    cut = int(0.8 * len(rows))
    out: dict[str, Any] = {}

    def run(tr: np.ndarray, te: np.ndarray) -> dict[str, float]:
        p = XGBoostPredictor(n_jobs=1).fit([specs[i] for i in tr], y[tr])
        return metrics(p.predict([specs[i] for i in te]), y[te])

    out["random_80_20"] = run(perm[:cut], perm[cut:])
    stairs = sorted({str(x["staircase"]) for x in rows if x.get("staircase")})
    for s in stairs:
        te = np.array([i for i, x in enumerate(rows) if x.get("staircase") == s])
        tr = np.array([i for i, x in enumerate(rows) if x.get("staircase") != s])
        out[f"staircase_{s}_out"] = run(tr, te)
    return out


def save_predictor(d: dict[str, Any], nets: list[dict], res: dict[str, Any], path: Path, fit: str = SHIPPED_FIT) -> None:
    """Fit GraphCostPredictor (``fit``: a key of :data:`FITS`) on every net (CUDA-graph and eager calibrations in
    one file) and save it."""
    from hwloop.predict.graph_cost import GraphCostPredictor

    params = FITS[fit] or res["graph_within"][0]["params"]
    p = GraphCostPredictor(**params, fingerprint=d["fingerprint"], mode="cuda_graph")
    p.fit_models([n["wl"] for n in nets], [n["ms"] for n in nets], modes=[n["mode"] for n in nets],
                 layers=[x["spec"] for x in d["layers"]], layer_ms=[x["ms"] for x in d["layers"]])
    summary = lambda cells: {"mean_spearman": float(np.nanmean([c[fit]["spearman"] for c in cells])),
                             "mean_acc10": float(np.mean([c[fit]["acc10"] for c in cells]))}
    p.metrics_ = {"source": "benchmarks/bench_h100.py", "statistic": "median", "fit": fit,
                  **{k: summary(res[k]) for k in ("graph_within", "graph_loao", "eager_within", "eager_loao")}}
    p.save(path)
    print(f"\nsaved {path} ({fit}; groups: {', '.join(p.groups_)})")


def _fmt(c: dict[str, float]) -> str:
    return f"{c['spearman']:6.3f} {100 * c['acc10']:5.1f}%"


def print_table(title: str, cells: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print("| test arch | batch | dtype | " + " | ".join(f"{f} rho / ±10%" for f in FITS)
          + " | constant ±10% | MACs rho / ±10% | " + " | ".join(f"{f} pred/meas" for f in FITS) + " |")
    print("|---|---:|---|" + "---|" * (len(FITS) + 2) + "---:|" * len(FITS))
    for c in cells:
        ratios = [f"{c[f]['median_ratio']:.2f}" + (f" ({c[f]['n_floored']} at the floor)" if c[f]["n_floored"] else "")
                  for f in FITS]
        print(f"| {c['test']} | {c['batch']} | {c['dtype']} | " + " | ".join(_fmt(c[f]) for f in FITS)
              + f" | {100 * c['constant']['acc10']:5.1f}% | {_fmt(c['macs'])} | " + " | ".join(ratios) + " |")
    mean = lambda k: f"{np.nanmean([c[k]['spearman'] for c in cells]):6.3f} {100 * np.mean([c[k]['acc10'] for c in cells]):5.1f}%"
    print("| **mean** | | | " + " | ".join(mean(f) for f in FITS)
          + f" | {100 * np.mean([c['constant']['acc10'] for c in cells]):5.1f}% | {mean('macs')} |" + " |" * len(FITS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "measurements" / "h100"))
    ap.add_argument("--json", default=None, help="write every figure here too")
    ap.add_argument("--skip-layers", action="store_true", help="skip the single-layer XGBoost fits")
    ap.add_argument("--save", default=None, help="fit the shipped predictor on every net and save it here (.json)")
    ap.add_argument("--fit", choices=tuple(FITS), default=SHIPPED_FIT, help=f"the fit --save writes ({SHIPPED_FIT})")
    ap.add_argument("--within-seeds", type=int, nargs="*", default=[1, 2, 3],
                    help="more 50/50 splits of the CUDA-graph nets (means only; default 1 2 3)")
    args = ap.parse_args(argv)
    d = load(Path(args.data))
    graph = [n for n in d["nets"] if n["mode"] == "cuda_graph"]
    eager = [n for n in d["nets"] if n["mode"] == "eager"]
    res: dict[str, Any] = {}
    for name, nets, how in (("graph_loao", graph, "loao"), ("graph_within", graph, "within"),
                            ("eager_loao", eager, "loao"), ("eager_within", eager, "within")):
        res[name] = loao(nets, d["layers"]) if how == "loao" else within(nets, d["layers"], None)
        mode = "CUDA-graph" if nets is graph else "eager"
        what = "leave one architecture out" if how == "loao" else "50/50 within each architecture (seed 0)"
        print_table(f"{mode} nets, {what}", res[name])
        print("parameters chosen on the validation split:", sorted({json.dumps(c["params"]) for c in res[name]}))
    res["graph_within_seeds"] = {}
    for seed in args.within_seeds:
        cells = within(graph, d["layers"], None, seed=seed)
        res["graph_within_seeds"][seed] = {f: {"mean_spearman": float(np.nanmean([c[f]["spearman"] for c in cells])),
                                               "mean_acc10": float(np.mean([c[f]["acc10"] for c in cells]))}
                                           for f in FITS}
        print(f"CUDA-graph nets, 50/50 within, seed {seed}: " + "; ".join(
            f"{f} rho {v['mean_spearman']:.3f}, ±10% {100 * v['mean_acc10']:.1f}%"
            for f, v in res["graph_within_seeds"][seed].items()))
    params = res["graph_within"][0]["params"]
    res["graph_fallback"] = fallback(graph, d["layers"], params)
    print("\nunseen batch (calibrated at one batch only, nearest-batch fallback), CUDA-graph nets:")
    for f in res["graph_fallback"]:
        print(f"  fit b{f['fit_batch']} -> test b{f['test_batch']}: " + "; ".join(
            f"{k} rho {f[k]['spearman']:.3f}, ±10% {100 * f[k]['acc10']:.1f}%, pred/meas {f[k]['median_ratio']:.2f}"
            for k in FITS))
    if not args.skip_layers:
        res["single_layers"] = single_layers(d["layers"])
        print("\nsingle layers (layers.csv, eager), XGBoost on hwloop features:")
        for k, v in res["single_layers"].items():
            print(f"  {k}: ±10% {100 * v['acc10']:.1f}% (n={v['n']}), rho {v['spearman']:.3f}")
    if args.save:
        save_predictor(d, graph + eager, res, Path(args.save), args.fit)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
