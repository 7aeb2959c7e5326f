"""Whole models of a family the predictor never saw (issue 15, item 7).

For each model family F of a recorded data set: every layer whose spec appears in an F model (its in-net
layers) is removed from the layer training set, the default XGBoost predictor is fitted on the rest, the
whole-model calibration on the other families' models, and F's models are predicted. Prints, per family and
overall, the share within ±10% and Spearman's rho, for the calibrations in ``--methods`` (the same layer
predictor for each), beside a known-family reference (a random half of every family's models calibrates,
the other half is tested).

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_family.py measurements/local-cpu
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a recorded data set folder (measurements/local-cpu)")
    ap.add_argument("--methods", default="linear,scale,pooled:0.1,pooled:1,pooled:10",
                    help="aggregator methods to compare (pooled:STRENGTH)")
    ap.add_argument("--families", default="", help="comma list (default: every family in the data)")
    args = ap.parse_args()

    from hwloop.predict import load_training_data, make_predictor
    from hwloop.predict.aggregate import Aggregator
    from hwloop.predict.evaluate import regression_metrics

    t0 = time.time()
    td = load_training_data(args.data, progress=False)
    fam = np.array([r.name for r in td.model_refs])
    fams = args.families.split(",") if args.families else sorted(set(fam))
    keys = np.array([s.key for s in td.layer_specs])
    methods = args.methods.split(",")
    print(f"{args.data}: {td.n_layers:,} layers, {td.n_models} models, families {', '.join(sorted(set(fam)))}; "
          f"load average {os.getloadavg()[0]:.1f}")
    res: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def score(p: object, train: np.ndarray, test: np.ndarray, tag: str) -> None:
        per = [p.layer_predictions(w) for w in td.workloads]  # type: ignore[attr-defined]
        for m in methods:
            name, _, strength = m.partition(":")
            agg = Aggregator(name, float(strength or 1.0)).fit([per[i] for i in train], td.model_ms[train])
            pred = np.array([agg.predict_one(*per[i]) for i in test])
            res[m][tag].append((td.model_ms[test], pred, fam[test]))

    for f in fams:
        in_net = {s.key for i in np.flatnonzero(fam == f) for s in td.workloads[i].layers}
        keep = ~np.isin(keys, list(in_net))
        p = make_predictor("xgboost").fit([td.layer_specs[i] for i in np.flatnonzero(keep)], td.layer_ms[keep])
        score(p, np.flatnonzero(fam != f), np.flatnonzero(fam == f), "held-out family")
        print(f"  {f}: {int((~keep).sum()):,} in-net layers removed, fitted on {int(keep.sum()):,} "
              f"({time.time() - t0:.0f} s)", flush=True)
    p = make_predictor("xgboost").fit(list(td.layer_specs), td.layer_ms)
    rng = np.random.default_rng(0)
    half = np.zeros(td.n_models, dtype=bool)
    for f in set(fam):
        idx = rng.permutation(np.flatnonzero(fam == f))
        half[idx[: len(idx) // 2]] = True
    score(p, np.flatnonzero(half), np.flatnonzero(~half), "known family (50/50)")

    for m in methods:
        for tag, parts in res[m].items():
            y = np.concatenate([a for a, _, _ in parts])
            pr = np.concatenate([b for _, b, _ in parts])
            fa = np.concatenate([c for _, _, c in parts])
            mm = regression_metrics(y, pr)
            per_f = ", ".join(f"{f} {100 * np.mean(np.abs(pr[fa == f] / y[fa == f] - 1) <= 0.10):.0f}%"
                              for f in sorted(set(fa)))
            print(f"  calibration {m:10s} {tag:22s}: ±10% {100 * mm['acc10']:5.1f}% (n={len(y)}), rho "
                  f"{mm['spearman']:.3f}, median pred/meas {np.median(pr / y):.3f}; per family: {per_f}")
    print(f"  {time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
