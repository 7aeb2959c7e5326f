"""One latency per network on the asic device (issue 14): the layer-by-layer path, the whole-model
path (TVM) and the search's ``measure_compressed`` agree, and match a cycle count worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hwloop.compress import CompressionPlan, from_plan
from hwloop.devices import MeasureRequest
from hwloop.devices.asic import AcceleratorSpec, AsicDevice, cost_graph, cost_layers
from hwloop.devices.profiles import load_profile
from hwloop.models import BUILTIN_MODELS, ModelRef
from hwloop.search.report import measure_compressed
from hwloop.workload import LayerSpec, extract_layers

tvm = pytest.importorskip("tvm")

TPU = load_profile("asic-tpu32")
SHIPPED = {p: AcceleratorSpec.from_dict(load_profile(p).spec) for p in ("asic-tpu32", "asic-eyeriss")}


def _specs(ref: ModelRef) -> list[LayerSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [s for s in extract_layers(ref.build(), ref.example_input()) if s.op != "other"]


def _at_bits(specs: list[LayerSpec], w: int, a: int) -> list[LayerSpec]:
    return [s.replace(w_bits=w if s.op in ("conv2d", "linear") else None, a_bits=a, out_shape=s.out_shape)
            for s in specs]


# --------------------------------------------------------------------------- a net costed by hand
class HandNet(nn.Module):
    """conv 3->16 + BN + ReLU, conv 16->16 + BN, + residual, ReLU, global average pool, linear 16->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(z), 1))


def hand_net() -> nn.Module:
    return HandNet()


# asic-tpu32 at W8A8, worked out by hand (not with the cost model's code):
#   32x32 weight-stationary array, 1 MAC per PE at 8 bits; DRAM 12.8 GB/s at 700 MHz = 128/7 B/cycle,
#   latency 100 ns = 70 cycles; op overhead 32 cycles; vector unit 32 ops/cycle. Every activation
#   (at most 16x8x8 = 1 KiB) fits the 128 KiB on-chip capacity: no activation touches DRAM.
#   A fold streams M rows + fill/drain 32 + 32 - 2 = 62; the first weight load takes 32 (rows) cycles.
#   Per output channel 8 B of epilogue parameters (int32 bias + requantisation scale). Each fused
#   epilogue stage (BN, residual add, ReLU) adds 1 cycle of pipeline latency.
# conv1 (+bn1+relu): M = 8*8 = 64, K = 3*9 = 27, N = 16 -> 1 fold of 64 + 62 = 126 cycles
#   compute = 126 + 32 = 158; DRAM = 432 B weights + 128 B parameters = 560 B = 560*7/128 = 30.625 cycles
#   memory = 30.625 + 70 = 100.625; first fold's load = (432 + 128)*7/128 + 70 = 100.625
#   cycles = max(158 + 100.625, 100.625 + 126) + 32 = 258.625 + 32 = 290.625, + 2 stages (BN, ReLU)
CONV1 = 292.625
# conv2 (+bn2+residual add+relu): M = 64, K = 16*9 = 144, N = 16 -> ceil(144/32) = 5 folds
#   compute = 5*126 + 32 = 662; DRAM = 2304 + 128 = 2432 B = 133 cycles; memory = 203
#   first fold's load = (min(2304, 32*32) + 128)*7/128 + 70 = 63 + 70 = 133
#   cycles = max(662 + 133, 203 + 126) + 32 = 827, + 3 stages (BN, add, ReLU) = 830
#   (the residual y is on chip: no extra traffic)
CONV2 = 830.0
# global average pool: 16*64 = 1024 adds / 32 per cycle = 32, on chip (no DRAM, no latency) + 32
POOL = 64.0
# fc: M = 1, K = 16, N = 10; two 16-row blocks of K fit 32 rows, so the one group needs 1 fold of
#   1 + 62 = 63 cycles; compute = 63 + 32 = 95; DRAM = 160 + 80 = 240 B = 13.125 cycles
#   first fold's load = 240*7/128 + 70 = 83.125; cycles = max(95 + 83.125, 83.125 + 63) + 32 = 210.125
FC = 210.125
HAND_CYCLES = CONV1 + CONV2 + POOL + FC  # = 1396.75


def test_three_paths_equal_a_hand_computed_cycle_count() -> None:
    assert HAND_CYCLES == 1396.75
    hand_ms = HAND_CYCLES / 700e3
    dev = AsicDevice("asic-tpu32", spec=TPU.spec)
    ref = ModelRef("tests.test_asic_consistency:hand_net", input_shape=(3, 8, 8), allow_import=True)
    model = dev.measure([MeasureRequest.for_model(ref, per_layer=True)])[0]
    assert model.ok, model.error
    specs = _specs(ref)
    layers = dev.measure([MeasureRequest.for_layer(s) for s in specs])
    net = HandNet().eval()
    mc = measure_compressed(dev, net, None, example=torch.randn(1, 3, 8, 8))
    assert model.extra["cycles"] == pytest.approx(HAND_CYCLES, abs=1e-6)
    assert model.latency_ms == pytest.approx(hand_ms, rel=1e-9)
    assert sum(r.latency_ms for r in layers) == pytest.approx(hand_ms, rel=1e-9)
    assert mc["latency_ms"] == pytest.approx(hand_ms, rel=1e-9) and mc["method"] == "layers"
    # per op: the model path's four ops carry the hand numbers (BN, ReLU and the add are in the convs)
    per = {k: v * 700e3 for k, v in model.per_layer_ms.items() if v > 0}
    assert per == pytest.approx({"conv1": CONV1, "conv2": CONV2, "pool_1": POOL, "fc": FC})
    # layer by layer the conv specs carry no stages; the BN/ReLU/add specs carry one cycle each
    by_op = {s.op: 0.0 for s in specs}
    for s, r in zip(specs, layers):
        by_op[s.op] += r.extra["cycles"]
    assert by_op == pytest.approx({"conv2d": CONV1 + CONV2 - 5, "batchnorm": 2, "activation": 2, "add": 1,
                                   "pooling": POOL, "linear": FC})


# --------------------------------------------------------------------------- every built-in model
@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_layer_path_equals_model_path_on_builtins(name: str) -> None:
    from hwloop.devices.asic.frontend import lower_model

    ref = ModelRef(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = lower_model(ref)
    specs = _specs(ref)
    for acc in SHIPPED.values():
        for w, a in ((8, 8), (4, 4)):
            model_c = cost_graph(graph.with_bits(w, a), acc).cycles
            layer_c = sum(c.cycles for c in cost_layers(_at_bits(specs, w, a), acc))
            assert layer_c == pytest.approx(model_c, rel=0.01), (acc.name, w, a)


@pytest.mark.parametrize("name,bits", [("resnet20", 8), ("resnet20", 4), ("mobilenetv2", 4)])
def test_measure_compressed_equals_the_device_model_request(name: str, bits: int) -> None:
    dev = AsicDevice("asic-tpu32", spec=TPU.spec, default_bits={"w": bits, "a": bits})
    ref = ModelRef(name)
    model_ms = dev.measure([MeasureRequest.for_model(ref)])[0].latency_ms
    gemms = [s.name for s in _specs(ref) if s.op in ("conv2d", "linear")]
    plan = CompressionPlan(base={"name": name}, w_bits={n: bits for n in gemms}, a_bits=bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mc = measure_compressed(dev, from_plan(plan.to_dict()), plan)
    assert mc["latency_ms"] == pytest.approx(model_ms, rel=0.01)


def test_unfused_spec_reproduces_separate_vector_ops() -> None:
    """The "before" semantics stay available as spec settings, and both paths still agree there."""
    from hwloop.devices.asic.frontend import lower_model

    ref = ModelRef("resnet20")
    before = SHIPPED["asic-tpu32"].replace(fused_epilogue=False, keep_activations_on_chip=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = lower_model(ref, epilogue=False)
    specs = _specs(ref)
    model_c = cost_graph(graph, before).cycles
    layer_c = sum(c.cycles for c in cost_layers(_at_bits(specs, 8, 8), before))
    assert layer_c == pytest.approx(model_c, rel=0.01)
    after = sum(c.cycles for c in cost_layers(_at_bits(specs, 8, 8), SHIPPED["asic-tpu32"]))
    assert after < 0.8 * layer_c


# --------------------------------------------------------------------------- pruning never raises cycles
def _grid(spec: LayerSpec, cins: np.ndarray, couts: np.ndarray) -> list[LayerSpec]:
    out = []
    for ci in cins:
        for co in couts:
            shape = (spec.in_shape[0], int(ci)) + spec.in_shape[2:]
            out.append(spec.replace(in_shape=shape, out_channels=int(co)))
    return out


@pytest.mark.parametrize("profile", sorted(SHIPPED))
def test_pruning_never_raises_cycles_exhaustive(profile: str) -> None:
    """Every input x output width of every distinct conv/linear of ResNet-20 and SmallCNN (and every
    depthwise width of MobileNetV2's distinct depthwise convs), at W8A8, W4A8 and W4A4: removing one
    channel never raises the cycles."""
    acc = SHIPPED[profile]
    layers: dict[tuple, LayerSpec] = {}
    for name in ("resnet20", "small_cnn"):
        for s in _specs(ModelRef(name)):
            if s.op in ("conv2d", "linear"):
                layers.setdefault(s.replace(name="").key, s)
    dw = {s.replace(name="").key: s for s in _specs(ModelRef("mobilenetv2", {"width_mult": 0.5}))
          if s.op == "conv2d" and s.groups > 1}
    n_costed = 0
    for w, a in ((8, 8), (4, 8), (4, 4)):
        for s in layers.values():
            cins, couts = np.arange(1, s.in_channels + 1), np.arange(1, s.out_channels + 1)
            grid = _grid(s.replace(w_bits=w, a_bits=a), cins, couts)
            cyc = np.array([c.cycles for c in cost_layers(grid, acc)]).reshape(len(cins), len(couts))
            n_costed += cyc.size
            assert (np.diff(cyc, axis=0) >= -1e-9).all(), (s.name, w, a, "input channels")
            assert (np.diff(cyc, axis=1) >= -1e-9).all(), (s.name, w, a, "output channels")
        for s in dw.values():
            grid = [s.replace(in_shape=(1, g) + s.in_shape[2:], out_channels=g, groups=g, w_bits=w, a_bits=a)
                    for g in range(1, s.in_channels + 1)]
            cyc = np.array([c.cycles for c in cost_layers(grid, acc)])
            n_costed += cyc.size
            assert (np.diff(cyc) >= -1e-9).all(), (s.name, w, a, "depthwise channels")
    assert n_costed == 46_368  # costings per profile (both profiles: 92,736)
