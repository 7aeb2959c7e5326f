"""The real H100 data (``../shared/data/h100``) in hwloop's own form: fingerprint, requests, results.

The data was measured by a standalone PyTorch script, not by hwloop's ``cuda`` backend (its README
states the timing method). :func:`read_h100` turns its four CSV files into ``(fingerprint, request,
result)`` triples a :class:`~hwloop.store.MeasurementStore` stores as they are:

* ``layers.csv`` → ``layer`` requests, eager (the four channel staircases and the random layers);
* ``net_layers.csv`` → ``layer`` requests, eager (each conv of the eager nets timed alone on its
  in-net input shape; another timing key than ``layers.csv``, 5 repeats instead of 7);
* ``nets.csv`` → ``model`` requests, eager; ``nets_graph.csv`` → ``model`` requests, ``cuda_graph``.

The fingerprint names what ``env.json`` and the README record — GPU, SM count, torch, CUDA, cuDNN,
``cudnn.benchmark`` and the TF32 settings (convolutions on, matmul off: PyTorch's defaults) — and the
driver as ``"unknown"`` (the script did not record it). Each result holds the median, minimum and
maximum over the repeats; the individual repeats were not recorded, so ``samples_ms`` holds those
three values and ``cv``/``iqr_ms`` are unknown (NaN). ``result.extra`` names the source file and row.

Architectures are hwloop's built-ins (:func:`hwloop.gpu_models.h100_model_ref_kwargs`): ``vgg16`` is
``vgg16_gap`` with ``widths``, ``resnet20`` is ``resnet20`` with ``mids``.

Example:
    >>> from hwloop.gpu_data import h100_fingerprint
    >>> fp = h100_fingerprint({"gpu": "NVIDIA H100 80GB HBM3", "sms": 132, "mem_gb": 79.2, "torch": "2.11.0+cu130",
    ...                        "cuda": "13.0", "cudnn": 91900, "recorded": "2026-11-22"})
    >>> fp.identity["driver"], fp.identity["cudnn_allow_tf32"], fp.identity["matmul_allow_tf32"]
    ('unknown', True, False)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import DataError, HwloopError
from hwloop.workload import LayerSpec

__all__ = ["H100_FILES", "H100_TIMING", "h100_fingerprint", "in_net_layer_name", "model_ref", "read_h100",
           "rebatch_workload"]

#: the files of the data set (in reading order: nets before their layers) and the columns each must have
H100_FILES: dict[str, tuple[str, ...]] = {
    "nets.csv": ("net", "arch", "widths", "batch", "dtype", "us_median", "us_min", "us_max"),
    "nets_graph.csv": ("net", "arch", "widths", "batch", "res", "dtype", "mode", "us_median", "us_min", "us_max"),
    "layers.csv": ("set", "op", "cin", "cout", "k", "stride", "h", "w", "groups", "batch", "dtype", "us_median",
                   "us_min", "us_max"),
    "net_layers.csv": ("net", "layer", "batch", "dtype", "cin", "cout", "k", "stride", "h", "w", "groups",
                       "us_median"),
}
#: the timing protocol of each file (README of the data set), as hwloop timing configs
H100_TIMING: dict[str, TimingConfig] = {
    "layers.csv": TimingConfig(warmup=10, repeats=7, number=30, mode="eager"),
    "net_layers.csv": TimingConfig(warmup=10, repeats=5, number=30, mode="eager"),
    "nets.csv": TimingConfig(warmup=10, repeats=7, number=20, mode="eager"),
    "nets_graph.csv": TimingConfig(warmup=5, repeats=7, number=20, mode="cuda_graph"),
}
_STAIRCASES = {(256, 3, 14, 1): "s1", (128, 3, 28, 32): "s2", (64, 3, 56, 1): "s3", (512, 1, 7, 32): "s4"}


def h100_fingerprint(env: Mapping[str, Any], name: str = "h100") -> DeviceFingerprint:
    """The device fingerprint of the data set from its ``env.json`` (keys as ``CudaDevice`` records them).

    Raises:
        DataError: a field of ``env.json`` is missing.
    """
    need = ("gpu", "sms", "torch", "cuda", "cudnn")
    missing = [k for k in need if k not in env]
    if missing:
        raise DataError(f"env.json lacks {', '.join(missing)}; it needs {', '.join(need)}")
    identity = {"gpu": str(env["gpu"]), "driver": "unknown", "cuda": str(env["cuda"]), "cudnn": int(env["cudnn"]),
                "torch": str(env["torch"]).split("+")[0], "cudnn_benchmark": True, "cudnn_allow_tf32": True,
                "matmul_allow_tf32": False, "timer": "standalone script (../shared/data/h100 README)"}
    info = {"sm_count": int(env["sms"]), "torch_build": str(env["torch"]), "recorded": env.get("recorded"),
            "info_source": "env.json of ../shared/data/h100; driver not recorded"}
    if "mem_gb" in env:
        info["memory_total_gb"] = float(env["mem_gb"])
    return DeviceFingerprint(name=name, backend="cuda", identity=identity, info=info)


def model_ref(arch: str, widths: Any, batch: int, dtype: str, res: int = 32) -> Any:
    """The :class:`~hwloop.models.ModelRef` of a data-set net."""
    from hwloop.gpu_models import h100_model_ref_kwargs
    from hwloop.models import ModelRef

    ws = json.loads(widths) if isinstance(widths, str) else list(widths)
    name, kwargs = h100_model_ref_kwargs(arch, ws)
    return ModelRef(name, kwargs, input_shape=(3, int(res), int(res)), batch=int(batch), dtype=dtype)


def in_net_layer_name(arch: str, layer: str) -> str:
    """hwloop's module name of a ``net_layers.csv`` layer (``vgg16`` ``"3"`` → ``features.3``;
    ``resnet20`` ``"0"`` → ``conv1``, ``"4.c2"`` → ``layers.1.conv2``, ``"6.sc.0"`` → ``layers.3.shortcut.0``)."""
    if arch == "vgg16":
        return f"features.{int(layer)}"
    if layer == "0":
        return "conv1"
    block, _, rest = layer.partition(".")
    sub = {"c1": "conv1", "c2": "conv2", "sc.0": "shortcut.0"}.get(rest)
    if arch != "resnet20" or sub is None:
        raise DataError(f"layer {layer!r} of {arch!r} is not a conv of the data set's architectures")
    return f"layers.{int(block) - 3}.{sub}"


def _rows(path: Path, cols: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in cols if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path} lacks column(s) {', '.join(missing)}; it needs {', '.join(cols)}")
            yield from enumerate(reader, start=2)
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist; the H100 data set needs {', '.join(H100_FILES)}") from e


def _result(req: MeasureRequest, timing: TimingConfig, row: Mapping[str, str], extra: dict[str, Any]) -> MeasureResult:
    med = float(row["us_median"]) / 1000
    lo = float(row.get("us_min") or row["us_median"]) / 1000
    hi = float(row.get("us_max") or row["us_median"]) / 1000
    if not (0 < lo <= med <= hi):
        raise DataError(f"latencies min {lo * 1000} / median {med * 1000} / max {hi * 1000} us must be > 0 and ordered")
    return MeasureResult(request_key=req.key, timing=timing, latency_ms=med, min_ms=lo, max_ms=hi,
                         samples_ms=(lo, med, hi), extra={**extra, "samples": "min, median, max of the repeats"})


def _layer_spec(row: Mapping[str, str], op: str) -> LayerSpec:
    b, cin, cout, dt = int(row["batch"]), int(row["cin"]), int(row["cout"]), row["dtype"]
    if op == "linear":
        return LayerSpec("linear", (b, cin), out_channels=cout, bias=True, dtype=dt)
    k, s, h, w, g = (int(row[c]) for c in ("k", "stride", "h", "w", "groups"))
    return LayerSpec("conv2d", (b, cin, h, w), in_channels=cin, out_channels=cout, kernel=(k, k), stride=(s, s),
                     padding=(k // 2, k // 2), groups=g, bias=False, dtype=dt)


def read_h100(src: Any, name: str = "h100") -> list[tuple[DeviceFingerprint, MeasureRequest, MeasureResult]]:
    """Every measurement of the data set in ``src`` as ``(fingerprint, request, result)``.

    Raises:
        DataError: a file or column is missing, or a row is malformed (the message names file and line).
    """
    src = Path(src)
    try:
        env = json.loads((src / "env.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{src / 'env.json'} is missing or not JSON ({e})") from e
    fp = h100_fingerprint(env, name)
    out: list[tuple[DeviceFingerprint, MeasureRequest, MeasureResult]] = []
    arch_of: dict[str, str] = {}
    for fname, cols in H100_FILES.items():
        timing = H100_TIMING[fname]
        for line, row in _rows(src / fname, cols):
            extra: dict[str, Any] = {"source": f"h100/{fname}", "line": line}
            try:
                if fname == "layers.csv":
                    req = MeasureRequest.for_layer(_layer_spec(row, row["op"]))
                    extra["set"] = row["set"]
                    if row["set"] == "sweep":
                        key = (int(row["cin"]), int(row["k"]), int(row["h"]), int(row["batch"]))
                        extra["staircase"] = _STAIRCASES.get(key, "other")
                elif fname == "net_layers.csv":
                    req = MeasureRequest.for_layer(_layer_spec(row, "conv2d"))
                    extra["net"] = int(row["net"])
                    if row["net"] in arch_of:
                        extra["arch"] = arch_of[row["net"]]
                        extra["module"] = in_net_layer_name(arch_of[row["net"]], row["layer"])
                else:
                    if fname == "nets.csv":
                        arch_of[row["net"]] = row["arch"]
                    elif row["mode"] != "cuda_graph":
                        raise DataError(f"mode {row['mode']!r} is not cuda_graph")
                    ref = model_ref(row["arch"], row["widths"], int(row["batch"]), row["dtype"],
                                    int(row.get("res") or 32))
                    req = MeasureRequest.for_model(ref)
                    extra.update(net=int(row["net"]), arch=row["arch"])
                out.append((fp, req, _result(req, timing, row, extra)))
            except HwloopError as e:
                raise DataError(f"{src / fname} line {line}: {e}") from e
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{src / fname} line {line}: malformed row ({e})") from e
    return out


def rebatch_workload(wl: Any, batch: int, dtype: str) -> Any:
    """``wl`` (a :class:`~hwloop.workload.Workload`) with every op at another batch size and dtype.

    Example:
        >>> from hwloop.workload import LayerSpec, Workload
        >>> w = Workload("n", (1, 8), (LayerSpec("linear", (1, 8), out_channels=4),))
        >>> rebatch_workload(w, 16, "float16").layers[0].in_shape
        (16, 8)
    """
    from hwloop.workload import Workload

    layers = tuple(s.replace(in_shape=(batch, *s.in_shape[1:]), dtype=dtype,
                             **({"out_shape": (batch, *s.out_shape[1:])} if s.out_shape else {}))
                   for s in wl.layers)
    return Workload(name=wl.name, input_shape=(batch, *wl.input_shape[1:]), layers=layers, dtype=dtype,
                    method=wl.method)
