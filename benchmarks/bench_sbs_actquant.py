"""Before / after of hwloop's activation quantizer (``hwloop.compress.actquant``, issue 19 session 6) on the path the
l1l2 search's fine-tune takes (``hwloop.search.differentiable``): uniform WxAy at full width on the converged
CIFAR-10 ResNet-20, every conv/linear but the first (the image input) quantized, weights per-channel symmetric
(``apply_bits_``), batch-norm re-estimated, then ``--ft-steps`` QAT batches (``quantized_weights``).

* ``old``: the quantizer before session 6 (``signed="symmetric", mode="max"``): ranges observed during the
  batch-norm re-estimation (moving average of each batch's maximum), kept moving during the fine-tune;
* ``new``: the default since session 6 (``signed="auto", mode="mse"``): batch-norm re-estimated, signs and
  least-error ranges calibrated on the same number of batches, batch-norm re-estimated again, ranges frozen
  (exactly what ``differentiable_search`` does now).

PTQ = after extraction, QAT = after the fine-tune; accuracies on ``--val-limit`` held-out training images
(``make_loaders(holdout=5000, seed=0)``, a fixed random subset, seed 2) and ``--eval-limit`` test images (seed 1), the
subsets bench_sbs.py uses. Results go to ``--out``/results.json (an entry is skipped when present)::

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_sbs_actquant.py --bits 4/4 --ft-steps 100 \\
        --out search/results/sbs/actquant
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--out", default=str(ROOT / "search/results/sbs/actquant"))
    ap.add_argument("--bits", default="4/4", help="uniform w/a bits, comma-separated list, e.g. 4/4,8/4")
    ap.add_argument("--ft-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--recal", type=int, default=4, help="batch-norm re-estimation (and calibration) batches")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--paths", default="old,new")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file
    from torch import nn

    from hwloop.compress.actquant import quantized_activations
    from hwloop.compress.extract import apply_bits_
    from hwloop.compress.gated import quantized_weights
    from hwloop.data import make_loaders
    from hwloop.models import ModelRef
    from hwloop.search.differentiable import recalibrate_batchnorm
    from hwloop.search.train import evaluate, random_subset, train_epochs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    res["setup"] = {"checkpoint": args.checkpoint, "ft_steps": args.ft_steps, "lr": args.lr, "recal": args.recal,
                    "batch": args.batch, "val_limit": args.val_limit, "eval_limit": args.eval_limit}
    train, val = make_loaders("cifar10", args.batch, root=args.data_root, holdout=5000, seed=0)
    val = random_subset(val, args.val_limit, 2)
    _, test = make_loaders("cifar10", 256, root=args.data_root, holdout=0, seed=0, augment=False)
    test = random_subset(test, args.eval_limit, 1)
    ref = ModelRef("resnet20", input_shape=(3, 32, 32))

    def fresh() -> nn.Module:
        m = ref.build()
        m.load_state_dict(load_file(args.checkpoint))
        return m.eval()

    def scores(m: nn.Module) -> dict[str, float]:
        return {"val": float(evaluate(m, val)), "test": float(evaluate(m, test))}

    if "float" not in res:
        res["float"] = scores(fresh())
    say(f"float: {res['float']}")
    for spec in args.bits.split(","):
        wb, ab = (int(b) for b in spec.split("/"))
        for p in args.paths.split(","):
            key = f"W{wb}A{ab}/{p}"
            if key in res:
                say(f"{key}: {res[key]} (stored)")
                continue
            t0 = time.perf_counter()
            net = fresh()
            names = [n for n, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear)) and n != "conv1"]
            w_bits = {n: wb for n in names}
            apply_bits_(net, w_bits)
            kw: dict[str, Any] = {"signed": "symmetric", "mode": "max"} if p == "old" else {}
            with quantized_activations(net, names, ab, **kw) as aq:
                recalibrate_batchnorm(net, train, args.recal)      # old: also observes the ranges
                if p == "new" and aq.calibrate(train, max(1, args.recal)):
                    recalibrate_batchnorm(net, train, args.recal)
                net.eval()
                ptq = scores(net)
                say(f"{key}: PTQ {ptq}")
                with quantized_weights(net, w_bits):
                    train_epochs(net, train, 1, args.lr, max_steps=args.ft_steps, desc=key)
                net.eval()
                qat = scores(net)
                signs = {n: v["signed"] for n, v in aq.export().items()}
            res[key] = {"ptq": ptq, "qat": qat, "unsigned_layers": sum(not s for s in signs.values()),
                        "layers": len(signs), "seconds": time.perf_counter() - t0}
            say(f"{key}: QAT {qat}")
            path.write_text(json.dumps(res, indent=1))
    path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
