"""Summarise CIFAR-10 LCS runs of ``bench_lcs.py`` (issue 20): accuracy vs α of the width family, the single models,
the asic-tpu32 latency of each width (``search/results/lcs_latency/asic-tpu32.json`` for the instance-norm family,
``asic-tpu32-frozen_bn.json`` for ``--norm frozen_bn``; latency does not depend on the weights) and the member
picked for 0.5 / 0.6 / 0.7 of the dense model's latency (the most accurate on validation within the budget by
measured latency). Writes ``summary.json`` in each run folder and prints markdown tables; with several folders
(seeds of one setting) also mean ± std over them.

Run: ``.venv/bin/python benchmarks/lcs_cifar_summary.py search/results/lcs_cifar/fbn_s0 [fbn_s1 fbn_s2]``
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.5, 0.6, 0.7)


def _j(p: Path) -> Any:
    return json.loads(p.read_text()) if p.exists() else None


def summarise(out: Path) -> dict[str, Any]:
    args = next((_j(p) for p in sorted(out.glob("args*.json"))), {}) or {}
    norm = args.get("norm", "in")
    lat = _j(ROOT / "search" / "results" / "lcs_latency" /
             ("asic-tpu32.json" if norm == "in" else f"asic-tpu32-{norm}.json")) or {"live_ms": {}, "dense_bn_ms": None}
    live = {round(float(a), 4): v for a, v in lat["live_ms"].items()}
    ev = _j(out / "eval.json") or {"family": {}, "width": {}}
    test = ev.get("family_test", {})
    singles = {}
    for p in sorted(out.glob("single_*.json")):
        if not p.name.endswith("_train.json"):
            d = json.loads(p.read_text())
            singles[round(float(d["width"]), 4)] = d
    fam_train = _j(out / "family_train.json") or {}
    start = _j(out / "start.json") or {}
    rows = []
    for a, acc in ev["family"].items():
        w = round(float(ev["width"][a]), 4)
        s = singles.get(w)
        rows.append({"alpha": float(a), "width": w, "family_val": acc, "family_test": test.get(a),
                     "family_start_val": start.get(a),
                     "single_val": s["accuracy"] if s else None, "single_test": s.get("test_accuracy") if s else None,
                     "single_start_val": s.get("start_accuracy") if s else None,
                     "asic_tpu32_live_ms": live.get(round(float(a), 4)), "params": ev.get("params", {}).get(a)})
    dense_ms = lat.get("dense_bn_ms")
    picks = {}
    for t in TARGETS:
        ok = [r for r in rows if dense_ms and r["asic_tpu32_live_ms"] is not None
              and r["asic_tpu32_live_ms"] <= t * dense_ms]
        if ok:
            r = max(ok, key=lambda r: (r["family_val"], r["alpha"]))
            picks[repr(t)] = {"alpha": r["alpha"], "width": r["width"], "ratio": r["asic_tpu32_live_ms"] / dense_ms,
                              "val": r["family_val"], "test": r["family_test"]}
    return {"norm": norm, "args": args, "rows": rows, "dense_bn_checkpoint": ev.get("dense_bn_checkpoint"),
            "dense_bn_asic_tpu32_ms": dense_ms, "targets_asic_tpu32": picks, "split": ev.get("split"),
            "family_cost": {k: fam_train.get(k) for k in ("seconds", "steps", "images", "train_image_passes",
                                                          "calibration")},
            "single_cost": {str(w): {k: d["train"].get(k) for k in ("seconds", "images")} for w, d in singles.items()}}


def _f(v: Any, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)


def main() -> int:
    outs = [Path(p) for p in sys.argv[1:]]
    sums = []
    for out in outs:
        s = summarise(out)
        (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
        sums.append(s)
        print(f"\n{out} ({s['norm']}; family val/test, single val/test, start = before training, val)")
        print("| α | width | asic-tpu32 ms | × dense | family val | family test | single val | single test | start fam/single |")
        print("|---|---|---|---|---|---|---|---|---|")
        d = s["dense_bn_asic_tpu32_ms"]
        for r in s["rows"]:
            ms = r["asic_tpu32_live_ms"]
            print(f"| {r['alpha']:.3g} | {r['width']:g} | {_f(ms, '.5f')} | {_f(ms / d if ms and d else None, '.3f')} | "
                  f"{_f(r['family_val'])} | {_f(r['family_test'])} | {_f(r['single_val'])} | {_f(r['single_test'])} | "
                  f"{_f(r['family_start_val'])} / {_f(r['single_start_val'])} |")
        print(json.dumps({k: v for k, v in s.items() if k not in ("rows", "args")}))
    if len(sums) > 1:
        print(f"\nmean ± std over {len(sums)} runs")
        print("| width | family val | family test | single val | single test |")
        print("|---|---|---|---|---|")

        def ms(vals: list[Any]) -> str:
            v = [x for x in vals if x is not None]
            if not v:
                return "–"
            return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

        for i, r in enumerate(sums[0]["rows"]):
            col = lambda k: [s["rows"][i][k] for s in sums]  # noqa: E731
            print(f"| {r['width']:g} | {ms(col('family_val'))} | {ms(col('family_test'))} | {ms(col('single_val'))} | "
                  f"{ms(col('single_test'))} |")
        for t in map(repr, TARGETS):
            p = [s["targets_asic_tpu32"].get(t) for s in sums]
            if all(p):
                print(f"target {t}: widths {[x['width'] for x in p]}, ratio {[round(x['ratio'], 3) for x in p]}, "
                      f"val {ms([x['val'] for x in p])}, test {ms([x['test'] for x in p])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
