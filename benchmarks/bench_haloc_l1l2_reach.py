"""What the ``l1l2`` low-rank gates' space can reach on a device (issue 18): the measured latency ratio of ResNet-20
with every factorisable conv at one rank fraction of the shared search space's SVD factorisation
(:class:`hwloop.search.space.SearchSpace` with ``lowrank = true``, ``channels = false``: a k×k conv becomes a k×k
``C_in→r`` conv and a 1×1 ``r→C_out`` conv, the form the ``l1l2`` rank gates extract), measured whole against the
dense model on the device, and the same with the channel groups scaled too (the joint space ``channels = true``,
``lowrank = true``, width = rank fraction). It says whether the rank-only ``l1l2`` entry can reach the shared targets
before the harness spends compute on it.

    OMP_NUM_THREADS=1 nice -n 12 python benchmarks/bench_haloc_l1l2_reach.py --device asic-tpu32 \\
        --out search/results/haloc/l1l2_reach_asic-tpu32.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONVERGED = ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"
FRACTIONS = (0.05, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(CONVERGED))
    ap.add_argument("--device", default="asic-tpu32")
    ap.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    ap.add_argument("--out", default=None, help="JSON output (default search/results/haloc/l1l2_reach_<device>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    from safetensors.torch import load_file

    from hwloop.models import ModelRef
    from hwloop.search.report import compare_compressed
    from hwloop.search.space import SearchSpace, SpaceOptions

    out = Path(args.out or ROOT / f"search/results/haloc/l1l2_reach_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    ref = ModelRef("resnet20", {}, input_shape=(3, 32, 32))
    base = ref.build()
    base.load_state_dict(load_file(args.checkpoint))
    base.eval()
    doc.update(device=args.device, checkpoint=args.checkpoint)
    for mode, opts in (("rank", SpaceOptions(channels=False, lowrank=True)),
                       ("joint", SpaceOptions(channels=True, lowrank=True))):
        space = SearchSpace.from_ref(ref, opts, model=base)
        dims = space.dimensions()
        pts = doc.setdefault(mode, {"layers": sum(d.name.startswith("rank:") for d in dims)}).setdefault("measured", {})
        for f in (float(x) for x in args.fractions.split(",")):
            key = f"{f:.4f}"
            if key in pts:
                continue
            cfg = {d.name: max(d.low, f) for d in dims if d.kind == "ratio"}
            net, plan = space.compress(cfg)
            m = compare_compressed(args.device, net.eval(), plan, base, example=ref.example_input())
            pts[key] = {"frac": f, "ranks": dict(plan.lowrank), "ratio": m["ratio"], "latency_ms": m["latency_ms"],
                        "original_ms": m["original_ms"]}
            out.write_text(json.dumps(doc, indent=1, default=float))
            say(f"{mode} f={f:.3f} ({len(plan.lowrank)} factorised): measured {m['ratio']:.3f}x")
        doc[mode]["min_ratio"] = min(p["ratio"] for p in pts.values())
        out.write_text(json.dumps(doc, indent=1, default=float))
        say(f"{mode}: smallest measured ratio {doc[mode]['min_ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
