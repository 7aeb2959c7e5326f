"""Cross-check the asic cost model against the published ZigZag simulator, layer by layer (issue 14).

ZigZag (KU Leuven, PyPI ``zigzag-dse``; an optional extra: ``pip install -e '.[zigzag]'``) costs each
layer alone, so hwloop is run in its isolated-layer mode (``keep_activations_on_chip = false``:
every layer reads its input from and writes its output to DRAM) on a ZigZag-like spec taken from
ZigZag's own ``inputs/hardware/tpu_like.yaml``: a 32×32 weight-stationary array of 8-bit PEs without
low-bit packing, 128 B of weight registers per PE (128 KiB in all), a 2 MiB activation SRAM
(``sram_2MB``: 16,777,216 bits) and a 64-bit-per-cycle DRAM port with 1 cycle of latency; no per-op
overhead (ZigZag has none). The clock is 1 GHz so that hwloop's ns are ZigZag's cycles.

For the conv/linear layers of ResNet-18 (224×224), ResNet-20, VGG-16 and MobileNetV2 (32×32) at
W8A8 and W4A4 it prints, per network and bit-width, the Spearman rank correlation and the median
|log(hwloop / ZigZag)| of per-layer cycles, and the pooled figures. ZigZag's result is its
``latency_total2`` (computation plus data on- and off-loading) for the best mapping LOMA finds
(``--lpf`` sets LOMA's loop-prime-factor limit). Results are checkpointed to ``--out`` (JSON) after
every layer, so a rerun resumes. ZigZag's pickle and JSON dumps are not used (nothing is unpickled).

Usage:
    nice env OMP_NUM_THREADS=1 python benchmarks/zigzag_crosscheck.py --out measurements/asic/zigzag_crosscheck.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.devices.asic import AcceleratorSpec, cost_layers
from hwloop.workload import LayerSpec

#: hwloop's reading of zigzag/inputs/hardware/tpu_like.yaml (see the module docstring).
ZIGZAG_LIKE = AcceleratorSpec(
    rows=32, cols=32, dataflow="weight_stationary", pe_bits=8, pack_low_bits=False, max_pack=1,
    clock_mhz=1000.0, weight_buffer_kib=128.0, input_buffer_kib=1024.0, output_buffer_kib=1024.0,
    double_buffer=True, dram_gbps=8.0, dram_latency_ns=1.0, op_overhead_cycles=0.0,
    keep_activations_on_chip=False, name="zigzag-tpu-like")
NETWORKS = ("resnet18", "resnet20", "vgg16", "mobilenetv2")


def network_layers(name: str) -> list[LayerSpec]:
    """The conv/linear layers of one network (ResNet-18 at 224×224, the others at 32×32)."""
    if name == "resnet18":
        from hwloop.devices.asic.reference import resnet18_conv_layers

        return resnet18_conv_layers()
    from hwloop.models import ModelRef
    from hwloop.workload import extract_layers

    ref = ModelRef(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [s for s in extract_layers(ref.build(), ref.example_input()) if s.op in ("conv2d", "linear")]


def zigzag_layer(spec: LayerSpec, w_bits: int, a_bits: int) -> dict[str, Any]:
    """ZigZag's user-format layer (as its ONNX parser builds it) for one conv/linear spec."""
    psum = 16 if max(w_bits, a_bits) <= 8 else 32
    prec = {"W": w_bits, "I": a_bits, "O": psum, "O_final": a_bits}
    if spec.op == "linear":
        return {"id": 0, "name": spec.name or "fc", "operator_type": "Gemm", "equation": "O[b][k]+=W[k][c]*I[b][c]",
                "loop_dims": ["B", "K", "C"], "loop_sizes": [spec.batch, spec.out_channels, spec.in_channels],
                "operand_precision": prec, "operand_source": {"W": 0, "I": 0}}
    g = spec.groups
    b, cin, ih, iw = spec.in_shape
    oh, ow = spec.out_shape[2:]
    return {"id": 0, "name": spec.name or "conv", "operator_type": "Conv",
            "equation": "O[b][g][k][oy][ox]+=W[g][k][c][fy][fx]*I[b][g][c][iy][ix]",
            "loop_dims": ["B", "K", "G", "OX", "OY", "C", "FX", "FY"],
            "loop_sizes": [b, spec.out_channels // g, g, ow, oh, cin // g, spec.kernel[1], spec.kernel[0]],
            "dimension_relations": [f"ix={spec.stride[1]}*ox+{spec.dilation[1]}*fx",
                                    f"iy={spec.stride[0]}*oy+{spec.dilation[0]}*fy"],
            "operand_precision": prec, "operand_source": {"W": 0, "I": 0},
            "pr_loop_dims": ["IX", "IY"], "pr_loop_sizes": [iw, ih],
            "padding": [[spec.padding[1], spec.padding[1]], [spec.padding[0], spec.padding[0]]]}


def zigzag_cycles(spec: LayerSpec, w_bits: int, a_bits: int, lpf: int) -> float:
    """ZigZag's latency (cycles, ``latency_total2``) of one layer alone on its TPU-like accelerator.

    (Turning on ZigZag's mixed spatial-mapping generation gave the same cycles on all 220 layer costings:
    the mapping file fixes the K × C unrolling.)"""
    import zigzag
    from zigzag.mapping.temporal_mapping import TemporalMappingType
    from zigzag.stages.evaluation.cost_model_evaluation import CostModelStage
    from zigzag.stages.main import MainStage
    from zigzag.stages.mapping.spatial_mapping_generation import SpatialMappingGeneratorStage
    from zigzag.stages.mapping.temporal_mapping_generator_stage import TemporalMappingGeneratorStage
    from zigzag.stages.parser.accelerator_parser import AcceleratorParserStage
    from zigzag.stages.parser.workload_parser import WorkloadParserStage
    from zigzag.stages.results.reduce_stages import MinimalLatencyStage
    from zigzag.stages.workload_iterator import WorkloadStage

    root = Path(zigzag.__file__).parent / "inputs"
    stages = [WorkloadParserStage, AcceleratorParserStage, WorkloadStage, MinimalLatencyStage,
              SpatialMappingGeneratorStage, MinimalLatencyStage, TemporalMappingGeneratorStage, CostModelStage]
    with tempfile.TemporaryDirectory() as tmp:
        main = MainStage(list_of_callables=stages, accelerator=str(root / "hardware" / "tpu_like.yaml"),
                         workload=[zigzag_layer(spec, w_bits, a_bits)],
                         mapping=str(root / "mapping" / "tpu_like.yaml"), dump_folder=tmp,
                         loma_lpf_limit=lpf, loma_show_progress_bar=False, nb_mappings_generated=3,
                         enable_mix_spatial_mapping_generation=False,
                         access_same_data_considered_as_no_access=True,
                         temporal_mapping_type=TemporalMappingType("uneven"))
        cmes = main.run()
    return float(cmes[0][0].latency_total2)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def summarize(rows: list[dict[str, Any]], spec_key: str = "hwloop") -> list[tuple[str, int, float, float]]:
    out = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['net']} W{r['w']}A{r['a']}", []).append(r)
    groups["all (pooled)"] = list(rows)
    for k, rs in groups.items():
        h = np.array([r[spec_key] for r in rs])
        z = np.array([r["zigzag"] for r in rs])
        out.append((k, len(rs), spearman(h, z), float(np.median(np.abs(np.log(h / z))))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="measurements/asic/zigzag_crosscheck.json")
    ap.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--lpf", type=int, default=4,
                    help="LOMA loop-prime-factor limit (ZigZag's API default is 6; 4 found the same cycles on the "
                         "layers checked and is much faster)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    from tqdm import tqdm

    path = Path(args.out)
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        done = {r["key"]: r for r in json.loads(path.read_text())["rows"]}
    from hwloop.devices.profiles import load_profile

    tpu = AcceleratorSpec.from_dict(load_profile("asic-tpu32").spec).replace(keep_activations_on_chip=False)
    jobs = [(net, s, w) for net in args.nets for s in network_layers(net) for w in (8, 4)]
    t0 = time.perf_counter()
    for net, s, bits in tqdm(jobs, desc="zigzag layers"):
        key = f"{net}|{s.name}|{bits}"
        if key in done:
            continue
        spec = s.replace(w_bits=bits, a_bits=bits)
        hw = cost_layers([spec], ZIGZAG_LIKE)[0].cycles
        tp = cost_layers([spec], tpu)[0].cycles
        zz = zigzag_cycles(spec, bits, bits, args.lpf)
        done[key] = {"key": key, "net": net, "layer": s.name, "w": bits, "a": bits, "macs": spec.macs,
                     "hwloop": hw, "hwloop_tpu32_isolated": tp * ZIGZAG_LIKE.clock_mhz / tpu.clock_mhz,
                     "zigzag": zz}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spec": ZIGZAG_LIKE.to_dict(), "lpf": args.lpf,
                                    "rows": list(done.values())}, indent=1) + "\n")
    rows = [r for r in done.values() if r["net"] in args.nets]
    dw = {f"{net}|{s.name}" for net in args.nets for s in network_layers(net) if 1 < s.groups == s.in_channels}
    print(f"# ZigZag cross-check: {len(rows)} layer costings ({time.perf_counter() - t0:.0f} s this run)\n")
    print("| network, bits | layers | Spearman | median abs log ratio |")
    print("|---|---|---|---|")
    for k, n, rho, mlr in summarize(rows):
        print(f"| {k} | {n} | {rho:.3f} | {mlr:.3f} |")
    no_dw = [r for r in rows if f"{r['net']}|{r['layer']}" not in dw]
    print(f"\nwithout the {len(rows) - len(no_dw)} depthwise-conv costings:")
    for k, n, rho, mlr in summarize(no_dw):
        print(f"| {k} | {n} | {rho:.3f} | {mlr:.3f} |")
    print("\nasic-tpu32 itself (isolated mode, cycles rescaled to 1 GHz, packing on) against the same ZigZag runs:")
    for k, n, rho, mlr in summarize(rows, "hwloop_tpu32_isolated"):
        if k == "all (pooled)":
            print(f"| {k} | {n} | {rho:.3f} | {mlr:.3f} |")
    ratios = np.array([r["hwloop"] / r["zigzag"] for r in rows])
    print(f"\nhwloop/ZigZag ratio: min {ratios.min():.2f}, median {np.median(ratios):.2f}, max {ratios.max():.2f}; "
          f"worst layers: " + ", ".join(
              f"{r['net']}:{r['layer']}@{r['w']}b {r['hwloop'] / r['zigzag']:.2f}x"
              for r in sorted(rows, key=lambda r: -abs(math.log(r['hwloop'] / r['zigzag'])))[:5]))


if __name__ == "__main__":
    main()
