"""Feature schema 3 (CPU view of convolutions) and loading files of older feature schemas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hwloop.errors import PredictorError
from hwloop.predict import load_predictor, make_predictor
from hwloop.predict.features import (FEATURE_NAMES, FEATURE_NAMES_V1, FEATURE_NAMES_V2, FEATURE_SCHEMA,
                                     feature_names, features_from_table, spec_table)
from hwloop.predict.sampling import random_layer_specs
from hwloop.workload import LayerSpec, Workload

V2 = Path(__file__).parent / "assets" / "predictor-schema-v2"


def _f(spec: LayerSpec) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, features_from_table(spec_table([spec]))[0].tolist()))


def test_schema_names_nest() -> None:
    assert FEATURE_SCHEMA == 3
    assert FEATURE_NAMES[:len(FEATURE_NAMES_V2)] == FEATURE_NAMES_V2
    assert FEATURE_NAMES_V2[:len(FEATURE_NAMES_V1)] == FEATURE_NAMES_V1
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert feature_names(2) == FEATURE_NAMES_V2
    t = spec_table(random_layer_specs(20, np.random.default_rng(0)))
    x3, x2 = features_from_table(t), features_from_table(t, 2)
    assert x3.shape == (20, len(FEATURE_NAMES)) and x2.shape == (20, len(FEATURE_NAMES_V2))
    np.testing.assert_array_equal(x3[:, :x2.shape[1]], x2)  # schema 3 only appends
    with pytest.raises(PredictorError, match="feature schema 4 is unknown"):
        features_from_table(t, 4)


def test_cpu_path_rule_matches_pytorch_single_thread() -> None:
    """``cpu_onednn_conv`` reproduces the backend PyTorch itself selects for float32 at one thread."""
    specs = [s for s in random_layer_specs(400, np.random.default_rng(3)) if s.op == "conv2d" and not s.rank]
    assert len(specs) > 50
    x = features_from_table(spec_table(specs))
    col = FEATURE_NAMES.index("cpu_onednn_conv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chosen = []
        for s in specs:
            inp = torch.empty(s.in_shape)
            w = torch.empty(s.out_channels, s.in_channels // s.groups, *s.kernel)
            b = torch._C._select_conv_backend(inp, w, None, list(s.stride), list(s.padding), list(s.dilation),
                                              False, [0, 0], s.groups, None)
            chosen.append(str(b).endswith("Mkldnn"))
    finally:
        torch.set_num_threads(threads)
    assert 0 < sum(chosen) < len(chosen)  # both paths occur in the sample
    np.testing.assert_array_equal(x[:, col] == 1.0, np.array(chosen))


def test_lowrank_conv_parts() -> None:
    s = LayerSpec("conv2d", (2, 16, 8, 8), out_channels=32, kernel=3, padding=1, rank=4)
    f = _f(s)
    macs1, macs2 = 2 * 64 * 16 * 9 * 4, 2 * 64 * 4 * 32
    assert f["log2_conv1_macs"] == pytest.approx(np.log2(macs1 + 1), rel=1e-6)
    assert f["log2_conv2_macs"] == pytest.approx(np.log2(macs2 + 1), rel=1e-6)
    assert macs1 + macs2 == s.macs  # the two convs are the layer
    assert f["log2_conv2_in_elements_per_sample"] == pytest.approx(np.log2(4 * 64 + 1), rel=1e-6)
    dense = _f(LayerSpec("conv2d", (1, 16, 8, 8), out_channels=32, kernel=3, padding=1))
    assert dense["log2_conv2_macs"] == 0 and dense["cpu_onednn_conv"] == 0  # small batch-1 3×3: im2col + GEMM
    assert dense["log2_cpu_im2col_elements"] == pytest.approx(np.log2(16 * 9 * 64 + 1), rel=1e-6)
    lin = _f(LayerSpec("linear", (1, 8), out_channels=4))
    assert all(lin[n] == 0 for n in FEATURE_NAMES[len(FEATURE_NAMES_V2):])


def test_schema2_file_still_loads_and_predicts_the_same(tmp_path: Path) -> None:
    meta = json.loads((V2 / "predictor.json").read_text())
    assert meta["feature_schema"] == 2 and meta["features"] == list(FEATURE_NAMES_V2)
    exp = json.loads((V2 / "expected.json").read_text())
    p = load_predictor(V2 / "predictor.json")
    assert p.feature_schema_ == 2
    specs = [LayerSpec.from_dict(d) for d in exp["specs"]]
    np.testing.assert_allclose(p.predict(specs), exp["predict_ms"], rtol=1e-6)
    assert p.predict_workload(Workload.from_dict(exp["workload"])) == pytest.approx(exp["predict_workload_ms"],
                                                                                    rel=1e-6)
    q = load_predictor(p.save(tmp_path / "resaved.json"))  # re-saving keeps its feature schema
    assert json.loads((tmp_path / "resaved.json").read_text())["feature_schema"] == 2
    np.testing.assert_allclose(q.predict(specs), exp["predict_ms"], rtol=1e-6)


def test_new_fit_uses_schema3(tmp_path: Path) -> None:
    specs = random_layer_specs(150, np.random.default_rng(1))
    y = [s.macs * 1e-7 + 0.01 for s in specs]
    p = make_predictor("xgboost", n_estimators=10, n_jobs=1).fit(specs, y)
    meta = json.loads(p.save(tmp_path / "p.json").read_text())
    assert meta["feature_schema"] == 3 and meta["features"] == list(FEATURE_NAMES)
    np.testing.assert_allclose(load_predictor(tmp_path / "p.json").predict(specs), p.predict(specs), rtol=1e-6)
