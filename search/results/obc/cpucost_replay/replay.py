"""Replay: the joint DP's CPU cost model against whole-model ratios already measured on a quiet machine.

The 18 DP answers of search/results/obc/cpu_wall_quiet2 (local-cpu, wall clock, load ~0.8; each measured by one
interleaved comparison against the dense model) are costed by the joint op sum from the local-cpu predictor
through its whole-model aggregation (joint_source = "predictor"), and by the additive cost table they were chosen
with. The fixed share α of  r = α + (1 − α)·s  is fitted on them (all, and leave-one-out), residuals reported.
No new measurement: only the predictor and recorded numbers.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_replay/replay.py \
        > search/results/obc/cpucost_replay/replay.txt
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from hwloop.methods.obc.database import load_database
from hwloop.methods.obc.joint import op_costs
from hwloop.methods.obc.overhead import fit_overhead, overhead_ratio, probe_choices
from hwloop.models import ModelRef
from hwloop.search.space import SearchSpace, SpaceOptions

q = ROOT / "search/results/obc/cpu_wall_quiet2"
db = load_database(str(q / "database-channels-1024.safetensors"))
ref = ModelRef("resnet20")
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=ref.build())
cost, tab = op_costs(space, db.units, "local-cpu", source="predictor")
full = cost.full()
print(f"predictor op sum (through its aggregation): dense {full:.4f} ms over {len(cost.terms)} terms")
res = json.loads((q / "results.json").read_text())["latency:local-cpu"]
pts = []
for row in res["rows"]:
    for st in row["extra"]["dp_steps"]:
        if "choice" not in st:
            continue
        s = cost.total(st["choice"]) / full
        pts.append((row["target"], s, st["additive_ratio"], st["whole_ratio"], st["ratio_ci"]))
s = np.array([p[1] for p in pts])
a = np.array([p[2] for p in pts])
r = np.array([p[3] for p in pts])
alpha = fit_overhead(s.tolist(), r.tolist())
alpha_add = fit_overhead(a.tolist(), r.tolist())
print(f"{len(pts)} measured answers; fixed share fitted on all: predictor op sum {alpha:.4f}, additive table "
      f"{alpha_add:.4f}")
print("target  op-sum s  additive  measured (95%)        fit(op sum)  resid   leave-one-out resid  | plain op sum resid")
loo = []
for i, (t, si, ai, ri, ci) in enumerate(pts):
    m = np.ones(len(pts), dtype=bool)
    m[i] = False
    al = fit_overhead(s[m].tolist(), r[m].tolist())
    e = ri - overhead_ratio(al, si)
    loo.append(e)
    print(f"{t:5.1f}  {si:8.4f}  {ai:8.4f}  {ri:.4f} ({ci[0]:.3f}-{ci[1]:.3f})  {overhead_ratio(alpha, si):10.4f}  "
          f"{ri - overhead_ratio(alpha, si):+.4f}  {e:+.4f}              | {ri - si:+.4f}")
loo = np.abs(np.array(loo))
print(f"leave-one-out |residual|: mean {loo.mean():.4f}, max {loo.max():.4f}; relative to the ratio: mean "
      f"{np.mean(loo / r):.2%}, max {np.max(loo / r):.2%}")
print(f"plain op sum (alpha = 0) |r - s|: mean {np.mean(np.abs(r - s)):.4f}, max {np.max(np.abs(r - s)):.4f}; "
      f"additive table |r - a|: mean {np.mean(np.abs(r - a)):.4f}, max {np.max(np.abs(r - a)):.4f}")
groups = [i for i, u in enumerate(db.units) if u.kind == "group"]
print("probe choices (calibrate = 4): op-sum ratios",
      [round(cost.total(ch) / full, 4) for ch in probe_choices(cost.n_levels, groups, 4)])
