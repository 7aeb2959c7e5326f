"""Per op: the wall-clock-calibrated predictor's cost (through its aggregation) against the per-op cost table
measured live on the quiet machine (session 5, 10:27 UTC, read back from the default store; no new timing), at
every channel level of the OBC database's groups. Where does the predictor think an op cheaper than it is?

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/cpucost_deep/perop.py \
        > search/results/obc/cpucost_deep/perop.txt
"""
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from hwloop.devices import create_device
from hwloop.devices.base import MeasureRequest
from hwloop.methods.obc.database import load_database
from hwloop.methods.obc.joint import op_costs
from hwloop.models import ModelRef
from hwloop.search.costtable import _open_store
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.sweep import _device_timing

db = load_database(str(ROOT / "search/results/obc/cpu_wall_quiet2/database-channels-1024.safetensors"))
units = db.units
ref = ModelRef("resnet20")
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=ref.build())
cost, _ = op_costs(space, units, "local-cpu", source="predictor",
                   predictor=str(ROOT / "measurements/local-cpu/predictor-wall.json"))
gi = {u.name: i for i, u in enumerate(units) if u.kind == "group"}
slots = {f"op:{s.name}": s for s in [*space.slots, *space.passive_slots()]}
dev = create_device("local-cpu")
st, _ = _open_store(None)
timing = _device_timing(dev, None)
fp = dev.fingerprint()
names_of: dict = {}
for s in slots.values():
    names_of.setdefault(s.spec.op, set()).add(s.spec.name)


def measured(spec):
    for nm in [spec.name, *sorted(names_of.get(spec.op, ()))]:
        r = st.get(fp.key, MeasureRequest.for_layer(dataclasses.replace(spec, name=nm)).key, timing.key)
        if r is not None and r.ok:
            return float(r.latency_ms)
    return float("nan")


def spec_of(term, combo):
    s = slots[term.name]
    at = dict(zip(term.deps, combo))
    ci = units[gi[s.in_key]].levels[at[gi[s.in_key]]] if s.in_key in gi else None
    co = units[gi[s.out_key]].levels[at[gi[s.out_key]]] if s.out_key in gi else None
    return s.spec_at(ci, co)


rows = []
meas_terms = {}
for t in cost.terms:
    if t.name not in slots:
        continue
    arr = np.full(t.cost.shape, np.nan)
    for combo in np.ndindex(*t.cost.shape):
        arr[combo] = measured(spec_of(t, combo))
    meas_terms[t.name] = arr
    z = tuple([0] * len(t.deps))
    sp0 = spec_of(t, z)
    rows.append((t.name, sp0.op, t.deps, t.cost[z], arr[z]))
pd0 = sum(r[3] for r in rows)
md0 = np.nansum([r[4] for r in rows])
print(f"dense: predictor op terms {pd0:.4f} ms (+ constant {cost.full() - pd0:.4f}), measured per-op sum {md0:.4f} ms")
print("\nper op kind at the dense widths (ms): predictor / measured")
kinds = sorted({r[1] for r in rows})
for k in kinds:
    p = sum(r[3] for r in rows if r[1] == k)
    m = np.nansum([r[4] for r in rows if r[1] == k])
    print(f"  {k:12s} n={sum(1 for r in rows if r[1] == k):3d}  predictor {p:.4f}  measured {m:.4f}")

print("\nconvs: cost at (in level, out level) / cost at full width, predictor vs measured (2-dep convs only)")
for t in cost.terms:
    if t.name not in meas_terms or len(t.deps) != 2 or slots[t.name].spec.op != "conv2d":
        continue
    P, M = t.cost / t.cost[0, 0], meas_terms[t.name] / meas_terms[t.name][0, 0]
    sp = slots[t.name].spec
    print(f"  {t.name:22s} {sp.in_channels}->{sp.out_channels} @{sp.out_shape[-1]}  full: pred {t.cost[0, 0]*1e3:.1f} us,"
          f" meas {meas_terms[t.name][0, 0]*1e3:.1f} us")
    for (a, b) in [(0, 9), (9, 0), (5, 5), (9, 9), (4, 9), (9, 4), (8, 8), (0, 5), (5, 0)]:
        print(f"      levels ({a},{b}) = {units[t.deps[0]].levels[a]:>2d}->{units[t.deps[1]].levels[b]:>2d}: "
              f"pred {P[a, b]:.3f}  meas {M[a, b]:.3f}  pred/meas {P[a, b] / M[a, b]:.2f}")
np.savez(Path(__file__).with_name("perop_measured.npz"), **{k.replace(":", "_"): v for k, v in meas_terms.items()})
