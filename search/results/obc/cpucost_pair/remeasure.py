"""Noise or a real gap? The DP-answer probes and the dp-calibrated answers of ``threadclock_load/results.json``
measured again, three times each, round-robin in one window (same device; interleaved against the dense model),
with each choice's predictor op sum and the map's prediction.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_pair/remeasure.py local-cpu-threadclock \
        > search/results/obc/cpucost_pair/remeasure_threadclock.txt 2>&1
"""
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hwloop.compress import from_plan  # noqa: E402
from hwloop.compress.actions import ChannelPrune  # noqa: E402
from hwloop.compress.plan import CompressionPlan  # noqa: E402
from hwloop.methods.obc.database import load_database  # noqa: E402
from hwloop.methods.obc.overhead import RatioMap  # noqa: E402
from hwloop.models import ModelRef  # noqa: E402
from hwloop.search.report import compare_compressed  # noqa: E402

device = sys.argv[1] if len(sys.argv) > 1 else "local-cpu-threadclock"
torch.set_num_threads(1)
here = Path(__file__).parent
d = json.loads((here / "threadclock_load/results.json").read_text())["sources"]["predictor"]
units = load_database(str(ROOT / "search/results/obc/cpu_wall_quiet2/database-channels-1024.safetensors")).units
ref = ModelRef("resnet20")
model = ref.build().eval()
rmap = RatioMap(tuple(d["dp"]["map"]["op_sum_ratio"]), tuple(d["dp"]["map"]["measured_ratio"]), d["dp"]["alpha"])
items = [(f"DP probe, op sum {p['op_sum_ratio']:.4f}", p["choice"], p["op_sum_ratio"], p["measured_ratio"])
         for p in d["dp"]["probes"]]
items += [(f"dp-calibrated answer at {r['target']}", r["choice"], None, r["measured_ratio"])
          for r in d["rows"] if r["cost"] == "dp-calibrated"]


def ratio(ch):
    plan = CompressionPlan(base=ref.to_dict(), actions=[ChannelPrune(u.name, int(u.levels[li]))
                                                        for u, li in zip(units, ch) if li])
    return float(compare_compressed(device, from_plan(plan.to_dict()).eval(), plan, model,
                                    example=ref.example_input())["ratio"])


got = {i: [] for i in range(len(items))}
for _ in range(3):
    for i, (_, ch, _, _) in enumerate(items):
        got[i].append(ratio(ch))
        print(f"  {items[i][0]}: {got[i][-1]:.4f}", flush=True)
print(f"{'choice':34s} {'op sum':>7s} {'map':>7s} {'before':>7s} {'again (3)':>24s} {'median':>7s}")
for i, (name, ch, s, before) in enumerate(items):
    row = next((r for r in d["rows"] if r.get("choice") == ch and r["cost"] == "dp-calibrated"), None)
    pred = rmap.ratio(s) if s is not None else row["predicted_ratio"]
    op = s if s is not None else rmap.budget(row["predicted_ratio"])
    print(f"{name:34s} {op:7.4f} {pred:7.4f} {before:7.4f} {' '.join(f'{v:.4f}' for v in got[i]):>24s} "
          f"{statistics.median(got[i]):7.4f}")
