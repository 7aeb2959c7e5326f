"""Which per-op cost describes the quiet CPU's whole-model ratios? Each cost model's prediction of the points in
points.py (quiet wall-clock measurements), with one fixed share fitted on the uniform probes only (what
calibrate = K does before the DP), residuals per kind of point. No measurement.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_pair/analysis.py > .../analysis.txt
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from points import points  # noqa: E402

from hwloop.methods.obc.database import load_database  # noqa: E402
from hwloop.methods.obc.joint import JointCost, Term, op_costs  # noqa: E402
from hwloop.models import ModelRef  # noqa: E402
from hwloop.search.space import SearchSpace, SpaceOptions  # noqa: E402

R = ROOT / "search/results/obc"
units = load_database(str(R / "cpu_wall_quiet2/database-channels-1024.safetensors")).units
ref = ModelRef("resnet20")
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=ref.build())
pred, _ = op_costs(space, units, "local-cpu", source="predictor",
                   predictor=str(ROOT / "measurements/local-cpu/predictor-wall.json"))
mz = np.load(R / "cpucost_deep/perop_measured.npz")
slots = {f"op:{s.name}": s for s in [*space.slots, *space.passive_slots()]}


def is_conv(t):
    return t.name in slots and slots[t.name].spec.op == "conv2d" and len(t.deps) == 2


meas = JointCost([Term(t.name, t.deps, np.nan_to_num(mz[t.name.replace(":", "_")]), t.segment)
                  for t in pred.terms if t.name.replace(":", "_") in mz.files], pred.n_levels)
# the predictor's whole-model aggregation, each 2-group conv's (c_in, c_out) shape from the measured table
hyb = JointCost([Term(t.name, t.deps, t.cost[0, 0] * mz[t.name.replace(":", "_")]
                      / mz[t.name.replace(":", "_")][0, 0], t.segment) if is_conv(t) else t for t in pred.terms],
                pred.n_levels)
pts = points()
kinds = np.array([k for _, k, _, _ in pts])
r = np.array([x for *_, x in pts])
for name, c in (("predictor-wall op sum", pred), ("measured per-op table (isolated ops)", meas),
                ("predictor, conv (c_in, c_out) shape from the measured table", hyb)):
    s = np.array([c.total(ch) / c.full() for _, _, ch, _ in pts])
    for fit in ("none", "uniform"):
        if fit == "none":
            a = 0.0
        else:
            m = kinds == "uniform"
            a = float(np.sum((1 - s[m]) * (r[m] - s[m])) / np.sum((1 - s[m]) ** 2))
        res = r - (a + (1 - a) * s)
        print(f"{name}; fixed share {a:+.3f} ({'fitted on the uniform probes' if fit != 'none' else 'none'})")
        for k in ("uniform", "stage", "pattern", "dp"):
            m = kinds == k
            print(f"    {k:8s} n={m.sum():3d}  residual (measured - predicted) mean {res[m].mean():+.4f}  |.| mean "
                  f"{np.abs(res[m]).mean():.4f}  max |.| {np.abs(res[m]).max():.4f}")

# ---- fits on the probes a method can run before its DP (uniform, stage-deep, pattern), judged on the DP answers
print("\nfitted on all probes (uniform + stage + pattern) through the dense point; residuals on the DP answers:")
probe = kinds != "dp"
cols = {name: np.array([c.total(ch) / c.full() for _, _, ch, _ in pts]) for name, c in
        (("pred", pred), ("meas", meas), ("hyb", hyb))}
for combo in (["pred"], ["meas"], ["hyb"], ["pred", "meas"], ["pred", "hyb"]):
    Z = np.stack([cols[k] - 1 for k in combo], 1)
    b, *_ = np.linalg.lstsq(Z[probe], r[probe] - 1, rcond=None)
    res = r - 1 - Z @ b
    print(f"  r - 1 = {' + '.join(f'{v:.3f} ({k} - 1)' for k, v in zip(combo, b))}")
    for k in ("uniform", "stage", "pattern", "dp"):
        m = kinds == k
        print(f"    {k:8s} n={m.sum():3d}  residual mean {res[m].mean():+.4f}  |.| mean {np.abs(res[m]).mean():.4f}"
              f"  max |.| {np.abs(res[m]).max():.4f}")

# ---- probes of the DP's own answers: one scale fitted on the DP answers of the OTHER runs (leave one run out)
print("\nthe DP's own answers as probes: r - 1 = b (s - 1) fitted on the DP answers of the other runs "
      "(leave one run out), predictor-wall op sum s:")
srcs = np.array([src for src, *_ in pts])
s = cols["pred"]
dp = kinds == "dp"
out = []
for src in sorted(set(srcs[dp])):
    tr = dp & (srcs != src)
    te = dp & (srcs == src)
    b = float(np.sum((s[tr] - 1) * (r[tr] - 1)) / np.sum((s[tr] - 1) ** 2))
    res = r[te] - (1 + b * (s[te] - 1))
    out.extend(res.tolist())
    print(f"  held out {src:48s} n={te.sum():2d}  b {b:.3f}  residual mean {res.mean():+.4f} |.| max "
          f"{np.abs(res).max():.4f}")
out = np.array(out)
print(f"  all held-out DP answers: residual mean {out.mean():+.4f}, |.| mean {np.abs(out).mean():.4f}, "
      f"sd {out.std():.4f}, max |.| {np.abs(out).max():.4f}")

# ---- within the lead's quiet session 7 (13:14-13:23 UTC: cpucost_resolution and cpu_wall_calib6): the DP answers at
# the other targets as probes, the held-out target's answers predicted (what calibrate_by = "dp" does in one run)
print("\nwithin session 7 (quiet): r - 1 = b (s - 1) fitted on the DP answers at the other two targets, predictor op sum:")
s7 = np.array([src in ("cpucost_resolution/results.json", "cpu_wall_calib6") for src in srcs]) & dp
tgt = {}
for i, (src, k, ch, _) in enumerate(pts):
    if s7[i]:
        tgt[i] = round(float(s[i]) * 10) / 10   # the target band of the answer (0.5 / 0.6 / 0.7 of the op sum)
allres = []
for band in sorted(set(tgt.values())):
    te = np.array([tgt.get(i) == band for i in range(len(pts))])
    tr = s7 & ~te
    b = float(np.sum((s[tr] - 1) * (r[tr] - 1)) / np.sum((s[tr] - 1) ** 2))
    res = r[te] - (1 + b * (s[te] - 1))
    allres.extend(res.tolist())
    print(f"  op-sum band {band:.1f}: n={te.sum():2d} fitted on {tr.sum()} others, fixed share {1 - b:+.3f}: residual "
          f"mean {res.mean():+.4f}, |.| max {np.abs(res).max():.4f}")
allres = np.array(allres)
print(f"  all: mean {allres.mean():+.4f}, |.| mean {np.abs(allres).mean():.4f}, max {np.abs(allres).max():.4f}")

# ---- the same, with the monotone map of calibrate_by = "dp" (RatioMap) through the other bands' DP answers
from hwloop.methods.obc.overhead import RatioMap  # noqa: E402

print("\nwithin session 7 (quiet): the RatioMap through the DP answers at the other bands, predictor op sum:")
allres = []
for band in sorted(set(tgt.values())):
    te = np.array([tgt.get(i) == band for i in range(len(pts))])
    tr = s7 & ~te
    b = float(np.sum((s[tr] - 1) * (r[tr] - 1)) / np.sum((s[tr] - 1) ** 2))
    m = RatioMap.fit(s[tr].tolist(), r[tr].tolist(), 1 - b)
    res = r[te] - np.array([m.ratio(float(x)) for x in s[te]])
    allres.extend(res.tolist())
    print(f"  op-sum band {band:.1f}: n={te.sum():2d}, map through {tr.sum()} others: residual mean {res.mean():+.4f}, "
          f"|.| max {np.abs(res).max():.4f}{'  (below the lowest probe: the fixed share)' if band == min(tgt.values()) else ''}")
allres = np.array(allres)
print(f"  all: mean {allres.mean():+.4f}, |.| mean {np.abs(allres).mean():.4f}, max {np.abs(allres).max():.4f}")
