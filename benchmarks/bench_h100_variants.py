"""H100 CUDA-graph nets: the GraphCostPredictor variants tried beside the shipped fit (docs/predictors.md, "H100").

Every variant is scored like ``benchmarks/bench_h100.py``: leave one architecture out (fit on every net of one
architecture, all four (batch, dtype) groups; test every net of the other) and the 50/50 split within each
architecture (seed 0), per group; the means over the eight groups are printed. None of these variants has a
hyper-parameter chosen on any split; they are the alternatives compared with the shipped ``gpu_nonneg`` fit, all
of them reported (the shipped one was picked after seeing these numbers: it keeps the within-architecture figure).

* ``physical`` with other cost sharing (:data:`hwloop.predict.graph_cost.TIES`): which (batch, dtype) groups share
  each term's cost;
* ``gpu_nonneg`` with the per-kernel cost shared by every group;
* blends of the ``gpu_nonneg`` and ``physical`` predictions;
* log-linear per group: ``log ms = a + sum_k b_k log(sum of term k)`` on the physical terms, and on MACs alone.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_h100_variants.py [--data measurements/h100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_h100 as B  # noqa: E402

Split = tuple[str, list[dict], list[dict], list[tuple[tuple[int, str], str | None]]]


def splits(graph: list[dict]) -> list[Split]:
    """The two leave-one-architecture-out splits and the 50/50 within split (seed 0), as in bench_h100."""
    out: list[Split] = []
    groups = B._groups(graph)
    for held in ("vgg16", "resnet20"):
        out.append(("loao", [n for n in graph if n["arch"] != held], [n for n in graph if n["arch"] == held],
                    [(g, None) for g in groups]))
    rng = np.random.default_rng(0)
    tr: list[dict] = []
    te: list[dict] = []
    for arch in ("resnet20", "vgg16"):
        for g in groups:
            grp = [n for n in graph if n["arch"] == arch and (n["batch"], n["dtype"]) == g]
            perm = rng.permutation(len(grp))
            tr += [grp[i] for i in perm[: len(grp) // 2]]
            te += [grp[i] for i in perm[len(grp) // 2:]]
    out.append(("within", tr, te, [(g, a) for a in ("resnet20", "vgg16") for g in groups]))
    return out


def score(sp: list[Split], preds: list[np.ndarray]) -> dict[str, Any]:
    res: dict[str, list[dict[str, float]]] = {"loao": [], "within": []}
    for (how, _, te, cells), pred in zip(sp, preds):
        for g, arch in cells:
            idx = [j for j, n in enumerate(te) if (n["batch"], n["dtype"]) == g and arch in (None, n["arch"])]
            res[how].append(B.metrics(pred[idx], np.array([te[j]["ms"] for j in idx])))
    return {h: {"mean_spearman": float(np.nanmean([c["spearman"] for c in r])),
                "mean_acc10": float(np.mean([c["acc10"] for c in r])),
                "median_ratio": [round(c["median_ratio"], 3) for c in r]} for h, r in res.items()}


def fit_all(sp: list[Split], params: dict[str, Any], ties: dict[str, str] | None = None) -> list[np.ndarray]:
    from hwloop.predict import graph_cost

    feats = params["features"]
    saved = dict(graph_cost.TIES[feats])
    try:
        if ties:
            graph_cost.TIES[feats].update(ties)
        return [B._fit_predict(tr, te, [], params) for _, tr, te, _ in sp]
    finally:
        graph_cost.TIES[feats].clear()
        graph_cost.TIES[feats].update(saved)


def loglinear(sp: list[Split], which: str) -> list[np.ndarray]:
    from hwloop.predict.features import spec_table
    from hwloop.predict.gpu_features import physical_op_features

    def x(n: dict) -> np.ndarray:
        if which == "macs":
            return np.array([np.log(n["macs"])])
        return np.log(physical_op_features(spec_table(n["wl"].layers)).sum(axis=0) + 1e-9)

    out = []
    for _, tr, te, _ in sp:
        pred = np.zeros(len(te))
        for g in {(n["batch"], n["dtype"]) for n in te}:
            a = [n for n in tr if (n["batch"], n["dtype"]) == g]
            idx = [j for j, n in enumerate(te) if (n["batch"], n["dtype"]) == g]
            xa = np.c_[np.stack([x(n) for n in a]), np.ones(len(a))]
            w = np.linalg.lstsq(xa, np.log([n["ms"] for n in a]), rcond=None)[0]
            pred[idx] = np.exp(np.c_[np.stack([x(te[j]) for j in idx]), np.ones(len(idx))] @ w)
        out.append(pred)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(B.ROOT / "measurements" / "h100"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    graph = [n for n in B.load(Path(args.data))["nets"] if n["mode"] == "cuda_graph"]
    sp = splits(graph)
    res: dict[str, Any] = {}
    nonneg = fit_all(sp, {"features": "gpu_nonneg"})
    physical = fit_all(sp, {"features": "physical"})
    res["gpu_nonneg (shipped)"] = score(sp, nonneg)
    res["physical (kernels, bytes shared; waves per dtype)"] = score(sp, physical)
    for name, ties in (("physical, every term per group", {"kernels": "group", "wave_ksteps": "group", "mbytes": "group"}),
                       ("physical, waves per group", {"wave_ksteps": "group"}),
                       ("physical, bytes per batch", {"mbytes": "batch"}),
                       ("physical, kernels per batch", {"kernels": "batch"})):
        res[name] = score(sp, fit_all(sp, {"features": "physical"}, ties))
    res["gpu_nonneg, launches shared by every group"] = score(sp, fit_all(sp, {"features": "gpu_nonneg"},
                                                                           {"launches": "mode"}))
    for w in (0.25, 0.5, 0.75):
        res[f"blend {w} gpu_nonneg + {1 - w} physical"] = score(sp, [w * a + (1 - w) * b for a, b in zip(nonneg, physical)])
    res["log-linear on the physical terms"] = score(sp, loglinear(sp, "physical"))
    res["log-linear on MACs"] = score(sp, loglinear(sp, "macs"))
    print("| variant | LOAO ρ | LOAO ±10% | within ρ | within ±10% |\n|---|---:|---:|---:|---:|")
    for k, v in res.items():
        print(f"| {k} | {v['loao']['mean_spearman']:.3f} | {100 * v['loao']['mean_acc10']:.1f}% "
              f"| {v['within']['mean_spearman']:.3f} | {100 * v['within']['mean_acc10']:.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
