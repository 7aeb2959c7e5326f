"""Recreate ``expected.json``: what the plan-v1 code (hwloop before plan v2, commit 6ab87e8) built from these plans.

The assets are two version-1 plans kept for the upgrade test (``tests/test_plan_v2.py``):

* ``digits/``: ``plan.json`` + ``weights.safetensors`` of the recorded digits run
  (``search/results/digits_small_cnn_asic``: low-rank, channel widths and 4-bit weights);
* ``resnet20_plan.json``: a CIFAR-10 ResNet-20 plan (``search/results/cifar10_resnet20_asic-tpu32_ckpt/predictor``:
  12 channel groups, 20 quantized layers).

``expected.json`` holds, for each case, a SHA-256 of the rebuilt model's state dict (names, shapes, bytes) and
its outputs on a seeded input. It was written by the v1 code; run this script only to regenerate it
(``python tests/assets/plan-v1/make_expected.py``), and only with a hwloop whose replay is known to be right.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def state_digest(model: nn.Module) -> str:
    """SHA-256 over every state-dict entry's name, shape, dtype and raw bytes, in order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous().cpu()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cases() -> dict[str, nn.Module]:
    """The models each case rebuilds: with the recorded weights, and replayed on seeded initial weights."""
    from hwloop.compress import CompressionPlan, compress_, load_compressed
    from hwloop.models import ModelRef

    out: dict[str, nn.Module] = {}
    out["digits_weights"], _ = load_compressed(HERE / "digits")
    for name, path in (("digits_replay", HERE / "digits" / "plan.json"), ("resnet20_replay", HERE / "resnet20_plan.json")):
        plan = CompressionPlan.from_json(path.read_text(encoding="utf-8"))
        torch.manual_seed(0)
        ref = ModelRef.from_dict(plan.base)
        out[name] = compress_(ref.build(), plan).eval()
    return out


def inputs(model_name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    shape = (1, 8, 8) if model_name.startswith("digits") else (3, 32, 32)
    return torch.randn(2, *shape, generator=g)


def main() -> None:
    torch.set_num_threads(1)
    expected = {}
    for name, model in cases().items():
        with torch.no_grad():
            y = model(inputs(name))
        expected[name] = {"state_sha256": state_digest(model), "outputs": y.tolist(),
                          "params": sum(p.numel() for p in model.parameters())}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
