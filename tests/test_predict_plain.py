"""Predictors for tools outside PyTorch (issue 15, item 9): plain layer descriptions give the same raw
table as ``LayerSpec``, and loading a predictor and predicting from dicts / JSON / DataFrames imports
no torch — checked in a subprocess where torch cannot be imported and in a fresh venv without torch."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hwloop
from hwloop.errors import HwloopError, PredictorError
from hwloop.predict.features import spec_table
from hwloop.predict.plain import read_layers, table_from_dicts, table_of
from hwloop.predict.sampling import random_layer_specs
import hwloop.workload as wl_mod
from hwloop.workload import LayerSpec, Workload

REPO = Path(__file__).resolve().parents[1]
PRED = REPO / "measurements" / "local-cpu" / "predictor.json"
EXTRA = [
    LayerSpec("conv2d", (2, 8, 17, 13), out_channels=12, kernel=(3, 5), stride=(2, 1), padding=(1, 2),
              dilation=(2, 1), bias=True),
    LayerSpec("conv2d", (1, 16, 9, 9), out_channels=32, kernel=3, groups=4, rank=5, w_bits=4, a_bits=8),
    LayerSpec("conv2d", (1, 32, 8, 8), out_channels=32, kernel=3, padding=1, groups=32, dtype="bfloat16"),
    LayerSpec("linear", (4, 7, 64), out_channels=10, bias=True),
    LayerSpec("linear", (3, 64), out_channels=10, rank=4, dtype="float16"),
    LayerSpec("matmul", (2, 5, 64), out_channels=48),
    LayerSpec("matmul", (5, 64), out_channels=48),
    LayerSpec("batchnorm", (2, 30)),
    LayerSpec("activation", (1, 24, 5, 5), variant="hardswish"),
    LayerSpec("activation", (1, 24, 5, 5), variant="mystery"),
    LayerSpec("pooling", (1, 24, 9, 9), kernel=3, stride=2, padding=1, variant="max"),
    LayerSpec("pooling", (1, 24, 9, 9), out_shape=(1, 24, 1, 1), variant="adaptive_avg"),
    LayerSpec("add", (1, 24, 9, 9)),
    LayerSpec("other", (1, 24, 9, 9), out_shape=(1, 24 * 81)),
]
if "groupnorm" in getattr(wl_mod, "LAYER_OP_KINDS", ()):  # run-time norms, where this hwloop has them
    EXTRA += [LayerSpec("groupnorm", (2, 24, 9, 9), groups=6), LayerSpec("instancenorm", (1, 24, 9, 9))]


def test_op_kinds_and_dtypes_agree_with_workload() -> None:
    import hwloop.opkinds as ok
    import hwloop.workload as wl

    assert ok.OP_KINDS == wl.OP_KINDS and ok.DTYPES == wl.DTYPES


def test_dicts_give_the_layerspec_table_exactly() -> None:
    specs = random_layer_specs(3000, np.random.default_rng(0), bits=((None, None), (4, 8), (2, 2))) + EXTRA
    with gzip.open(REPO / "measurements" / "local-cpu" / "workloads.jsonl.gz", "rt") as f:
        for line in f.readlines()[:40]:  # built-in models' traced workloads (resnet20, mobilenetv2, vgg16...)
            specs += list(Workload.from_dict(json.loads(line)["workload"]).layers)
    dicts = [s.to_dict() for s in specs]
    assert np.array_equal(table_from_dicts(dicts), spec_table(specs))
    # JSON round trip (lists, not tuples) and minimal dicts (defaults omitted) give the same
    assert np.array_equal(table_of(json.loads(json.dumps(dicts))), spec_table(specs))
    minimal = {"op": "conv2d", "in_shape": [1, 8, 16, 16], "out_channels": 16, "kernel": 3, "padding": 1}
    assert np.array_equal(table_of([minimal]), spec_table([LayerSpec.from_dict(minimal)]))


@pytest.mark.parametrize("bad, needle", [
    ({"op": "conv3d", "in_shape": [1, 3, 8, 8]}, "op 'conv3d' is unknown; allowed: conv2d"),
    ({"op": "conv2d", "in_shape": [1, 3, 8, 8], "out_channels": 4, "kernal": 3}, "unknown field(s) ['kernal']"),
    ({"op": "conv2d", "in_shape": [1, 3, 8, 8]}, "conv2d needs out_channels >= 1"),
    ({"op": "conv2d", "in_shape": [1, 6, 8, 8], "out_channels": 4, "groups": 4}, "groups=4 must divide"),
    ({"op": "linear", "in_shape": [1, "64"], "out_channels": 4}, "in_shape=[1, '64'] must be a list of integers"),
    ({"op": "linear", "in_shape": [1, 64], "out_channels": 4, "dtype": "int8"}, "dtype 'int8' is unknown"),
    ({"op": "add", "in_shape": [1, 8], "rank": 2}, "rank is only meaningful"),
    ({"in_shape": [1, 8]}, "a layer needs 'op' and 'in_shape'"),
])
def test_a_bad_description_is_a_one_line_error_naming_the_layer(bad: dict, needle: str) -> None:
    good = {"op": "add", "in_shape": [1, 8, 4, 4], "name": "ok"}
    with pytest.raises(PredictorError) as e:
        table_of([good, {**bad, "name": "blk.1"}])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("layer 1 (blk.1): ") and needle in msg, msg


def test_read_layers_json_jsonl_and_workload(tmp_path: Path) -> None:
    specs = EXTRA[:4]
    (tmp_path / "a.json").write_text(json.dumps([s.to_dict() for s in specs]))
    (tmp_path / "w.json").write_text(json.dumps(Workload("m", (1, 8), tuple(specs)).to_dict()))
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(s.to_dict()) for s in specs))
    for name in ("a.json", "w.json", "l.jsonl"):
        assert np.array_equal(table_of(read_layers(tmp_path / name)), spec_table(specs))
    (tmp_path / "bad.json").write_text("{nope")
    for path, needle in ((tmp_path / "bad.json", "is not valid JSON"), (tmp_path / "none.json", "cannot read")):
        with pytest.raises(HwloopError, match=needle):
            read_layers(path)


# the script both isolation checks run: load, predict dicts / a DataFrame / a JSON file / a whole model
SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import hwloop
    import pandas as pd
    from hwloop.predict.plain import read_layers
    p = hwloop.load_predictor(sys.argv[1])
    t_load = time.perf_counter() - t0
    layers = json.loads(sys.argv[2])
    frame = pd.DataFrame({"op": ["conv2d", "linear"], "batch": [1, 8], "in_channels": [16, 512],
                          "out_channels": [32, 10], "in_h": [32, 1], "in_w": [32, 1], "kernel_h": [3, 1],
                          "padding": [1, 0]})
    out = {"dicts": p.predict(layers).tolist(), "frame": p.predict(frame).tolist(),
           "file": p.predict(read_layers(sys.argv[3])).tolist(),
           "model": p.predict_workload(read_layers(sys.argv[3])), "load_s": t_load,
           "torch_loaded": "torch" in sys.modules, "workload_loaded": "hwloop.workload" in sys.modules}
    try:
        import torch  # noqa: F401
        out["torch_importable"] = True
    except ImportError:
        out["torch_importable"] = False
    print(json.dumps(out))
""")
BLOCKER = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, _NoTorch())
""")


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list, Path]:
    """What the torch-enabled process predicts (LayerSpec path) for the same inputs."""
    layers = [s.to_dict() for s in EXTRA]
    wl_file = tmp_path_factory.mktemp("plain") / "resnet_like.json"
    specs = EXTRA[:3] + EXTRA[8:13]
    wl_file.write_text(json.dumps(Workload("m", (1, 8, 17, 13), tuple(specs)).to_dict()))
    p = hwloop.load_predictor(PRED)
    from hwloop.predict.columnar import table_from_columns

    frame = {"op": ["conv2d", "linear"], "batch": [1, 8], "in_channels": [16, 512], "out_channels": [32, 10],
             "in_h": [32, 1], "in_w": [32, 1], "kernel_h": [3, 1], "padding": [1, 0]}
    ref = {"dicts": p.predict(list(EXTRA)).tolist(), "frame": p.predict(table_from_columns(frame)).tolist(),
           "file": p.predict(specs).tolist(), "model": p.predict_workload(specs)}
    return ref, layers, wl_file


def _check(out: dict, ref: dict) -> None:
    assert out["torch_loaded"] is False and out["workload_loaded"] is False and out["torch_importable"] is False
    for k in ("dicts", "frame", "file"):
        assert out[k] == ref[k], k  # bit-identical to the LayerSpec path
    assert out["model"] == ref["model"]


def test_load_and_predict_with_torch_unimportable(expected: tuple, tmp_path: Path) -> None:
    ref, layers, wl_file = expected
    script = tmp_path / "run.py"
    script.write_text(BLOCKER + SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(PRED), json.dumps(layers), str(wl_file)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    _check(json.loads(r.stdout.strip().splitlines()[-1]), ref)


# packages a torch-free predictor process needs: hwloop, numpy, pandas (+ its deps), xgboost (+ scipy)
_DEPS = ("numpy", "numpy.libs", "pandas", "pandas.libs", "dateutil", "six.py", "tzdata", "pytz", "scipy",
         "scipy.libs", "xgboost", "xgboost.libs", "safetensors", "nvidia")


@pytest.mark.slow
def test_a_fresh_venv_without_torch(expected: tuple, tmp_path: Path) -> None:
    """A new venv (no system site packages, no pip) that holds hwloop and the predictor's libraries only:
    the ones this environment already has, linked into the venv's site-packages (offline, no copies)."""
    ref, layers, wl_file = expected
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    src = Path(sysconfig.get_paths()["purelib"])
    for name in _DEPS:
        if (src / name).exists():
            (site / name).symlink_to(src / name)
    (site / "hwloop").symlink_to(REPO / "hwloop")
    assert not (site / "torch").exists()
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    r = subprocess.run([str(py), "-I", str(script), str(PRED), json.dumps(layers), str(wl_file)],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    _check(json.loads(r.stdout.strip().splitlines()[-1]), ref)
