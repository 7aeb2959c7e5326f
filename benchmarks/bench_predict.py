"""Predictor benchmark: accuracy per device, baselines side by side, adaptive sampling, throughput.

For every measurement directory (default: ``measurements/local-cpu`` and
``measurements/asic-tpu32``) it prints

1. the measurement noise floor (a repeated subset, when ``repeat.parquet`` exists);
2. every predictor kind side by side on (a) a random 80/20 split of layers and (b) unseen
   whole models (5-fold leave-models-out calibration), raw sum and calibrated;
3. per (family, batch, dtype) group: ±10% accuracy and Spearman ρ of the learned predictor;
4. then fits the shipped predictor (XGBoost + calibration) on all data and writes
   ``predictor.json`` (+ model, metrics) and ``parity.png`` into the directory.

Then, on the first directory: adaptive vs random sampling (simulated with the recorded
timings) and throughput (batched layer predictions, ResNet-18 whole-model prediction).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py [DIR ...] [--quick] [--no-save] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import torch
from torch import nn

from hwloop.predict import make_predictor
from hwloop.predict.evaluate import evaluate_layer_split, evaluate_models, model_group, parity_plot
from hwloop.predict.fitting import fit_predictor
from hwloop.predict.io import load_training_data

#: the data sets this benchmark fits and ships predictors for (measurements/asic is the ASIC owner's)
DEFAULT_DIRS = ("local-cpu", "asic-tpu32")
KINDS = ("xgboost", "gradient_boosting", "random_forest", "lookup", "ridge_macs", "surrogate")


def fmt(m: dict) -> str:
    return (f"{m['mape']:7.1f} {m['rmse_ms']:9.4f} {100 * m['acc5']:6.1f} {100 * m['acc10']:6.1f} "
            f"{m['spearman']:7.3f}")


HEAD = f"{'MAPE%':>7} {'RMSE ms':>9} {'±5%':>6} {'±10%':>6} {'ρ':>7}"


def noise_floor(d: Path, statistic: str) -> None:
    import pandas as pd

    rep = d / "repeat.parquet"
    if not rep.exists():
        return
    a = pd.read_parquet(d / "measurements.parquet")
    b = pd.read_parquet(rep)
    col = "min_ms" if statistic == "min" else "latency_ms"
    m = a.merge(b, on=["workload_key", "kind"], suffixes=("", "_rep"))
    m = m[m["error"].isna() & m["error_rep"].isna()]
    for kind, g in m.groupby(m["kind"] == "layer"):
        r = (g[f"{col}_rep"] / g[col]).to_numpy()
        print(f"  noise floor ({'layers' if kind else 'models'}, {len(r)} re-measured, {statistic}): "
              f"{100 * np.mean(np.abs(r - 1) <= 0.1):.1f}% within ±10%, {100 * np.mean(np.abs(r - 1) <= 0.05):.1f}% "
              f"within ±5% of the first measurement")


def bench_device(d: Path, args: argparse.Namespace) -> dict:
    t0 = time.time()
    data = load_training_data(d, statistic=args.statistic, progress=False)
    print(f"\n=== {d}  device {data.fingerprint.name} ({data.fingerprint.key}, {data.mode}), {data.n_layers} layers, "
          f"{data.n_models} models, target {data.statistic} ms (loaded in {time.time() - t0:.0f} s)")
    noise_floor(d, args.statistic)
    out: dict = {"device": data.fingerprint.name, "n_layers": data.n_layers, "n_models": data.n_models, "kinds": {}}
    train_keys = {s.key for s in data.layer_specs}
    wl_keys = [s.key for w in data.workloads for s in w.layers]
    print(f"  held-out models' ops whose exact spec is in the layer data: "
          f"{100 * np.mean([k in train_keys for k in wl_keys]):.1f}% (layer data comes from other random models)")
    groups = [model_group(r) for r in data.model_refs]
    print(f"\n  {'predictor':18s} | layers (random 20% held out)          | unseen models, raw sum"
          f"                | unseen models, calibrated")
    print(f"  {'':18s} | {HEAD} | {HEAD} | {HEAD}")
    best = None
    for kind in KINDS if not args.quick else ("xgboost", "ridge_macs", "surrogate"):
        t = time.time()
        split = evaluate_layer_split(lambda kind=kind: make_predictor(kind), data.layer_specs, data.layer_ms, seed=0)
        full = make_predictor(kind).fit(list(data.layer_specs), data.layer_ms)
        mod = evaluate_models(full, data.workloads, data.model_ms, groups, folds=5, seed=0)
        print(f"  {kind:18s} | {fmt(split['metrics'])} | {fmt(mod['raw'])} | {fmt(mod['calibrated'])}"
              f"   ({time.time() - t:.0f} s)")
        out["kinds"][kind] = {"layers": split["metrics"], "models_raw": mod["raw"], "models_cal": mod["calibrated"]}
        if kind == "xgboost":
            best = (split, mod)
    assert best is not None
    split, mod = best
    print("\n  xgboost per (family, batch, dtype), unseen models, calibrated:")
    for g, v in mod["per_group"].items():
        c, r = v["calibrated"], v["raw"]
        print(f"    {g:28s} n={c['n']:3d}  ±10% {100 * c['acc10']:5.1f}%  ρ {c['spearman']:.3f}   "
              f"(raw sum: ±10% {100 * r['acc10']:5.1f}%, ρ {r['spearman']:.3f})")
    out["per_group"] = {g: v["calibrated"] for g, v in mod["per_group"].items()}
    if any(data.per_layer_ms):
        ratios = [sum(p.values()) / y for p, y in zip(data.per_layer_ms, data.model_ms) if p]
        print(f"  in-context leaf-module time / whole-model time: median {statistics.median(ratios):.3f}")
    if not args.no_save:
        p = fit_predictor(data, "xgboost", evaluate=False)
        p.metrics_ = {"layers_random_split": split["metrics"], "models_raw_sum": mod["raw"],
                      "models_calibrated": mod["calibrated"], "per_group": mod["per_group"],
                      "baselines": out["kinds"],
                      "protocol": {"test_frac": 0.2, "folds": 5, "seed": 0, "n_layers": data.n_layers,
                                   "n_models": data.n_models, "command": "python benchmarks/bench_predict.py"}}
        path = p.save(d / "predictor.json")
        parity_plot(d / "parity.png", split, mod, title=f"xgboost on {data.fingerprint.name} ({data.mode})")
        agg = p.aggregator_.to_dict()
        print(f"  saved {path} and {d / 'parity.png'}; calibration "
              + ", ".join(f"{n}={c:.4g}" for n, c in zip(agg["features"], agg["coef"])))
    return out


def bench_adaptive(d: Path, args: argparse.Namespace) -> dict:
    from hwloop.predict.adaptive import adaptive_sample

    data = load_training_data(d, statistic=args.statistic, progress=False)
    rng = np.random.default_rng(0)
    perm = rng.permutation(data.n_layers)
    n_test = data.n_layers // 5
    test, pool = perm[:n_test], perm[n_test:]
    specs = [data.layer_specs[i] for i in pool]
    lat = data.layer_ms[pool]
    index = {id(s): i for i, s in enumerate(specs)}
    test_specs, test_ms = [data.layer_specs[i] for i in test], data.layer_ms[test]

    def measure(batch: list) -> np.ndarray:  # the simulated device: recorded timings
        return lat[[index[id(s)] for s in batch]]

    def make():
        return make_predictor("xgboost")

    full = len(specs) if not args.quick else 600
    rounds = 12
    print(f"\n=== adaptive vs random sampling on {d} (pool {len(specs)} layers, {n_test} held out; "
          f"simulated device = recorded timings; {rounds} rounds after a 30% random seed set; eval model: "
          f"default xgboost)")
    from hwloop.predict.evaluate import regression_metrics

    res = {}
    plan = (("random", full), ("random", full // 2), ("diverse", full // 2), ("spread", full // 2),
            ("random", full // 4), ("diverse", full // 4))
    for strategy, budget in plan:
        accs = []
        t = time.time()
        for seed in args.seeds:
            r = adaptive_sample(specs, measure, budget, rounds=rounds, strategy=strategy, seed=seed, progress=False)
            idx = list(r.indices)
            p = make().fit([specs[i] for i in idx], lat[idx])
            accs.append(regression_metrics(test_ms, p.predict(test_specs))["acc10"])
        res[f"{strategy}@{budget}"] = {"mean": float(np.mean(accs)), "per_seed": [float(a) for a in accs]}
        print(f"  {strategy:7s} budget {budget:5d} ({100 * budget / full:5.1f}%): held-out ±10% accuracy "
              f"{100 * np.mean(accs):5.1f}% (seeds {','.join(map(str, args.seeds))}: "
              f"{', '.join(f'{100 * a:.1f}' for a in accs)})  ({time.time() - t:.0f} s)", flush=True)
    return res


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.sc: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))) + self.sc(x))


def resnet18() -> nn.Module:
    """ImageNet ResNet-18 (torchvision layout, written out: torchvision is not installed here)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        layers += [_Block(cin, c, 1 if i == 0 else 2), _Block(c, c, 1)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)).eval()


def columnar_batch(n: int, rng: np.random.Generator) -> dict:
    """``n`` random layers as a columnar batch (numpy only; almost all distinct)."""
    ops = rng.choice(np.array(["conv2d", "linear", "batchnorm", "activation", "pooling", "add"]), n,
                     p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    conv = ops == "conv2d"
    cin = np.round(np.exp(rng.uniform(np.log(4), np.log(512), n))).astype(np.int64)
    cout = np.round(np.exp(rng.uniform(np.log(4), np.log(512), n))).astype(np.int64)
    dw = conv & (rng.random(n) < 0.15)
    cout = np.where(dw, cin, cout)
    k = rng.choice([1, 3], n)
    rank = np.where(conv & ~dw & (rng.random(n) < 0.1), np.maximum(1, np.minimum(cin, cout) // 4), 0)
    pool = ops == "pooling"
    return {"op": ops, "batch": rng.choice([1, 2], n), "in_channels": cin, "out_channels": cout,
            "in_h": (hw := rng.choice([4, 8, 16, 32], n)), "in_w": hw,
            "kernel_h": np.where(conv, k, np.where(pool, 2, 1)), "padding": np.where(conv, k // 2, 0),
            "stride": np.where(pool, 2, np.where(conv & (rng.random(n) < 0.2), 2, 1)),
            "groups": np.where(dw, cin, 1), "rank": rank,
            "variant": np.where(pool, "max", np.where(ops == "activation", "relu", ""))}


def _timed(fn, k: int = 3) -> tuple[float, float]:
    """(best wall s, CPU s of this process in that run) over ``k`` runs."""
    best = (float("inf"), 0.0)
    for _ in range(k):
        t, c = time.perf_counter(), time.process_time()
        fn()
        w = time.perf_counter() - t
        if w < best[0]:
            best = (w, time.process_time() - c)
    return best


def bench_throughput(d: Path, args: argparse.Namespace) -> dict:
    import os

    from hwloop.predict import load_predictor
    from hwloop.predict.columnar import table_from_columns
    from hwloop.predict.evaluate import regression_metrics
    from hwloop.predict.features import features_from_table, spec_table
    from hwloop.predict.learned import baseline_ms
    from hwloop.predict.sampling import random_layer_specs

    p = load_predictor(d / "predictor.json")
    n = 1_000_000 if not args.quick else 100_000
    batch = columnar_batch(n, np.random.default_rng(7))
    table = table_from_columns(batch)
    distinct = len(np.unique(table, axis=0))
    specs = random_layer_specs(2000, np.random.default_rng(7)) * 10
    p.predict(table[:1000])
    load = os.getloadavg()[0]
    print(f"\n=== throughput ({d / 'predictor.json'}: {p.booster_.num_boosted_rounds()} trees of depth "
          f"{p.max_depth}, baseline {p.baseline}; {p.n_jobs} worker threads; load average {load:.1f} on "
          f"{os.cpu_count()} cores; {n:,} layers, {distinct:,} distinct)")
    rows: list[tuple[str, int, float, float]] = []
    sub = table[:200_000]
    rows.append(("columnar batch -> raw table (numpy)", n, *_timed(lambda: table_from_columns(batch))))
    def feats_and_baseline() -> None:
        acc: dict = {}
        features_from_table(sub, accel_out=acc)
        baseline_ms(sub, p.baseline_coef_, acc)

    rows.append(("raw table -> features + baseline (200k, 1 thread)", len(sub), *_timed(feats_and_baseline)))
    x, mg = features_from_table(sub), np.log(baseline_ms(sub, p.baseline_coef_))
    rows.append((f"XGBoost inplace_predict only (200k, {p.n_jobs} threads)", len(sub),
                 *_timed(lambda: p.predict_features(x, mg))))
    rows.append(("predict(columnar batch), end to end", n, *_timed(lambda: p.predict(batch))))
    rows.append(("predict(raw table), end to end", n, *_timed(lambda: p.predict(table))))
    rows.append((f"predict({len(specs):,} LayerSpec objects)", len(specs), *_timed(lambda: p.predict(specs), 2)))
    rows.append(("  of which spec_table (Python pass)", len(specs), *_timed(lambda: spec_table(specs), 2)))
    for label, m, w, c in rows:
        print(f"  {label:52s} {m / w:12,.0f} /s wall ({w:.3f} s; {c:.3f} CPU-s = {m / max(c, 1e-9):11,.0f} per CPU-s)")
    out: dict = {"rows": {label.strip(): {"n": m, "wall_s": w, "cpu_s": c} for label, m, w, c in rows}}

    # what the 1M/s target costs: accuracy (80/20 split of this data) vs throughput per booster size
    data = load_training_data(d, statistic=args.statistic, progress=False)
    tab, y = spec_table(list(data.layer_specs)), data.layer_ms
    perm = np.random.default_rng(0).permutation(len(y))
    te, tr = perm[:len(y) // 5], perm[len(y) // 5:]
    print(f"  booster size vs accuracy ({d.name}, random 20% of layers held out) and throughput "
          f"(predict(raw table) of {n:,} layers):")
    out["tradeoff"] = []
    for trees, depth, lr in ((600, 7, 0.05), (200, 8, 0.1), (100, 8, 0.1), (50, 8, 0.2), (100, 6, 0.1), (30, 6, 0.3)):
        q = make_predictor("xgboost", n_estimators=trees, max_depth=depth, learning_rate=lr).fit(tab[tr], y[tr])
        acc = regression_metrics(y[te], q.predict(tab[te]))["acc10"]
        w, c = _timed(lambda q=q: q.predict(table), 2)
        print(f"    {trees:4d} trees, depth {depth}, lr {lr:<5}: ±10% {100 * acc:5.1f}%   {n / w:11,.0f} /s wall, "
              f"{n / c:11,.0f} per CPU-s", flush=True)
        out["tradeoff"].append({"trees": trees, "depth": depth, "lr": lr, "acc10": acc, "per_s_wall": n / w,
                                "per_cpu_s": n / c})

    net, ex = resnet18(), torch.randn(1, 3, 224, 224)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = p.predict_model(net, ex)
    t_first = time.perf_counter() - t
    wl = p.trace(net, ex)
    reps = [_timed(lambda: p.predict_workload(wl), 1)[0] for _ in range(50)]
    reps_model = [_timed(lambda: p.predict_model(net, ex), 1)[0] for _ in range(20)]
    print(f"  ResNet-18 (224x224, {len(wl.layers)} ops) predicted {first:.2f} ms: predict_workload "
          f"{1e3 * statistics.median(reps):.2f} ms (median of 50); predict_model {1e3 * statistics.median(reps_model):.2f}"
          f" ms with the trace cached, {t_first:.2f} s on the first call (torch.export trace)")
    out.update({"resnet18_predict_workload_ms": 1e3 * statistics.median(reps),
                "resnet18_predict_model_cached_ms": 1e3 * statistics.median(reps_model),
                "resnet18_first_call_s": t_first})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--statistic", default="min", choices=("min", "median"))
    ap.add_argument("--quick", action="store_true", help="fewer predictors and samples (smoke test)")
    ap.add_argument("--no-save", action="store_true", help="do not write predictor.json / parity.png")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: devices,adaptive,throughput")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1],
                    help="adaptive-sampling seeds (comma list)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1] / "measurements"
    dirs = args.dirs or [root / n for n in DEFAULT_DIRS if (root / n / "measurements.parquet").exists()]
    if not dirs:
        raise SystemExit("no measurement directories found (record one with benchmarks/record_cpu_dataset.py)")
    skip = set(args.skip.split(","))
    res: dict = {"devices": {str(d): bench_device(d, args) for d in dirs} if "devices" not in skip else {}}
    if "adaptive" not in skip:
        res["adaptive"] = bench_adaptive(dirs[0], args)
    if "throughput" not in skip and (dirs[0] / "predictor.json").exists():
        res["throughput"] = bench_throughput(dirs[0], args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
