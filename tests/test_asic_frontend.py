"""The asic TVM front end: patterns match every conv/linear, MACs agree with TVM's TIR estimate."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import require_tvm

from hwloop.errors import WorkloadError
from hwloop.models import BUILTIN_MODELS, ModelRef
from hwloop.workload import extract_workload

pytestmark = require_tvm


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _lower(ref: ModelRef):  # type: ignore[no-untyped-def]
    from hwloop.devices.asic.frontend import import_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_model(ref)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_every_conv_and_linear_of_builtins_is_matched(name: str) -> None:
    from hwloop.devices.asic.frontend import graph_from_relax, partition

    kwargs = {"width_mult": 0.5} if name in ("vgg16", "mobilenetv2", "resnet56") else {}
    ref = ModelRef(name, kwargs)
    mod, names = _lower(ref)
    graph = graph_from_relax(partition(mod), names, name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wl = extract_workload(ref.build(), ref.example_input())
    gemms = [s for s in wl.layers if s.op in ("conv2d", "linear")]
    # every conv/linear became an accelerator op matched by a pattern: no silent host fallback
    assert len(graph.array_ops) == len(gemms)
    assert all(op.pattern.startswith("hwloop_asic.") for op in graph.array_ops)
    assert graph.host_ops == ()
    # names map back to the torch modules, each with its MACs (a conv that absorbs a residual add
    # sits where the add was, so the order may differ from the export's)
    assert {op.name: op.macs for op in graph.array_ops} == {s.name: s.macs for s in gemms}
    # and the fused epilogue leaves no BN, ReLU or add on the vector unit
    assert not any(op.kind == "eltwise" for op in graph.ops)
    # batch norm and activations are folded into the conv ops, not left on the vector unit
    assert not any(op.kind == "eltwise" and op.fused == ("batch_norm",) for op in graph.ops)
    if name == "mobilenetv2":
        assert any(op.kind == "depthwise" for op in graph.ops)


@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "mobilenetv2"])
def test_macs_equal_tvm_tir_flop_estimate(name: str) -> None:
    from hwloop.devices.asic.frontend import graph_from_relax, partition, tir_gemm_macs

    ref = ModelRef(name, {"width_mult": 0.5} if name == "mobilenetv2" else {})
    mod, names = _lower(ref)
    graph = graph_from_relax(partition(mod, epilogue=False), names)  # unfused: the call order is kept
    tir = tir_gemm_macs(mod)
    assert len(tir) == len(graph.array_ops) > 0
    assert tir == [op.macs for op in graph.array_ops]
    fused = graph_from_relax(partition(mod), names)
    assert sorted(tir) == sorted(op.macs for op in fused.array_ops)


class _Mixed(torch.nn.Module):
    """Conv with bias + hardswish, a sigmoid gate, avg pool, linear+relu and an activation matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, bias=True)
        self.act = torch.nn.Hardswish()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y = torch.sigmoid(y) * y
        y = torch.nn.functional.avg_pool2d(y, 2).mean((2, 3))
        z = torch.relu(self.fc(y))
        return z.unsqueeze(-1) @ z.unsqueeze(-2)


def mixed() -> torch.nn.Module:
    return _Mixed()


def test_patterns_on_a_mixed_model() -> None:
    from hwloop.devices.asic.frontend import lower_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = lower_model(ModelRef("tests.test_asic_frontend:mixed", input_shape=(3, 10, 10), batch=2, allow_import=True))
    by_kind = {}
    for op in g.ops:
        by_kind.setdefault(op.kind, []).append(op)
    conv = by_kind["conv2d"][0]
    assert conv.name == "conv" and "bias" in conv.pattern and conv.bias_elems == 8
    assert by_kind["dense"][0].pattern == "hwloop_asic.dense.dense_bias_relu"
    assert by_kind["dense"][0].name == "fc"
    mm = by_kind["matmul"][0]
    assert (mm.groups, mm.m, mm.k, mm.n) == (2, 4, 1, 4)
    # sigmoid has no vector-unit implementation: it runs on the host, and the graph says so
    assert [op.fused for op in g.host_ops] == [("sigmoid",)]
    assert g.meta["host_ops"] == ["sigmoid"]
    assert {op.kind for op in g.ops} >= {"pool", "eltwise", "view"}
    assert g.macs == sum(op.macs for op in g.array_ops) > 0


def test_residual_add_is_not_taken_for_a_bias() -> None:
    from hwloop.devices.asic.frontend import lower_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = lower_model(ModelRef("resnet20", {"widths": [8, 8, 8]}))
        unfused = lower_model(ModelRef("resnet20", {"widths": [8, 8, 8]}), epilogue=False)
    convs = [op for op in g.array_ops if op.kind == "conv2d"]
    # each block's residual add (+relu) runs in the output pipeline of one of its convs, reading the
    # other branch as a residual operand; nothing is left for the vector unit but the pool
    res = [op for op in convs if "_res" in op.pattern]
    assert len(res) == 9 and all(op.residual_elems == op.out_elems for op in res)
    assert all(op.pattern.endswith("_relu") for op in res)
    assert not any("bias" in op.pattern for op in convs)  # a residual is never taken for a bias
    assert [op.kind for op in g.ops if op.kind not in ("conv2d", "dense", "view")] == ["pool"]
    # conv + BN ops count the output tensor only, not BN's mean and variance
    assert all(op.out_elems == op.batch * op.out_h * op.out_w * op.n * op.groups for op in convs)
    # without a fused epilogue BN, the add and each ReLU are vector-unit ops again
    kinds = [op.fused for op in unfused.ops if op.kind == "eltwise"]
    assert kinds.count(("batch_norm",)) == 21 and kinds.count(("add",)) == 9 and kinds.count(("relu",)) == 19
    assert sum(op.macs for op in unfused.ops) == sum(op.macs for op in g.ops)


def test_strided_one_by_one_conv_reads_only_the_pixels_it_uses() -> None:
    from hwloop.devices.asic.frontend import lower_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = lower_model(ModelRef("resnet20"))
    short = {op.name: op for op in g.array_ops}["layers.3.shortcut.0"]
    # 1x1 stride 2 on 16x32x32: a quarter of the input (16x16x16) is read
    assert (short.in_elems, short.read_elems) == (16 * 32 * 32, 16 * 16 * 16)
    conv = {op.name: op for op in g.array_ops}["layers.3.conv1"]  # 3x3 stride 2 pad 1 touches every pixel
    assert conv.read_elems == conv.in_elems == 16 * 32 * 32


def test_unimportable_model_is_a_workload_error() -> None:
    from hwloop.devices.asic.frontend import lower_model

    with pytest.raises(WorkloadError, match="no ops"):
        lower_model(ModelRef("torch.nn:Identity", input_shape=(3, 4, 4), allow_import=True))
    with pytest.raises(WorkloadError, match="needs a ModelRef"):
        lower_model("resnet20")  # type: ignore[arg-type]
