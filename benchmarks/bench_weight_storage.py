"""How much smaller an exported plan is on disk: `save_compressed` with packing against float32 (issue 16, plan v2).

For the converged CIFAR-10 ResNet-20 it builds plans of every convolution (the stem and the classifier stay dense
float32: they are 0.2% of the weights) at 8 / 4 / 2 / 1 weight bits, 2:4 and unstructured sparsity, and both
together, replays each (`compress_`), saves it packed and as float32, checks that the packed file loads back to
the same outputs bit for bit, and prints the file sizes and which storage each layer got. `--out` writes JSON.

    python benchmarks/bench_weight_storage.py --out measurements/storage/resnet20.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwloop.compress import CompressionPlan, compress_, load_compressed, save_compressed  # noqa: E402
from hwloop.compress.actions import Action, Quantize, Sparsify  # noqa: E402
from hwloop.compress.quantstore import METADATA_KEY  # noqa: E402
from hwloop.models import ModelRef  # noqa: E402


def _plans(convs: list[str]) -> dict[str, list[Action]]:
    out: dict[str, list[Action]] = {"dense": []}
    for b in (8, 4, 2, 1):
        out[f"w{b}"] = [Quantize(c, b) for c in convs]
    out["2:4"] = [Sparsify(c, "n:m", n=2, m=4) for c in convs]
    out["unstructured 0.25"] = [Sparsify(c, "unstructured", density=0.25) for c in convs]
    for b in (8, 4, 1):
        out[f"2:4 + w{b}"] = [*out["2:4"], *[Quantize(c, b) for c in convs]]
    out["unstructured 0.25 + w4"] = [*out["unstructured 0.25"], *[Quantize(c, 4) for c in convs]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "search/checkpoints/resnet20_cifar10_converged.safetensors"))
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)
    from safetensors import safe_open
    from safetensors.torch import load_file

    ref = ModelRef("resnet20", {"num_classes": 10}, input_shape=(3, 32, 32))
    base = ref.build().eval()
    base.load_state_dict(load_file(args.checkpoint))
    convs = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, actions in _plans(convs).items():
            plan = CompressionPlan(base=ref.to_dict(), actions=actions)
            model = ref.build().eval()
            model.load_state_dict(base.state_dict())
            net = compress_(model, plan).eval()
            d = Path(tmp) / label.replace(" ", "_").replace(":", "-").replace("+", "p")
            save_compressed(net, plan, d / "packed")
            save_compressed(net, plan, d / "float", pack=False)
            loaded, _ = load_compressed(d / "packed")
            with torch.no_grad():
                exact = bool(torch.equal(loaded(x), net(x)))
            with safe_open(str(d / "packed" / "weights.safetensors"), "pt") as f:
                table = json.loads(f.metadata()[METADATA_KEY])
            kinds = collections.Counter(f"{e['storage']}{' sparse' if e.get('sparse') else ''}" for e in table.values())
            packed = (d / "packed" / "weights.safetensors").stat().st_size
            flt = (d / "float" / "weights.safetensors").stat().st_size
            rows.append({"plan": label, "float32_bytes": flt, "packed_bytes": packed, "ratio": packed / flt,
                         "storages": dict(kinds), "convs": len(convs), "exact": exact})
    print("| plan (every conv but the stem) | float32 file | packed file | packed / float32 | storages | loads exactly |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        st = ", ".join(f"{k} × {v}" for k, v in sorted(r["storages"].items())) or "–"
        print(f"| {r['plan']} | {r['float32_bytes']:,} | {r['packed_bytes']:,} | {r['ratio']:.3f} | {st} | {r['exact']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=1) + "\n")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
