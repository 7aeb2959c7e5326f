"""Summary of compare.json (bench_obc_reference.py --layers all): per kind the summed losses, the largest per-layer
difference, CPU seconds; per layer shape the CPU ratio.

    .venv/bin/python search/results/obc/reference_all/summary.py > search/results/obc/reference_all/summary.txt
"""
import json
from pathlib import Path

d = json.loads(Path(__file__).with_name("compare.json").read_text())
rows = d["rows"]
print(f"{len(rows)} rows, {len({r['layer'] for r in rows})} of {len(d['layers'])} layers; checkpoint {d['checkpoint']}; "
      f"{d['calib_images']} calibration images; Hessians {d['hessian_cpu_s']:.1f} CPU s")
print(f"{'kind':18s} {'layers':>6s} {'hwloop loss':>12s} {'ref loss':>12s} {'diff':>8s} {'largest layer diff':>32s} "
      f"{'hwloop CPU s':>12s} {'ref CPU s':>10s} {'x':>6s}")
for t in d["totals"]:
    k = t["kind"]
    rr = [r for r in rows if r["kind"] == k]
    big = max(rr, key=lambda r: abs(r["ours_loss"] / r["ref_loss"] - 1) if r["ref_loss"] else 0.0)
    print(f"{k:18s} {t['layers']:6d} {t['ours_loss']:12.4f} {t['ref_loss']:12.4f} "
          f"{t['ours_loss'] / t['ref_loss'] - 1:+8.2%} {big['layer'] + ' ' + format(big['ours_loss'] / big['ref_loss'] - 1, '+.2%'):>32s} "
          f"{t['ours_cpu_s']:12.2f} {t['ref_cpu_s']:10.2f} {t['ref_cpu_s'] / t['ours_cpu_s']:6.1f}")
o = sum(t["ours_cpu_s"] for t in d["totals"])
f = sum(t["ref_cpu_s"] for t in d["totals"])
worst = max(rows, key=lambda r: abs(r["ours_loss"] / r["ref_loss"] - 1) if r["ref_loss"] else 0.0)
print(f"all kinds: hwloop {o:.1f} CPU s, reference {f:.1f} CPU s ({f / o:.1f}x); largest |loss difference| of any "
      f"layer and kind: {worst['ours_loss'] / worst['ref_loss'] - 1:+.2%} ({worst['layer']}, {worst['kind']})")
slower = [r for r in rows if r["ours_cpu_s"] > r["ref_cpu_s"]]
print(f"rows where hwloop took more CPU than the reference: {len(slower)} "
      + ", ".join(f"{r['layer']} {r['kind']} ({r['ours_cpu_s']:.4f} vs {r['ref_cpu_s']:.4f} s)" for r in slower))
print("per shape (all kinds): CPU s hwloop / reference")
for sh in sorted({r["shape"] for r in rows}, key=lambda x: [int(v) for v in x.split("x")]):
    rr = [r for r in rows if r["shape"] == sh]
    a, b = sum(r["ours_cpu_s"] for r in rr), sum(r["ref_cpu_s"] for r in rr)
    print(f"  {sh:8s} {len({r['layer'] for r in rr}):2d} layers  {a:8.2f} / {b:8.2f}  ({b / a:.1f}x)")
