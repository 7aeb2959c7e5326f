"""Task 1 probe (issue 17): why two magnitude-control cells (30.0, 4.8 on the first 1,000 test images) repeat
between converged_latency (BN re-estimated on 1,024 un-augmented calibration images, holdout 0) and bn_train_asic
(BN re-estimated on 1,024 augmented training images, holdout 5000). Same knobs (0.5625, 0.5) in both runs.

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python search/results/obc/magnitude_repeat/probe.py \
        > search/results/obc/magnitude_repeat/probe.txt 2>&1
"""
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from safetensors.torch import load_file

from hwloop.data import make_loaders
from hwloop.methods.obc.structured import reestimate_bn
from hwloop.models import ModelRef
from hwloop.search.controls import channel_scores, magnitude_config, uniform_config
from hwloop.search.space import SearchSpace, SpaceOptions
from hwloop.search.train import evaluate

data = str(ROOT.parent / "shared/data/cifar10")
ref = ModelRef("resnet20")
model = ref.build()
model.load_state_dict(load_file(str(ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors")))
model.eval()
_, test = make_loaders("cifar10", 500, root=data, augment=False, seed=0)


def first(loader, n=1024):
    out, have = [], 0
    for x, _ in loader:
        out.append(x)
        have += len(x)
        if have >= n:
            return out
    return out


old_bn = first(make_loaders("cifar10", 128, root=data, augment=False, seed=0, holdout=0)[0])
torch.manual_seed(0)
new_bn = first(make_loaders("cifar10", 128, root=data, augment=True, seed=0, holdout=5000)[0])
torch.manual_seed(1)
new_bn2 = first(make_loaders("cifar10", 128, root=data, augment=True, seed=0, holdout=5000)[0])
space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(2, 4, 8), a_bits=8), model=model)
scores = channel_scores(space)


def bn_sum(net):
    return sum(float(m.running_mean.abs().sum() + m.running_var.sum()) for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def preds(net):
    net.eval()
    ys = []
    with torch.no_grad():
        for x, _ in test:
            ys.append(net(x).argmax(1))
            if sum(len(y) for y in ys) >= 1000:
                break
    return torch.cat(ys)[:1000]


for name, cfg in (("magnitude 0.5625", magnitude_config(space, 0.5625, scores)),
                  ("magnitude 0.5", magnitude_config(space, 0.5, scores)),
                  ("uniform 0.53125", uniform_config(space, 0.53125))):
    net0, plan = space.compress(cfg)
    print(name, "widths", dict(sorted(plan.widths.items())), flush=True)
    for bn_name, xs in (("none", None), ("old: un-augmented calib", old_bn), ("new: augmented draw seed 0", new_bn),
                        ("augmented draw seed 1", new_bn2)):
        net = space.compress(cfg)[0]
        n = reestimate_bn(net, xs) if xs is not None else 0
        p = preds(net)
        print(f"  BN {bn_name:28s}: {n} BN layers reset, stats checksum {bn_sum(net):.4f}, test[:1000] "
              f"{evaluate(net, test, 1000):.2f}%, prediction histogram {torch.bincount(p, minlength=10).tolist()}",
              flush=True)
