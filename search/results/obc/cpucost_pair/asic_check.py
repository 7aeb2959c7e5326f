"""asic-tpu32 (simulated, deterministic): is the joint DP's predicted whole-model ratio the measured one for the
DP's own (uneven) answers and for the uneven pattern probes? ResNet-20, the OBC channel ladder of the CPU database
(10 levels per group; its level errors), per-op costs from the cost table measured on the device and from the
device's shipped predictor; every choice exported (``from_plan``) and measured whole.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_pair/asic_check.py \
        > search/results/obc/cpucost_pair/asic_check.txt 2>&1
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hwloop.compress import from_plan  # noqa: E402
from hwloop.compress.actions import ChannelPrune  # noqa: E402
from hwloop.compress.plan import CompressionPlan  # noqa: E402
from hwloop.methods.obc.database import load_database  # noqa: E402
from hwloop.methods.obc.joint import op_costs, solve_joint  # noqa: E402
from hwloop.models import ModelRef  # noqa: E402
from hwloop.search.report import compare_compressed  # noqa: E402
from hwloop.search.space import SearchSpace, SpaceOptions  # noqa: E402

torch.set_num_threads(1)
DEV = "asic-tpu32"
units = load_database(str(ROOT / "search/results/obc/cpu_wall_quiet2/database-channels-1024.safetensors")).units
ref = ModelRef("resnet20")
model = ref.build().eval()
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
groups = [i for i, u in enumerate(units) if u.kind == "group"]
errors = [u.errors for u in units]
STAGES = {"32x32": [0, 1, 2, 3], "16x16": [4, 5, 6, 7], "8x8": [8, 9, 10, 11]}
HUBS = {0, 5, 9}


def plan_of(ch):
    return CompressionPlan(base=ref.to_dict(), actions=[ChannelPrune(units[i].name, int(units[i].levels[ch[i]]))
                                                        for i in groups if ch[i]], meta={"method": "obc"})


def measured(ch):
    plan = plan_of(ch)      # the exported model (``from_plan``) against the dense one
    return float(compare_compressed(DEV, from_plan(plan.to_dict()).eval(), plan, model,
                                    example=ref.example_input())["ratio"])


t0 = time.perf_counter()
costs = {}
for src in ("measure", "predictor"):
    c, tab = op_costs(space, units, DEV, source=src)
    costs[src] = c
    print(f"{src}: {len(c.terms)} terms, dense op sum {c.full():.6g} {tab.unit} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
choices = []
for st, us in STAGES.items():
    for what, deep in (("inner deep, hub full", [u for u in us if u not in HUBS]),
                       ("hub deep, inner full", [u for u in us if u in HUBS])):
        ch = [0] * len(units)
        for u in deep:
            ch[u] = len(units[u].levels) - 1
        choices.append((f"pattern {st} {what}", ch))
for src, c in costs.items():
    for t in (0.7, 0.6, 0.5):
        got = solve_joint(errors, c, c.full() * t, 10_000, candidates=groups)
        choices.append((f"DP answer ({src} op sum) at {t}", got[0]))
print(f"{'choice':44s} {'levels':38s} {'measure op sum':>14s} {'predictor op sum':>16s} {'measured whole':>14s}")
worst = {"measure": 0.0, "predictor": 0.0}
for name, ch in choices:
    m = measured(ch)
    p = {src: c.total(ch) / c.full() for src, c in costs.items()}
    for src in worst:
        worst[src] = max(worst[src], abs(p[src] - m))
    print(f"{name:44s} {str(ch):38s} {p['measure']:14.6f} {p['predictor']:16.6f} {m:14.6f}", flush=True)
print(f"largest |predicted - measured|: measure op sum {worst['measure']:.2e}, predictor op sum "
      f"{worst['predictor']:.4f}  ({time.perf_counter() - t0:.0f} s)")
