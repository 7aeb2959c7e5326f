"""α → latency of the LCS width family of ResNet-20 (instance norm) on one device, and the dense BN ResNet-20.

Latency does not depend on the weights, so this needs no training: every member is measured live as a whole
model (``LcsFamily.measure(source="measure")``); on asic-tpu32 also through the shared layer cost table, calibrated
on the widest member and uncalibrated. Run::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/lcs_latency.py asic-tpu32 search/results/lcs_latency/asic-tpu32.json
"""
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
torch.set_num_threads(1)
dev = sys.argv[1]; out = sys.argv[2]
grid = default_grid(7)
torch.manual_seed(0)
fam = LcsFamily.create(ModelRef("resnet20", {"norm": "in"}, input_shape=(3, 32, 32)), "width")
t0 = time.time()
res = {"device": dev, "note": "latency of the width family's members (weights do not change latency)"}
res["live_ms"] = {repr(a): v for a, v in fam.measure(dev, grid, source="measure").items()}
print("live", res["live_ms"], time.time() - t0, flush=True)
if dev == "asic-tpu32":
    res["table_ms"] = {repr(a): v for a, v in fam.measure(dev, grid, source="table").items()}
    res["table_uncalibrated_ms"] = {repr(a): v for a, v in fam.measure(dev, grid, source="table", calibrate=False).items()}
r = create_device(dev).measure([MeasureRequest.for_model(ModelRef("resnet20", input_shape=(3, 32, 32)))])[0]
res["dense_bn_ms"] = r.latency_ms
res["widths"] = {repr(a): fam.level(a)["width"] for a in grid}
res["seconds"] = time.time() - t0
with open(out, "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps(res), flush=True)
