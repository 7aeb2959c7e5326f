"""The real H100 data in hwloop's form: the importer, the shipped store export and the architectures."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from hwloop.errors import ConfigError, DataError
from hwloop.gpu_data import h100_fingerprint, in_net_layer_name, model_ref, read_h100, rebatch_workload
from hwloop.models import ModelRef

REPO = Path(__file__).resolve().parents[1]
SRC = REPO.parent / "shared" / "data" / "h100"
SHIPPED = REPO / "measurements" / "h100"
need_src = pytest.mark.skipif(not (SRC / "nets_graph.csv").is_file(), reason="../shared/data/h100 is not here")


def test_vgg16_gap_is_the_data_sets_vgg16() -> None:
    """The README's layer order: pools after blocks 2, 4, 7, 10, none after 13, average pool, linear."""
    import torch

    net = ModelRef("vgg16_gap", {"widths": list(range(4, 17))}).build()
    kinds = [type(m).__name__ for m in net.features]
    pools = [i for i, k in enumerate(kinds) if k == "MaxPool2d"]
    assert kinds.count("Conv2d") == 13 and len(pools) == 4
    convs_before = [kinds[:p].count("Conv2d") for p in pools]
    assert convs_before == [2, 4, 7, 10]
    assert kinds[-1] == "ReLU" and isinstance(net.pool, torch.nn.AdaptiveAvgPool2d)
    assert net.classifier.in_features == 16
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the module names the data set's net_layers.csv uses
    conv_names = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_names == [f"features.{i}" for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)]


def test_resnet18_matches_torchvision_size_and_widths() -> None:
    import torch

    net = ModelRef("resnet18", {}).build()
    assert sum(p.numel() for p in net.parameters()) == 11_689_512  # torchvision's resnet18
    assert ModelRef("resnet18", {}).input_shape == (3, 224, 224)
    small = ModelRef("resnet18", {"mids": [8] * 8}, input_shape=(3, 64, 64)).build()
    assert small.layers[0].conv1.out_channels == 8 and small(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ConfigError, match="mids"):
        ModelRef("resnet18", {"mids": [8] * 7}).build()


def test_fingerprint_names_gpu_versions_tf32_and_unknown_driver() -> None:
    env = {"gpu": "NVIDIA H100 80GB HBM3", "sms": 132, "torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": 91900}
    fp = h100_fingerprint(env)
    assert fp.backend == "cuda" and fp.identity["gpu"] == "NVIDIA H100 80GB HBM3"
    assert fp.identity["driver"] == "unknown" and fp.identity["torch"] == "2.11.0"
    assert (fp.identity["cudnn_allow_tf32"], fp.identity["matmul_allow_tf32"]) == (True, False)
    with pytest.raises(DataError, match="env.json lacks cudnn"):
        h100_fingerprint({k: v for k, v in env.items() if k != "cudnn"})


def test_layer_names_map_to_hwloop_modules() -> None:
    assert in_net_layer_name("vgg16", "37") == "features.37"
    assert in_net_layer_name("resnet20", "0") == "conv1"
    assert in_net_layer_name("resnet20", "9.sc.0") == "layers.6.shortcut.0"
    with pytest.raises(DataError, match="'9.c3'"):
        in_net_layer_name("resnet20", "9.c3")


def test_rebatch_keeps_structure() -> None:
    from hwloop.workload import extract_workload

    ref = model_ref("resnet20", [3] * 9, 1, "float32")
    wl = extract_workload(ref.build(), ref.example_input())
    big = rebatch_workload(wl, 256, "float16")
    ref256 = model_ref("resnet20", [3] * 9, 256, "float16")
    direct = extract_workload(ref256.build(), ref256.example_input())
    assert [s.key for s in big.layers] == [s.key for s in direct.layers]


@need_src
def test_read_h100_counts_and_modes() -> None:
    rows = read_h100(SRC)
    assert len(rows) == 2986 + 3264 + 192 + 400
    modes = {}
    for _, req, res in rows:
        modes[(req.kind, res.timing.mode)] = modes.get((req.kind, res.timing.mode), 0) + 1
    assert modes == {("layer", "eager"): 6250, ("model", "eager"): 192, ("model", "cuda_graph"): 400}
    _, req, res = next(r for r in rows if r[2].extra["source"] == "h100/nets_graph.csv")
    assert req.model.name in ("vgg16_gap", "resnet20") and res.timing.repeats == 7
    assert res.min_ms <= res.latency_ms <= res.max_ms


@need_src
def test_malformed_source_is_one_line_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "h100"
    shutil.copytree(SRC, bad)
    lines = (bad / "layers.csv").read_text().splitlines()
    lines[5] = lines[5].replace("float32", "float64", 1).replace("float16", "float64", 1)
    (bad / "layers.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"layers.csv line 6: .*float64") as e:
        read_h100(bad)
    assert "\n" not in str(e.value)
    (bad / "nets.csv").unlink()
    with pytest.raises(DataError, match="nets.csv does not exist"):
        read_h100(bad)


def test_shipped_export_loads_with_fingerprint_and_workloads() -> None:
    from hwloop.store import MeasurementStore

    with MeasurementStore("sqlite://") as st:
        n = st.import_(SHIPPED / "measurements.parquet")
        assert n == 5560
        (fp,) = st.devices()
        assert fp.name == "h100" and fp.identity["driver"] == "unknown"
        graph = st.to_dataframe(kind="model", mode="cuda_graph")
        assert len(graph) == 400
    keys = set()
    with gzip.open(SHIPPED / "workloads.jsonl.gz", "rt") as f:
        for line in f:
            keys.add(json.loads(line)["model_key"])
    refs = [ModelRef.from_dict(json.loads(v)) for v in graph["model_json"]]
    assert {r.key for r in refs} <= keys
    check = json.loads((SHIPPED / "import.json").read_text())["in_net_layer_check"]
    assert check == {"match": 3264, "mismatch": 0}
