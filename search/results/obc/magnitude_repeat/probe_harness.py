"""Task 1 follow-up (issue 17): the harness's uniform and magnitude controls at 0.5 both scored 19.62% on the 10,000
test images (different models, validation 18.80 / 20.55). Rebuild both as the harness does (the same space, the
same knob 0.5, batch norm recalibrated on 8 batches of the training loader shuffled by seed 0) and print the
per-class recall and the prediction histogram.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/magnitude_repeat/probe_harness.py \
        > search/results/obc/magnitude_repeat/probe_harness.txt 2>&1
"""
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
warnings.simplefilter("ignore")
torch.set_num_threads(1)

from hwloop.search.controls import channel_scores, magnitude_config, recalibrate_bn, uniform_config
from hwloop.search.harness import Harness
from hwloop.search.harness_spec import load_harness_spec

spec = load_harness_spec(ROOT / "search/bench-methods-obc-cifar10-resnet20.toml")
Path("/tmp/obc-probe-harness").mkdir(exist_ok=True)
h = Harness(spec, "/tmp/obc-probe-harness", progress=False)
h.setup()
space = h.space
scores = channel_scores(space)
for name, cfg in (("uniform 0.5", uniform_config(space, 0.5)), ("magnitude 0.5", magnitude_config(space, 0.5, scores))):
    net, plan = space.compress(cfg)
    torch.manual_seed(0)
    seen = recalibrate_bn(net, h.loader(0), 8)
    net.eval()
    ys, ps = [], []
    with torch.no_grad():
        for x, y in h.test:
            ys.append(y)
            ps.append(net(x).argmax(1))
    y, p = torch.cat(ys), torch.cat(ps)
    recall = [round(100 * float((p[y == c] == c).float().mean()), 1) for c in range(10)]
    print(f"{name}: widths {dict(sorted(plan.widths.items()))}; BN from {seen} images; test "
          f"{100 * float((p == y).float().mean()):.2f}% ({int((p == y).sum())}/{len(y)}); recall per class {recall}; "
          f"predictions {torch.bincount(p, minlength=10).tolist()}", flush=True)
