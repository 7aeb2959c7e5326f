"""Why batch-norm re-estimation costs accuracy after OBC: variants measured on the dense and the OBQ-w4 model.

Chooses on the 5,000 held-out *training* images (``make_loaders(holdout=5000)``, the split the converged
checkpoint never trained on); the test figures are reported beside, not chosen on. Calibration images come
from the other 45,000 training images. Run::

    OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_obc_bn.py \
        --out search/results/obc/bn_reestimate > search/results/obc/bn_reestimate/run.log 2>&1

Variants (``reestimate_bn`` in :mod:`hwloop.methods.obc.structured`):

* ``none`` — the statistics the model was trained with (kept from training, momentum 0.1 over augmented batches).
* ``cum-plain-1024`` — reset, cumulative average (``momentum=None``) over 1,024 un-augmented images (the old default).
* ``cum-aug-1024`` — the same over the same images *augmented* as in training (pad-4 crop + flip).
* ``cum-plain-4096`` / ``cum-aug-4096`` — more images.
* ``blend`` — no reset: momentum 0.1 from the trained statistics over the 1,024 un-augmented images.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--out", default=str(ROOT / "search/results/obc/bn_reestimate"))
    ap.add_argument("--variants", default="none,cum-plain-1024,cum-aug-1024,cum-plain-4096,blend")
    ap.add_argument("--models", default="dense,w4")
    ap.add_argument("--val-limit", type=int, default=2560, help="held-out training images scored (of 5,000; "
                    "whole batches of 128)")
    ap.add_argument("--test-limit", type=int, default=2000, help="test images scored (a seeded random subset)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from safetensors.torch import load_file

    from hwloop.compress.extract import get_module
    from hwloop.data import make_loaders
    from hwloop.methods.obc.exactobs import collect_hessians, mse_scales, obq_quantize
    from hwloop.methods.obc.structured import reestimate_bn
    from hwloop.models import ModelRef
    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc["checkpoint"] = args.checkpoint

    def put() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    ref = ModelRef("resnet20")
    model = ref.build()
    model.load_state_dict(load_file(args.checkpoint))
    model.eval()
    plain, val = make_loaders("cifar10", 128, root=args.data_root, augment=False, seed=0, holdout=5000)
    say("data loaded")
    aug, _ = make_loaders("cifar10", 128, root=args.data_root, augment=True, seed=0, holdout=5000)
    _, test = make_loaders("cifar10", 250, root=args.data_root, augment=False, seed=0)
    # score seeded random subsets: the stored arrays are sorted by class (the first 2,000 test images are two classes)
    from hwloop.search.train import random_subset

    test, val = random_subset(test, args.test_limit, 2), random_subset(val, args.val_limit, 1, batch_size=128)

    def take(loader: Any, n: int) -> list[torch.Tensor]:
        torch.manual_seed(0)      # the same images (the loaders share the seed) and the same augmentation draws
        xs, have = [], 0
        for x, _ in loader:
            xs.append(x)
            have += int(x.shape[0])
            if have >= n:
                break
        return xs

    def acc(net: torch.nn.Module, loader: Any, limit: int) -> float:
        say(f"scoring {limit} images")
        net.eval()
        return evaluate(net, loader, limit)

    nets: dict[str, torch.nn.Module] = {"dense": model}
    if "w4" in args.models:
        space = SearchSpace.from_ref(ref, SpaceOptions(bits=True, bit_levels=(4, 8), a_bits=8), model=model)
        layers = list(space.bit_layers)
        H = collect_hessians(model, layers, take(plain, 1024))
        q = copy.deepcopy(model)
        for n in layers:
            w = get_module(q, n).weight
            W = w.detach().reshape(w.shape[0], -1)
            new, _ = obq_quantize(w, H[n], 4, scale=mse_scales(W.double(), 4), dtype=torch.float32)
            with torch.no_grad():
                w.copy_(new)
        nets["w4"] = q
    for name, net0 in nets.items():
        if name not in args.models.split(","):
            continue
        for var in args.variants.split(","):
            key = f"{name}/{var}"
            if key in doc.get("rows", {}):
                continue
            net = copy.deepcopy(net0)
            t0 = time.perf_counter()
            if var == "blend":
                reestimate_bn(net, take(plain, 1024), mode="blend")
            elif var != "none":
                _, kind, n = var.split("-")
                reestimate_bn(net, take(plain if kind == "plain" else aug, int(n)))
            dt = time.perf_counter() - t0
            row = {"val": acc(net, val, args.val_limit), "test": acc(net, test, args.test_limit), "seconds": dt,
                   "val_images": args.val_limit, "test_images": args.test_limit}
            doc.setdefault("rows", {})[key] = row
            put()
            say(f"{key}: validation {row['val']:.2f}%, test {row['test']:.2f}% ({dt:.1f} s)")
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
