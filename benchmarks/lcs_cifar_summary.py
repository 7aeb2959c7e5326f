"""Summarise one CIFAR-10 LCS run of ``bench_lcs.py`` (issue 20): accuracy vs α of the width family, the single
models, and the asic-tpu32 latency of each width from ``search/results/lcs_latency/asic-tpu32.json`` (latency does not
depend on the weights). Writes ``summary.json`` in the run folder and prints a markdown table.

Run: ``.venv/bin/python benchmarks/lcs_cifar_summary.py search/results/lcs_cifar/warm_s0``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1])
    lat = json.loads((ROOT / "search" / "results" / "lcs_latency" / "asic-tpu32.json").read_text())
    live = {round(float(a), 4): v for a, v in lat["live_ms"].items()}
    ev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {"family": {}, "width": {}}
    singles = {}
    for p in sorted(out.glob("single_*.json")):
        if p.name.endswith("_train.json"):
            continue
        d = json.loads(p.read_text())
        singles[round(float(d["width"]), 4)] = d
    fam_train = json.loads((out / "family_train.json").read_text()) if (out / "family_train.json").exists() else {}
    rows = []
    for a, acc in ev["family"].items():
        w = round(float(ev["width"][a]), 4)
        s = singles.get(w)
        rows.append({"alpha": float(a), "width": w, "family_acc": acc, "single_acc": s["accuracy"] if s else None,
                     "asic_tpu32_live_ms": live.get(round(float(a), 4)),
                     "params": ev.get("params", {}).get(a)})
    summary = {"rows": rows, "dense_bn_checkpoint": ev.get("dense_bn_checkpoint"),
               "dense_bn_asic_tpu32_ms": lat["dense_bn_ms"],
               "family_cost": {k: fam_train.get(k) for k in ("seconds", "steps", "train_image_passes")},
               "single_cost": {str(w): {k: d["train"].get(k) for k in ("seconds", "images")} for w, d in singles.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("| α | width | asic-tpu32 ms (live) | × dense BN | family % | single % |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ms = r["asic_tpu32_live_ms"]
        print(f"| {r['alpha']:.3g} | {r['width']:g} | {ms:.5f} | {ms / lat['dense_bn_ms']:.3f} | {r['family_acc']:.1f} | "
              f"{'–' if r['single_acc'] is None else format(r['single_acc'], '.1f')} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
