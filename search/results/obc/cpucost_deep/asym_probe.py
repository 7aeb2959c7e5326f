"""Is the CPU's miss in the *non-uniform* choices? Per stage, the inner channel groups deep with the stage's hub
group full, and the hub deep with the inner groups full, measured as whole models (interleaved against the dense
model) and compared with the predictor op sum (predictor-wall.json) and with the two calibrations fitted in
a ``bench_obc_cpucost.py --calibrate-by whole,resolution`` results file of the same device (second argument;
default ``cpucost_resolution_threadclock/results.json``, measured minutes before).

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_deep/asym_probe.py local-cpu-threadclock \
        > search/results/obc/cpucost_deep/asym_probe_threadclock.txt 2>&1
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

import torch

from hwloop.compress.actions import ChannelPrune
from hwloop.compress.plan import CompressionPlan
from hwloop.methods.obc.database import load_database
from hwloop.methods.obc.joint import JointCost, Term, op_costs
from hwloop.methods.obc.overhead import overhead_ratio, term_segments
from hwloop.models import ModelRef
from hwloop.search.report import compare_compressed
from hwloop.search.space import SearchSpace, SpaceOptions

device = sys.argv[1] if len(sys.argv) > 1 else "local-cpu-threadclock"
torch.set_num_threads(1)
db = load_database(str(ROOT / "search/results/obc/cpu_wall_quiet2/database-channels-1024.safetensors"))
units = db.units
ref = ModelRef("resnet20")
model = ref.build().eval()
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
cost, _ = op_costs(space, units, device, source="predictor",
                   predictor=str(ROOT / "measurements/local-cpu/predictor-wall.json"))
groups = [i for i, u in enumerate(units) if u.kind == "group"]
fitted = json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else
                         ROOT / "search/results/obc/cpucost_resolution_threadclock/results.json").read_text())
src = fitted["sources"]["predictor"]
alpha = src["alpha"]
scale = src["resolution"]["scales"]
seg_of = term_segments(cost, groups)
c0 = src["resolution"]["alpha"] * cost.full()
kept = sum(t.at([0] * len(units)) for t, sg in zip(cost.terms, seg_of) if sg is None)
cal = JointCost([*(t if sg is None else Term(t.name, t.deps, t.cost * scale[sg], t.segment)
                   for t, sg in zip(cost.terms, seg_of)), Term("fixed", (), torch.tensor(c0 - kept).numpy())],
                cost.n_levels)
stages = {"32x32": [0, 1, 2, 3], "16x16": [4, 5, 6, 7], "8x8": [8, 9, 10, 11]}
hubs = {0, 5, 9}      # conv1, layers.3.conv2, layers.6.conv2: the residual-tied groups
print(f"device {device}; whole calibration alpha {alpha:.4f}; per-resolution scales {scale}")
print(f"{'probe':28s} {'op sum':>7s} {'whole cal':>9s} {'per res':>8s} {'measured (2)':>16s} {'meas - whole cal':>16s}")
for st, us in stages.items():
    for what, deep in (("inner deep, hub full", [u for u in us if u not in hubs]),
                       ("hub deep, inner full", [u for u in us if u in hubs])):
        ch = [0] * len(units)
        for u in deep:
            ch[u] = len(units[u].levels) - 1
        plan = CompressionPlan(base=ref.to_dict(), actions=[ChannelPrune(units[i].name, int(units[i].levels[ch[i]]))
                                                            for i in groups if ch[i]], meta={"method": "obc"})
        ms = [float(compare_compressed(device, model, plan, model, example=ref.example_input())["ratio"])
              for _ in range(2)]
        s = cost.total(ch) / cost.full()
        m = sum(ms) / 2
        print(f"{st + ' ' + what:28s} {s:7.4f} {overhead_ratio(alpha, s):9.4f} {cal.total(ch) / cal.full():8.4f} "
              f"{ms[0]:.4f} {ms[1]:.4f}  {m - overhead_ratio(alpha, s):+.4f}", flush=True)
