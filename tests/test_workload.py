"""Workloads: extraction from every built-in model, LayerSpec arithmetic, keys, serialisation, building."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwloop.errors import WorkloadError
from hwloop.models import BUILTIN_MODELS, ModelRef
from hwloop.workload import (
    LayerSpec,
    Workload,
    WorkloadWarning,
    build_layer,
    extract_layers,
    extract_workload,
    make_inputs,
)

torch.set_num_threads(1)


def _workload(name: str, **kw: object) -> tuple[nn.Module, Workload]:
    ref = ModelRef(name, kw)
    model = ref.build()
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkloadWarning)  # built-ins export cleanly, nothing unknown
        wl = extract_workload(model, ref.example_input(), name=name)
    return model, wl


@pytest.fixture(scope="module")
def workloads() -> dict[str, tuple[nn.Module, Workload]]:
    return {n: _workload(n) for n in BUILTIN_MODELS}


def _flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_every_builtin_extracts_its_convs_and_linears(name: str, workloads: dict[str, tuple[nn.Module, Workload]]
                                                      ) -> None:
    model, wl = workloads[name]
    assert wl.method == "export" and wl.name == name
    ops = Counter(s.op for s in wl.layers)
    assert ops["conv2d"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert ops["linear"] == sum(isinstance(m, nn.Linear) for m in model.modules())
    assert ops["batchnorm"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ops["other"] == 0
    by_name = dict(model.named_modules())
    for s in wl.layers:
        if s.op == "conv2d":
            m = by_name[s.name]
            assert isinstance(m, nn.Conv2d)
            assert (s.in_channels, s.out_channels, s.groups) == (m.in_channels, m.out_channels, m.groups)
            assert s.kernel == m.kernel_size and s.stride == m.stride and s.padding == m.padding


def test_expected_layer_counts(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    counts = {n: Counter(s.op for s in wl.layers) for n, (_, wl) in workloads.items()}
    assert (counts["small_cnn"]["conv2d"], counts["small_cnn"]["linear"]) == (3, 1)
    assert (counts["resnet20"]["conv2d"], counts["resnet20"]["add"]) == (21, 9)  # 19 + 2 projection shortcuts
    assert (counts["resnet56"]["conv2d"], counts["resnet56"]["add"]) == (57, 27)
    assert (counts["vgg16"]["conv2d"], counts["vgg16"]["linear"], counts["vgg16"]["pooling"]) == (13, 1, 5)
    assert counts["mobilenetv2"]["add"] == 10  # residual inverted blocks


def test_resnet20_macs(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    _, wl = workloads["resnet20"]
    dense = [s for s in wl.layers if s.op in ("conv2d", "linear")]
    shortcuts = [s for s in dense if "shortcut" in s.name]
    main = sum(s.macs for s in dense if s not in shortcuts)
    # the published 40.55M MACs of ResNet-20 (identity shortcuts) ...
    assert main == 40_551_040
    # ... plus this implementation's two 1x1 projection shortcuts (16->32 at 16x16, 32->64 at 8x8)
    assert [s.macs for s in shortcuts] == [16 * 32 * 16 * 16, 32 * 64 * 8 * 8]
    assert sum(s.macs for s in dense) == 40_813_184


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_conv_linear_macs_match_torch_flop_counter(name: str, workloads: dict[str, tuple[nn.Module, Workload]]
                                                   ) -> None:
    model, wl = workloads[name]
    counted = _flops(model, (ModelRef(name).example_input(),))
    ours = sum(s.macs for s in wl.layers if s.op in ("conv2d", "linear"))
    assert counted == 2 * ours


def test_mobilenetv2_depthwise_groups(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    _, wl = workloads["mobilenetv2"]
    dw = [s for s in wl.layers if s.op == "conv2d" and s.groups > 1]
    assert len(dw) == 17
    assert all(s.groups == s.in_channels == s.out_channels and s.kernel == (3, 3) for s in dw)
    assert all(s.params == 9 * s.in_channels for s in dw)


def test_resnet_adds_carry_shapes(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    _, wl = workloads["resnet20"]
    adds = [s for s in wl.layers if s.op == "add"]
    assert [a.in_shape for a in adds[:3]] == [(1, 16, 32, 32)] * 3
    assert all(a.in_shape == a.out_shape for a in adds)
    assert all(a.macs == a.out_elements for a in adds)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.export refuses it
            y = torch.relu(y)
        return self.fc(y.mean((2, 3)))


def test_hooks_fallback_with_a_warning() -> None:
    model = DataDependent().train()
    with pytest.warns(WorkloadWarning, match="torch.export failed.*falling back to forward hooks"):
        wl = extract_workload(model, torch.randn(1, 3, 8, 8), name="dd")
    assert wl.method == "hooks"
    assert [(s.op, s.name) for s in wl.layers] == [("conv2d", "conv"), ("linear", "fc")]
    assert wl.layers[0].out_shape == (1, 4, 6, 6)
    assert model.training  # mode restored
    with pytest.raises(WorkloadError, match="torch.export failed on dd"):
        extract_workload(model, torch.randn(1, 3, 8, 8), name="dd", method="export")


def test_hooks_method_matches_export_on_convs(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    model, wl = workloads["resnet20"]
    hooked = extract_workload(model, ModelRef("resnet20").example_input(), method="hooks")
    convs = lambda w: [(s.name, s.key) for s in w.layers if s.op in ("conv2d", "linear")]  # noqa: E731
    assert convs(hooked) == convs(wl)
    assert not any(s.op == "add" for s in hooked.layers)  # functional adds are invisible to hooks


class Softmaxed(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, -1).cumsum(-1)


@pytest.mark.parametrize("method, variants", [("export", {"softmax", "cumsum"}), ("hooks", {"Softmaxed"})])
def test_unknown_ops_become_other_with_a_warning(method: str, variants: set[str]) -> None:
    model = nn.Sequential(nn.Linear(4, 6), Softmaxed())
    with pytest.warns(WorkloadWarning, match="recorded as 'other'"):
        specs = extract_layers(model, torch.randn(2, 4), method=method)
    assert specs[0].op == "linear"
    others = [s for s in specs if s.op == "other"]
    assert {s.variant for s in others} == variants
    assert all(s.out_shape == (2, 6) for s in others)


@pytest.mark.parametrize("model, example, match", [
    (nn.Linear(2, 2), torch.randn(1, 2), "method 'trace' is unknown"),
    ("not a module", torch.randn(1, 2), "must be a torch.nn.Module"),
    (nn.Linear(2, 2), [1.0, 2.0], "must be a torch.Tensor"),
])
def test_extract_bad_arguments(model: object, example: object, match: str) -> None:
    method = "trace" if "trace" in match else "auto"
    with pytest.raises(WorkloadError, match=match):
        extract_workload(model, example, method=method)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ keys and records
CONV = LayerSpec("conv2d", (1, 8, 16, 16), out_channels=16, kernel=3, padding=1)


def test_key_is_stable() -> None:
    # Store rows are keyed by this hash: changing the hashing invalidates every stored measurement.
    assert CONV.key == "d1eb5fc9f267bbbc"
    again = LayerSpec("conv2d", [1, 8, 16, 16], out_channels=16, kernel=(3, 3), padding=[1, 1], name="block.conv")
    assert again.key == CONV.key and again == CONV


@pytest.mark.parametrize("change", [{"stride": 2}, {"dtype": "float16"}, {"rank": 4}, {"w_bits": 8},
                                    {"a_bits": 8}, {"groups": 8}, {"bias": True}, {"dilation": 2},
                                    {"in_shape": (2, 8, 16, 16)}, {"out_channels": 32}])
def test_key_is_sensitive_to_every_execution_field(change: dict[str, object]) -> None:
    if "dilation" in change:
        change = {**change, "padding": 2}
    assert CONV.replace(**change).key != CONV.key


def test_spec_and_workload_round_trip(workloads: dict[str, tuple[nn.Module, Workload]]) -> None:
    _, wl = workloads["mobilenetv2"]
    blob = json.dumps(wl.to_dict())
    back = Workload.from_dict(json.loads(blob))
    assert back == wl and back.key == wl.key
    assert [s.name for s in back.layers] == [s.name for s in wl.layers]
    low = CONV.replace(rank=3, w_bits=4, a_bits=8, name="x")
    assert LayerSpec.from_dict(json.loads(json.dumps(low.to_dict()))) == low


def test_workload_key_depends_on_input_shape() -> None:
    ref = ModelRef("small_cnn")
    a = extract_workload(ref.build(), torch.randn(1, 1, 8, 8))
    b = extract_workload(ref.build(), torch.randn(4, 1, 8, 8))
    assert a.key != b.key and b.layers[0].batch == 4
    assert a.macs * 4 == b.macs


@pytest.mark.parametrize("kw, match", [
    ({"op": "conv3d", "in_shape": (1, 3, 8, 8)}, "op 'conv3d' is unknown"),
    ({"op": "linear", "in_shape": (1, 4), "out_channels": 2, "dtype": "int8"}, "dtype 'int8' is unknown"),
    ({"op": "conv2d", "in_shape": (1, 3, 8), "out_channels": 4}, "NCHW"),
    ({"op": "conv2d", "in_shape": (1, 3, 8, 8), "in_channels": 4, "out_channels": 4}, "in_channels=4 differs"),
    ({"op": "conv2d", "in_shape": (1, 6, 8, 8), "out_channels": 4, "groups": 4}, "groups=4 must divide"),
    ({"op": "conv2d", "in_shape": (1, 3, 2, 2), "out_channels": 4, "kernel": 5}, "output would be empty"),
    ({"op": "conv2d", "in_shape": (1, 3, 8, 8), "out_channels": 4, "padding": -1}, "padding >= 0"),
    ({"op": "conv2d", "in_shape": (1, 3, 8, 8), "out_channels": 0}, "out_channels >= 1"),
    ({"op": "conv2d", "in_shape": (1, 3, 8, 8), "out_channels": 4, "out_shape": (1, 4, 7, 7)}, "differs from computed"),
    ({"op": "linear", "in_shape": (1, 4), "out_channels": 2, "w_bits": 64}, "bits must be <= 32"),
    ({"op": "linear", "in_shape": (1, 4), "out_channels": 2, "rank": 0}, "rank=0"),
    ({"op": "activation", "in_shape": (1, 4), "rank": 2}, "rank is only meaningful"),
    ({"op": "add", "in_shape": (1, 0, 4)}, "positive sizes"),
    ({"op": "linear", "in_shape": (1, 4), "out_channels": 2, "stride": (1, 2, 3)}, "stride="),
])
def test_validation_errors(kw: dict[str, object], match: str) -> None:
    with pytest.raises(WorkloadError, match=match) as ei:
        LayerSpec(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(ei.value)


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(WorkloadError, match=r"unknown LayerSpec field\(s\) \['kernal'\]"):
        LayerSpec.from_dict({**CONV.to_dict(), "kernal": [3, 3]})


# ------------------------------------------------------------------------------------ building
ALL_KINDS = [
    CONV,
    LayerSpec("conv2d", (2, 8, 15, 15), out_channels=8, kernel=3, stride=2, padding=1, groups=8),
    LayerSpec("conv2d", (1, 4, 16, 16), out_channels=6, kernel=(3, 5), padding=(2, 4), dilation=2, bias=True),
    CONV.replace(rank=4),
    LayerSpec("linear", (4, 32), out_channels=10, bias=True),
    LayerSpec("linear", (2, 7, 32), out_channels=10),
    LayerSpec("linear", (4, 32), out_channels=10, rank=5, bias=True),
    LayerSpec("matmul", (6, 12), out_channels=5),
    LayerSpec("matmul", (3, 6, 12), out_channels=5),
    LayerSpec("batchnorm", (2, 8, 4, 4)),
    LayerSpec("batchnorm", (2, 8)),
    *[LayerSpec("activation", (1, 4, 5, 5), variant=v) for v in ("relu", "relu6", "gelu", "silu", "sigmoid",
                                                                 "tanh", "hardswish", "hardsigmoid")],
    LayerSpec("pooling", (1, 4, 8, 8), (1, 4, 4, 4), kernel=2, stride=2, variant="max"),
    LayerSpec("pooling", (1, 4, 9, 9), (1, 4, 5, 5), kernel=3, stride=2, padding=1, variant="avg"),
    LayerSpec("pooling", (1, 4, 8, 8), (1, 4, 1, 1), variant="adaptive_avg"),
    LayerSpec("add", (2, 4, 3, 3)),
    LayerSpec("other", (2, 12), (2, 6), variant="softmax"),
    LayerSpec("conv2d", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1, dtype="bfloat16"),
]


@pytest.mark.parametrize("spec", ALL_KINDS, ids=lambda s: f"{s.op}-{s.variant or s.dtype}-{s.in_shape}")
def test_build_layer_runs_and_matches_out_shape(spec: LayerSpec) -> None:
    mod = build_layer(spec)
    inputs = make_inputs(spec)
    assert all(x.dtype == getattr(torch, spec.dtype) for x in inputs)
    with torch.no_grad():
        out = mod(*inputs)
    assert tuple(out.shape) == spec.out_shape
    assert out.dtype == getattr(torch, spec.dtype)
    assert not mod.training


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_every_extracted_spec_builds_to_its_shape(name: str, workloads: dict[str, tuple[nn.Module, Workload]]
                                                  ) -> None:
    _, wl = workloads[name]
    for s in {s.key: s for s in wl.layers}.values():
        with torch.no_grad():
            out = build_layer(s)(*make_inputs(s))
        assert tuple(out.shape) == s.out_shape, s


@pytest.mark.parametrize("spec", [s for s in ALL_KINDS if s.op in ("conv2d", "linear")],
                         ids=lambda s: f"{s.op}-r{s.rank}-g{s.groups}-{s.in_shape}")
def test_params_and_macs_match_the_built_module(spec: LayerSpec) -> None:
    mod = build_layer(spec).float()
    assert spec.params == sum(p.numel() for p in mod.parameters())
    inputs = tuple(x.float() for x in make_inputs(spec))
    assert _flops(mod, inputs) == 2 * spec.macs


def test_low_rank_params_and_macs_by_hand() -> None:
    r = 4
    low = CONV.replace(rank=r)  # 3x3 conv 8->4, then 1x1 conv 4->16, at 16x16
    assert low.params == 9 * 8 * r + r * 16
    assert low.macs == 16 * 16 * (9 * 8 * r + r * 16)
    assert low.macs < CONV.macs and low.out_shape == CONV.out_shape
    lin = LayerSpec("linear", (3, 100), out_channels=50, rank=10)
    assert lin.params == 10 * (100 + 50) and lin.macs == 3 * 10 * 150


def test_bytes_moved_follow_dtype_and_bits() -> None:
    fp16 = CONV.replace(dtype="float16")
    assert fp16.bytes_moved * 2 == CONV.bytes_moved
    w8 = CONV.replace(w_bits=8)
    assert CONV.bytes_moved - w8.bytes_moved == CONV.params * 3
    assert CONV.bytes_moved == 4 * (CONV.in_elements + CONV.out_elements + CONV.params)
    assert CONV.arithmetic_intensity == CONV.macs / CONV.bytes_moved


def test_make_inputs_is_seeded() -> None:
    (a,) = make_inputs(CONV, seed=1)
    (b,) = make_inputs(CONV, seed=1)
    (c,) = make_inputs(CONV, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pooling_shape_is_derived_and_impossible_pooling_rejected() -> None:
    from hwloop.errors import WorkloadError
    from hwloop.workload import LayerSpec

    assert LayerSpec("pooling", (1, 8, 8, 8), kernel=2, stride=2, variant="max").out_shape == (1, 8, 4, 4)
    with pytest.raises(WorkloadError, match="does not fit input"):
        LayerSpec("pooling", (1, 8, 2, 2), kernel=5, variant="max")
