"""α → latency of the LCS width family of ResNet-20 on one device, and the dense BN ResNet-20.

Latency does not depend on the weights, so this needs no training: every member is measured live as a whole
model (``LcsFamily.measure(source="measure")``); on asic-tpu32 also through the shared layer cost table, calibrated
on the widest member and uncalibrated. ``--norm in`` (default): the instance-norm family (the paper's);
``--norm frozen_bn``: the opt-in frozen-batch-norm family, whose members are ordinary batch-norm ResNet-20s
(the norm folds into the conv before it). Run::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_latency.py asic-tpu32 search/results/lcs_latency/asic-tpu32.json
    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_latency.py asic-tpu32 \\
        search/results/lcs_latency/asic-tpu32-frozen_bn.json --norm frozen_bn
    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_latency.py asic-tpu32 \
        search/results/lcs_latency/asic-tpu32-frozen_bn-table.json --family search/results/lcs_cifar/tbl_s0/family

``--family DIR``: measure the members of a trained family (``LcsFamily.load``) instead of an untrained one of
``--norm`` (a check that its members are the architectures measured above; ``--norm`` is then the family's).
"""
import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hwloop.devices import MeasureRequest, create_device
from hwloop.methods.lcs import LcsFamily, default_grid
from hwloop.models import ModelRef

warnings.simplefilter("ignore")
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("device")
ap.add_argument("out")
ap.add_argument("--norm", default="in", choices=["in", "frozen_bn"])
ap.add_argument("--grid", type=int, default=7, help="evenly spaced alphas (7: widths 0.25, 0.375, ..., 1)")
ap.add_argument("--family", default=None, help="a trained family's folder (family.json + endpoints.safetensors)")
ap.add_argument("--repeats", type=int, default=1, help="live measurements of the whole grid (>1 on a real device: "
                "median and spread per alpha)")
args = ap.parse_args()
torch.set_num_threads(1)
dev = args.device
grid = default_grid(args.grid)
torch.manual_seed(0)
fbn = args.norm == "frozen_bn"
ref = ModelRef("resnet20", {} if fbn else {"norm": "in"}, input_shape=(3, 32, 32))
init = ref.build().state_dict() if fbn else None
fam = LcsFamily.create(ref, "width", line_convs=False, init=init, frozen_bn=fbn)
if args.family:
    fam = LcsFamily.load(args.family)
    args.norm = "frozen_bn" if fam.flags.get("frozen_bn") else "in"
t0 = time.time()
res: dict = {"device": dev, "norm": args.norm, "command": " ".join(sys.argv), "family": args.family,
             "note": "latency of the width family's members (weights do not change latency)"}
runs = [fam.measure(dev, grid, source="measure") for _ in range(max(1, args.repeats))]
res["live_ms"] = {repr(a): sorted(r[a] for r in runs)[len(runs) // 2] for a in grid}
if len(runs) > 1:
    res["live_runs_ms"] = {repr(a): [r[a] for r in runs] for a in grid}
print("live", res["live_ms"], time.time() - t0, flush=True)
if dev == "asic-tpu32":
    res["table_ms"] = {repr(a): v for a, v in fam.measure(dev, grid, source="table").items()}
    res["table_uncalibrated_ms"] = {repr(a): v for a, v in fam.measure(dev, grid, source="table", calibrate=False).items()}
d = create_device(dev)
dense = [d.measure([MeasureRequest.for_model(ModelRef("resnet20", input_shape=(3, 32, 32)))])[0].latency_ms
         for _ in range(max(1, args.repeats))]
res["dense_bn_ms"] = sorted(dense)[len(dense) // 2]
res["widths"] = {repr(a): fam.level(a)["width"] for a in grid}
res["seconds"] = time.time() - t0
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res), flush=True)
