"""Why the CPU cost model is optimistic at deep cuts: every whole-model ratio already measured on the quiet machine
(local-cpu, wall clock, session 4-5) for ResNet-20 channel choices of the OBC database, costed by the
wall-clock-calibrated predictor's op sum (joint_source = "predictor", predictor-wall.json), residuals against
per-choice features. No new measurement.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_deep/analysis.py \
        > search/results/obc/cpucost_deep/analysis.txt
"""
import json
import sys
from itertools import product
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from hwloop.methods.obc.database import load_database
from hwloop.methods.obc.joint import op_costs
from hwloop.models import ModelRef
from hwloop.search.space import SearchSpace, SpaceOptions

R = ROOT / "search/results/obc"
db = load_database(str(R / "cpu_wall_quiet2/database-channels-1024.safetensors"))
units = db.units
ref = ModelRef("resnet20")
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=ref.build())
cost, tab = op_costs(space, units, "local-cpu", source="predictor",
                     predictor=str(ROOT / "measurements/local-cpu/predictor-wall.json"))
full = cost.full()
gi = {u.name: i for i, u in enumerate(units) if u.kind == "group"}
slots = [*space.slots, *space.passive_slots()]


def specs(ch):
    out = []
    for s in slots:
        ci = units[gi[s.in_key]].levels[ch[gi[s.in_key]]] if s.in_key in gi else None
        co = units[gi[s.out_key]].levels[ch[gi[s.out_key]]] if s.out_key in gi else None
        out.append(s.spec_at(ci, co))
    return out


def feats(ch):
    sp = specs(ch)
    macs = mem = 0.0
    for s in sp:
        hw = int(np.prod(s.out_shape[-2:])) if len(s.out_shape) >= 3 else 1
        hwi = int(np.prod(s.in_shape[-2:])) if len(s.in_shape) >= 3 else 1
        k = int(np.prod(s.kernel)) if s.kernel else 1
        if s.op in ("conv2d", "linear"):
            macs += s.in_channels * s.out_channels * k * hw / max(1, s.groups)
        mem += s.in_channels * hwi + s.out_channels * hw
    return {"s": cost.total(ch) / full, "macs": macs, "mem": mem, "specs": sp}


pts = []   # (source, target, choice, measured ratio)


def add(src, t, ch, r):
    if ch is not None and r is not None:
        pts.append((src, t, [int(v) for v in ch], float(r)))


d = json.loads((R / "cpu_wall_quiet2/results.json").read_text())["latency:local-cpu"]
for row in d["rows"]:
    for st in row["extra"]["dp_steps"]:
        if "choice" in st:
            add("quiet2 additive DP", row["target"], st["choice"], st["whole_ratio"])
d = json.loads((R / "cpu_wall_joint/results.json").read_text())["latency:local-cpu"]
for row in d["rows"]:
    for st in row["extra"]["dp_steps"]:
        if "choice" in st:
            add("wall_joint DP", row["target"], st["choice"], st["whole_ratio"])
for f in ("results.json", "results_predictor-wall.json"):
    d = json.loads((R / "cpucost_local-cpu" / f).read_text())
    for src, v in d["sources"].items():
        for p in v["calibration"]["probes"]:
            add(f"probe ({f[:-5]}/{src})", None, p["choice"], p["measured_ratio"])
        for row in v["rows"]:
            if row.get("feasible"):
                add(f"cpucost {f[:-5]}/{src}/{row['cost']}", row["target"], row["choice"], row["measured_ratio"])

dense = feats([0] * len(units))
print(f"predictor-wall op sum: dense {full:.4f} ms, {len(cost.terms)} terms; dense MACs {dense['macs']:.3e}, "
      f"activation elements {dense['mem']:.3e}")
X = []
print(f"{'source':44s} {'t':>4s} {'choice':36s} {'s':>6s} {'macs':>6s} {'mem':>6s} {'meas':>6s} {'r-s':>7s} "
      f"{'r/s-1':>7s}  min-ch")
for src, t, ch, r in pts:
    f = feats(ch)
    minc = min(units[i].levels[ch[i]] for i in gi.values())
    X.append((f["s"], f["macs"] / dense["macs"], f["mem"] / dense["mem"], r, src.startswith("probe"), ch))
    print(f"{src:44s} {str(t):>4s} {str(ch):36s} {f['s']:.4f} {f['macs'] / dense['macs']:.4f} "
          f"{f['mem'] / dense['mem']:.4f} {r:.4f} {r - f['s']:+.4f} {r / f['s'] - 1:+.2%}  {minc}")
A = np.array([[x[0], x[1], x[2], x[3], x[4]] for x in X], dtype=float)
s, m, e, r, probe = A[:, 0], A[:, 1], A[:, 2], A[:, 3], A[:, 4].astype(bool)
print(f"\n{len(pts)} points ({probe.sum()} uniform probes, {(~probe).sum()} DP answers)")
for name, mask in (("probes", probe), ("DP answers", ~probe)):
    print(f"  {name}: mean r/s-1 {np.mean(r[mask] / s[mask] - 1):+.2%}, mean r-s {np.mean(r[mask] - s[mask]):+.4f}")


def fit(cols, mask):
    """r - 1 = sum_j c_j (col_j - 1): models through the dense point."""
    Z = np.stack([c[mask] - 1 for c in cols], 1)
    c, *_ = np.linalg.lstsq(Z, r[mask] - 1, rcond=None)
    return c


def pred(cols, c):
    return 1 + sum(cj * (col - 1) for cj, col in zip(c, cols))


models = {"op sum s": [s], "alpha + s (fixed share)": [s], "s + elements": [s, e], "s + macs + elements": [s, m, e],
          "macs + elements": [m, e]}
print("\nfit on the uniform probes only -> residuals on the DP answers (what a calibrate=K fit would give):")
for name, cols in models.items():
    if name == "op sum s":
        c = np.array([1.0])
    else:
        try:
            c = fit(cols, probe)
        except Exception as exc:   # noqa
            print(name, exc)
            continue
    res = r - pred(cols, c)
    print(f"  {name:26s} coef {np.round(c, 3)}  probes |res| mean {np.mean(np.abs(res[probe])):.4f}; DP answers res "
          f"mean {np.mean(res[~probe]):+.4f}, |res| mean {np.mean(np.abs(res[~probe])):.4f} max "
          f"{np.max(np.abs(res[~probe])):.4f}")
print("\nfit on all points (leave-one-out residuals):")
for name, cols in models.items():
    if name == "op sum s":
        continue
    loo = []
    for i in range(len(r)):
        mk = np.ones(len(r), bool)
        mk[i] = False
        c = fit(cols, mk)
        loo.append(r[i] - pred([col[i:i + 1] for col in cols], c)[0])
    loo = np.array(loo)
    print(f"  {name:26s} coef(all) {np.round(fit(cols, np.ones(len(r), bool)), 3)}  LOO res mean {np.mean(loo):+.4f}, "
          f"|res| mean {np.mean(np.abs(loo)):.4f} max {np.max(np.abs(loo)):.4f}; DP answers mean "
          f"{np.mean(loo[~probe]):+.4f}")

# ---- the same points costed by the per-op table measured live on the quiet machine (read from the store by
# perop.py into perop_measured.npz; passive ops measured ~0 in isolation, so the fixed share carries them)
mz = np.load(Path(__file__).with_name("perop_measured.npz"))
mterms = [(t.deps, mz[t.name.replace(":", "_")]) for t in cost.terms if t.name.replace(":", "_") in mz.files]


def msum(ch):
    return float(sum(np.nan_to_num(a[tuple(ch[d] for d in deps)]) for deps, a in mterms))


m0 = msum([0] * len(units))
sm = np.array([msum(x[5]) / m0 for x in X])
print(f"\nmeasured per-op table (quiet, isolated ops): dense op sum {m0:.4f} ms")
for name, cols in (("alpha + measured op sum", [sm]), ("alpha + predictor op sum", [s])):
    c = fit(cols, probe)
    res = r - pred(cols, c)
    print(f"  fit on the probes: {name:26s} fixed share {1 - c[0]:.3f}; probes |res| mean "
          f"{np.mean(np.abs(res[probe])):.4f}; DP answers res mean {np.mean(res[~probe]):+.4f}, |res| mean "
          f"{np.mean(np.abs(res[~probe])):.4f}, max {np.max(np.abs(res[~probe])):.4f}")

# ---- per feature-map resolution (what calibrate_by = "resolution" fits): one scale per resolution of the
# predictor's op terms (hwloop.methods.obc.overhead.term_segments / fit_segments), fitted here on all the quiet
# points (the new deep-cut probes were not measured quietly in this session), leave-one-out residuals
from hwloop.methods.obc.overhead import fit_segments, term_segments  # noqa: E402

groups = sorted(gi.values())
seg_of = term_segments(cost, groups)
segs = sorted({x for x in seg_of if x is not None})


def seg_parts(ch):
    v = dict.fromkeys(segs, 0.0)
    for t, sg in zip(cost.terms, seg_of):
        if sg is not None:
            v[sg] += t.at(ch)
    return np.array([v[x] for x in segs])


P0 = seg_parts([0] * len(units))
Z = np.array([(seg_parts(x[5]) - P0) / full for x in X])
Y = r - 1
print(f"\nper resolution: dense shares of the predictor op sum "
      + ", ".join(f"{sg} {p / full:.3f}" for sg, p in zip(segs, P0)))
res1 = r - pred([s], fit([s], np.ones(len(r), bool)))      # one fixed share on all points
for j, sg in enumerate(segs):
    own = 1 + Z[:, j] / (P0[j] / full)                        # that resolution's own op-sum ratio
    print(f"  correlation of the fixed-share residual with ({sg} op-sum ratio - s): "
          f"{np.corrcoef(res1, own - s)[0, 1]:+.3f}")
b = np.array(fit_segments(Z.tolist(), Y.tolist()))
print("  scales fitted on all points: " + ", ".join(f"{sg} {v:.3f}" for sg, v in zip(segs, b))
      + "; calibrated shares " + ", ".join(f"{sg} {v * p / full:.3f}" for sg, v, p in zip(segs, b, P0))
      + f"; fixed part {1 - float(b @ P0) / full:.3f}")
loo = []
for i in range(len(Y)):
    mk = np.ones(len(Y), bool)
    mk[i] = False
    bi = np.array(fit_segments(Z[mk].tolist(), Y[mk].tolist()))
    loo.append(Y[i] - Z[i] @ bi)
loo = np.array(loo)
print(f"  leave-one-out residual: all |.| mean {np.mean(np.abs(loo)):.4f}; DP answers mean {np.mean(loo[~probe]):+.4f}, "
      f"|.| mean {np.mean(np.abs(loo[~probe])):.4f}, max {np.max(np.abs(loo[~probe])):.4f}; probes mean "
      f"{np.mean(loo[probe]):+.4f}")
a1 = fit(([s]), np.ones(len(r), bool))
loo1 = []
for i in range(len(Y)):
    mk = np.ones(len(Y), bool)
    mk[i] = False
    loo1.append(r[i] - pred([s[i:i + 1]], fit([s], mk))[0])
loo1 = np.array(loo1)
print(f"  (one fixed share on all points, leave-one-out: DP answers mean {np.mean(loo1[~probe]):+.4f}, |.| mean "
      f"{np.mean(np.abs(loo1[~probe])):.4f}, max {np.max(np.abs(loo1[~probe])):.4f}; probes mean "
      f"{np.mean(loo1[probe]):+.4f})")

# ---- what the DP would answer under those scales (no measurement: the answers' ratios are the model's)
from hwloop.methods.obc.joint import JointCost, Term, solve_joint  # noqa: E402

scale = dict(zip(segs, b))
c0 = full - float(b @ P0)
kept = sum(t.at([0] * len(units)) for t, sg in zip(cost.terms, seg_of) if sg is None)
cal = JointCost([*(t if sg is None else Term(t.name, t.deps, t.cost * scale[sg], t.segment)
                   for t, sg in zip(cost.terms, seg_of)), Term("fixed", (), np.asarray(c0 - kept))], cost.n_levels)
errors = [u.errors for u in units]
print("\nthe joint DP on the predictor op sum vs on it calibrated per resolution (scales above):")
for target in (0.7, 0.6, 0.5):
    for name, c in (("op sum", cost), ("per resolution", cal)):
        got = solve_joint(errors, c, c.full() * target, 10000, candidates=groups)
        ch = got[0]
        kept_ch = [int(units[i].levels[ch[i]]) for i in groups]
        print(f"  {target}: {name:15s} choice {ch} channels {kept_ch} -> op sum {cost.total(ch) / full:.4f}, "
              f"per resolution {cal.total(ch) / full:.4f}, DP error {got[1]:.3f}")
