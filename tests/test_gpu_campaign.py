"""The GPU campaign (benchmarks/gpu_campaign.py): its plan, and its dry run on the CPU with nothing but
the standard library, torch and numpy importable — as on the GPU machine — resumed a second time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_campaign.py"

# run the campaign with every import outside the standard library, torch (and what torch itself
# requires), numpy and hwloop refused, as on a bare GPU machine
BLOCKER = r"""
import importlib.metadata as md, re, runpy, sys
allowed = {"torch", "numpy", "hwloop", "torchgen", "functorch", "triton", "nvidia"} | set(sys.stdlib_module_names)
for r in md.requires("torch") or []:
    if "extra ==" not in r:
        allowed.add(re.split(r"[ ;<>=!\[]", r)[0].lower().replace("-", "_"))
allowed |= {"mpmath", "markupsafe"}
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in allowed and not top.startswith("_"):
            raise ModuleNotFoundError(f"blocked import {name}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
bad = sorted({m.split(".")[0] for m in sys.modules} - allowed - {"__main__", "__mp_main__"})
bad = [m for m in bad if not m.startswith("_")]
assert not bad, bad
"""


def _campaign(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=REPO)


def test_dry_run_with_torch_and_numpy_only_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    p = _campaign("--out", str(out), "--dry-run")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["complete"] and summary["errors"] == 0
    assert summary["measured"] == summary["planned"] == len(json.loads((out / "plan.json").read_text()))
    checks = json.loads((out / "checks.json").read_text())["checks"]
    status = {c["check"]: c["status"] for c in checks}
    assert {status[f"{k}/eager"] for k in ("layer", "model", "model_layers")} == {"passed"}
    assert status["oom_as_data"] == "skipped" and status["model_layers/cuda_graph"] == "skipped"
    # the output is training data hwloop reads
    from hwloop.predict.io import load_training_data

    d = load_training_data(out, mode="eager", progress=False)
    archs = {r.name for r in d.model_refs}
    assert archs == {"resnet18", "resnet20", "vgg16_gap", "mobilenetv2"} and d.n_layers == 6
    assert any(per for per in d.per_layer_ms)  # the model_layers nets carry per-layer times
    # a torn last line (an interrupted run) is tolerated and the second run resumes: nothing is measured again
    with open(out / "models.jsonl", "a") as f:
        f.write('{"fingerprint": {"key"')
    p2 = _campaign("--out", str(out), "--dry-run")
    assert p2.returncode == 0, p2.stderr[-2000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["measured"] == 0 and again["already_done"] == summary["planned"]


def test_gpu_plan_covers_the_campaign() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_campaign as gc
    finally:
        sys.path.pop(0)
    plan = gc.plan(6, 1, dry=False, seed=0)
    nets = [(r, m) for ph, r, m in plan if ph == "nets"]
    assert len(nets) == 4 * 2 * 2 * 2 * 6  # archs x batches x dtypes x modes x nets
    shapes = {(r.model.name, r.model.input_shape[1], r.model.batch, r.model.dtype) for r, _ in nets}
    assert ("resnet18", 224, 32, "float16") in shapes and ("mobilenetv2", 32, 256, "float32") in shapes
    assert ("vgg16_gap", 32, 1, "float16") in shapes and ("resnet20", 32, 256, "float32") in shapes
    per_layer = [r for r, m in nets if r.kind == "model_layers"]
    assert len(per_layer) == 16 and all(m == "cuda_graph" for r, m in nets if r.kind == "model_layers")
    stairs = [r for ph, r, m in plan if ph == "staircases"]
    assert len(stairs) == 2 * 2 * 128 and all(m == "cuda_graph" for ph, _, m in plan if ph == "staircases")
    # the plan is the same in every process (resuming depends on it)
    assert [r.key for _, r, _ in gc.plan(6, 1, dry=False, seed=0)] == [r.key for _, r, _ in plan]


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x"), "--nets", "0"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and "--nets=0" in p.stderr and "Traceback" not in p.stderr



def test_leaf_calls_records_each_layer_with_its_in_model_input() -> None:
    """The graph-mode per-layer path (cuda.time_layers_graph) times each call of leaf_calls alone; on the CPU
    the calls, their order and their inputs can be checked (a module called twice appears twice)."""
    import torch

    from hwloop.devices.cuda import leaf_calls
    from hwloop.models import ModelRef

    ref = ModelRef("resnet20", {"mids": [4] * 9}, batch=2)
    model, x = ref.build(), ref.example_input()
    calls = leaf_calls(model, (x,))
    names = [n for n, _, _ in calls]
    assert names[:3] == ["conv1", "bn1", "relu"] and names[-1] == "fc"
    assert names.count("relu") == 1 and "layers.3.shortcut.0" in names
    name, mod, args = calls[3]  # the first block's conv1 gets the stem's output
    assert name == "layers.0.conv1" and tuple(args[0].shape) == (2, 16, 32, 32)
    with torch.inference_mode():
        assert mod(*args).shape == (2, 4, 32, 32)
    twice = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU()).eval()
    relu = twice[1]
    twice2 = torch.nn.Sequential(twice[0], relu, relu).eval()
    assert [n for n, _, _ in leaf_calls(twice2, (torch.randn(1, 3, 4, 4),))] == ["0", "1", "1"]
