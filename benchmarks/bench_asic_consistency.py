"""One latency per network on the asic device (issue 14): the three paths, the fused share, the cut.

1. For every built-in model × {W8A8, W4A4} on each shipped asic profile: the whole-model path
   (a ``model`` request: torch.export → Relax → patterns → op graph), the layer-by-layer path (one
   ``layer`` request per extracted op, summed) and the search's ``measure_compressed`` (a plan
   quantizing every conv/linear); the largest relative difference.
2. ResNet-20's BN/ReLU/add share of the layer-path time and the uniform width a 50% cut needs at
   W4A4, before (the spec with ``fused_epilogue = false``, ``keep_activations_on_chip = false`` and
   the old 300-cycle op overhead) and after (the shipped spec).
3. Packing on and off: what 4-bit weights gain with and without the spec's low-bit packing.

Usage:
    nice env OMP_NUM_THREADS=1 python benchmarks/bench_asic_consistency.py [--profiles asic-tpu32 asic-eyeriss]
"""

from __future__ import annotations

import argparse
import time
import warnings

from hwloop.compress import CompressionPlan, from_plan
from hwloop.devices import MeasureRequest
from hwloop.devices.asic import AcceleratorSpec, AsicDevice, cost_layers
from hwloop.devices.profiles import load_profile
from hwloop.models import BUILTIN_MODELS, ModelRef
from hwloop.search.report import measure_compressed
from hwloop.workload import LayerSpec, extract_layers


def _specs(ref: ModelRef) -> list[LayerSpec]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [s for s in extract_layers(ref.build(), ref.example_input()) if s.op != "other"]


def _at_bits(specs: list[LayerSpec], w: int, a: int, *, side_a: bool = True) -> list[LayerSpec]:
    """``w``/``a`` bits on conv/linear; ``a`` on the other ops too unless ``side_a`` is False (then they
    stay at 8 bits, as ``measure_compressed`` sent them before issue 14)."""
    gemm = ("conv2d", "linear")
    return [s.replace(w_bits=w if s.op in gemm else None, a_bits=a if (side_a or s.op in gemm) else None,
                      out_shape=s.out_shape) for s in specs]


def three_paths(profiles: list[str]) -> None:
    print("## Layer path = model path = measure_compressed (ms; max |rel diff|)\n")
    print("| profile | model | bits | model path | layer path | measure_compressed | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for prof in profiles:
        spec = load_profile(prof).spec
        for name in sorted(BUILTIN_MODELS):
            ref = ModelRef(name)
            specs = _specs(ref)
            gemms = [s.name for s in specs if s.op in ("conv2d", "linear")]
            for bits in (8, 4):
                dev = AsicDevice(prof, spec=spec, default_bits={"w": bits, "a": bits})
                model_ms = dev.measure([MeasureRequest.for_model(ref)])[0].latency_ms
                layer_ms = sum(r.latency_ms for r in dev.measure([MeasureRequest.for_layer(s)
                                                                   for s in _at_bits(specs, bits, bits)]))
                plan = CompressionPlan(base={"name": name}, w_bits={n: bits for n in gemms}, a_bits=bits)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mc = measure_compressed(dev, from_plan(plan.to_dict()), plan)["latency_ms"]
                diff = max(abs(layer_ms / model_ms - 1), abs(mc / model_ms - 1))
                worst = max(worst, diff)
                print(f"| {prof} | {name} | W{bits}A{bits} | {model_ms:.4f} | {layer_ms:.4f} | {mc:.4f} | {diff:.1e} |")
    print(f"\nlargest relative difference over all rows: {worst:.1e}\n")


def _resnet20(width: float) -> list[LayerSpec]:
    ws = [max(1, round(c * width)) for c in (16, 32, 64)]
    return _specs(ModelRef("resnet20", {"widths": ws}))


def _cycles(specs: list[LayerSpec], acc: AcceleratorSpec, w: int, a: int, side_a: bool = True) -> float:
    return sum(c.cycles for c in cost_layers(_at_bits(specs, w, a, side_a=side_a), acc))


def cut_width(acc: AcceleratorSpec, full_w8: float, side_a: bool = True) -> float:
    """The largest uniform ResNet-20 width (0.01 steps, bisection) whose W4A4 layer-path latency is
    at most half the full-width W8A8 latency."""
    lo, hi = 0.05, 1.0
    cache: dict[float, float] = {}

    def ok(s: float) -> bool:
        if s not in cache:
            cache[s] = _cycles(_resnet20(s), acc, 4, 4, side_a)
        return cache[s] <= 0.5 * full_w8

    while hi - lo > 0.01:
        mid = round((lo + hi) / 2, 3)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def share_and_cut() -> None:
    shipped = AcceleratorSpec.from_dict(load_profile("asic-tpu32").spec, name="asic-tpu32")
    before = shipped.replace(fused_epilogue=False, keep_activations_on_chip=False, op_overhead_cycles=300.0)
    specs = _resnet20(1.0)
    print("## ResNet-20 on asic-tpu32: BN/ReLU/add share and the uniform width of a 50% cut (layer path)\n")
    print("| spec | W8A8 ms | BN/ReLU/add share W8A8 | share of stage 1 | W4A4 ms | width for a 50% cut at W4A4 |")
    print("|---|---|---|---|---|---|")
    rows = ((("before, as the search measured it (unfused, activations via DRAM, 300-cycle overhead, "
             "BN/ReLU/add/pool left at 8 bits)"), before, False),
            ("before, with BN/ReLU/add/pool at the plan's activation bits", before, True),
            ("after: shipped asic-tpu32", shipped, True))
    for label, acc, side_a in rows:
        costs = cost_layers(_at_bits(specs, 8, 8), acc)
        total = sum(c.cycles for c in costs)
        side = sum(c.cycles for s, c in zip(specs, costs) if s.op in ("batchnorm", "activation", "add"))
        st1 = [(s, c) for s, c in zip(specs, costs) if s.name.startswith(("conv1", "bn1", "relu", "layers.0",
                                                                          "layers.1", "layers.2"))]
        st1_side = sum(c.cycles for s, c in st1 if s.op in ("batchnorm", "activation", "add"))
        st1_total = sum(c.cycles for _, c in st1)
        w4 = _cycles(specs, acc, 4, 4, side_a)
        width = cut_width(acc, total, side_a)
        print(f"| {label} | {acc.cycles_to_ms(total):.4f} | {side / total:.1%} | {st1_side / st1_total:.1%} | "
              f"{acc.cycles_to_ms(w4):.4f} | {width:.2f} |")
    print()


def packing() -> None:
    shipped = AcceleratorSpec.from_dict(load_profile("asic-tpu32").spec, name="asic-tpu32")
    print("## Low-bit packing on and off (asic-tpu32, layer path, ms)\n")
    print("| model | W8A8 | W4A4 packing on | W4A4 packing off | 8->4-bit gain on | off |")
    print("|---|---|---|---|---|---|")
    for name in ("resnet20", "mobilenetv2", "vgg16"):
        specs = _specs(ModelRef(name))
        w8 = _cycles(specs, shipped, 8, 8)
        on = _cycles(specs, shipped, 4, 4)
        off = _cycles(specs, shipped.replace(pack_low_bits=False), 4, 4)
        print(f"| {name} | {shipped.cycles_to_ms(w8):.4f} | {shipped.cycles_to_ms(on):.4f} | "
              f"{shipped.cycles_to_ms(off):.4f} | {w8 / on:.2f}x | {w8 / off:.2f}x |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["asic-tpu32", "asic-eyeriss"])
    ap.add_argument("--skip-paths", action="store_true", help="only the share/cut and packing tables")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not args.skip_paths:
        three_paths(args.profiles)
    share_and_cut()
    packing()
    print(f"({time.perf_counter() - t0:.0f} s)")



if __name__ == "__main__":
    main()
