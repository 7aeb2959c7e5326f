"""The ``cuda`` backend: pure parts everywhere, real-GPU behaviour behind ``require_cuda``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import require_cuda

from hwloop.devices import MeasureRequest, TimingConfig, create_device, load_profile
from hwloop.devices.cuda import (
    NVIDIA_SMI_FIELDS,
    CudaDevice,
    backend_flags,
    parse_nvidia_smi_csv,
    parse_proc_driver_version,
    query_nvidia_smi,
)
from hwloop.errors import ConfigError, DeviceError, DeviceUnavailableError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")

# Two GPUs as `nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv,noheader,nounits` prints them.
SMI_TWO_GPUS = (
    "NVIDIA H100 80GB HBM3, GPU-5d3c1f7e-0000-1111-2222-333344445555, 550.54.15, 1980, 2619, 1980, 2619, "
    "700.00, 71.35, 81559, 34, P0, Enabled\n"
    "NVIDIA GeForce RTX 3060, GPU-aaaa, 550.54.15, 210, 405, 2100, 7501, [N/A], [Not Supported], 12288, 41, "
    "P8, Disabled\n"
)


def test_parse_nvidia_smi_csv_two_gpus() -> None:
    rows = parse_nvidia_smi_csv(SMI_TWO_GPUS)
    assert len(rows) == 2
    h100, rtx = rows
    assert h100["gpu"] == "NVIDIA H100 80GB HBM3" and h100["driver"] == "550.54.15"
    assert h100["sm_clock_mhz"] == 1980.0 and h100["max_mem_clock_mhz"] == 2619.0
    assert h100["power_limit_w"] == 700.0 and h100["memory_total_mib"] == 81559.0
    assert h100["pstate"] == "P0" and h100["persistence_mode"] == "Enabled"
    assert rtx["power_limit_w"] is None and rtx["power_draw_w"] is None
    assert rtx["temperature_c"] == 41.0
    assert set(h100) == set(NVIDIA_SMI_FIELDS.values())


def test_parse_nvidia_smi_csv_rejects_wrong_column_count() -> None:
    with pytest.raises(DeviceError, match="expected 3"):
        parse_nvidia_smi_csv("NVIDIA H100, 550.54.15\n", ["name", "driver_version", "clocks.sm"])


def test_parse_nvidia_smi_csv_keeps_commas_inside_quotes_and_skips_blank_lines() -> None:
    rows = parse_nvidia_smi_csv('\n"GPU, with comma", 1\n\n', ["name", "clocks.sm"])
    assert rows == [{"gpu": "GPU, with comma", "sm_clock_mhz": 1.0}]


@pytest.mark.parametrize("text, want", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\n", "535.129.03"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n",
     "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.3.0  Release Build\nGCC version: 11\n",
     "540.3.0"),
    ("GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", None),
])
def test_parse_proc_driver_version(text: str, want: str | None) -> None:
    assert parse_proc_driver_version(text) == want


def _fake_smi(bin_dir: Path, body: str) -> Path:
    """A stand-in ``nvidia-smi`` executable (this machine has none) that records its argv."""
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" f'printf "%s\\n" "$@" > "{bin_dir}/argv"\n' + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_query_nvidia_smi_without_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query_nvidia_smi("0") == {}


def test_query_nvidia_smi_runs_list_args_and_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = SMI_TWO_GPUS.splitlines()[0]
    _fake_smi(tmp_path, f"echo '{first}'\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    row = query_nvidia_smi("GPU-5d3c; rm -rf /")  # hostile id stays one argument, never a shell string
    assert row["gpu"] == "NVIDIA H100 80GB HBM3" and row["sm_clock_mhz"] == 1980.0
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == [f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits",
                    "--id=GPU-5d3c; rm -rf /"]


def test_query_nvidia_smi_failure_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_smi(tmp_path, "echo 'No devices were found' >&2\nexit 6\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert query_nvidia_smi("0") == {"nvidia_smi_error": "No devices were found"}


def test_backend_flags_are_restored() -> None:
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    with backend_flags(cudnn_benchmark=not before[0], allow_tf32=not before[1]):
        assert torch.backends.cudnn.benchmark is (not before[0])
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[1])
        assert torch.backends.cudnn.allow_tf32 is (not before[1])
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize("kwargs, match", [
    ({"device_index": -1}, "device_index=-1"),
    ({"device_index": "0"}, "device_index='0'"),
    ({"cudnn_benchmark": "yes"}, "cudnn_benchmark='yes'"),
    ({"allow_tf32": 1}, "allow_tf32=1"),
    ({"timing": TimingConfig(mode="tvm")}, "mode 'tvm'"),
])
def test_bad_options_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CudaDevice("local-gpu", **kwargs)  # type: ignore[arg-type]


def test_local_gpu_profile_is_valid() -> None:
    prof = load_profile("local-gpu")
    assert prof.backend == "cuda" and prof.options["device_index"] == 0
    assert prof.options["cudnn_benchmark"] is True and prof.timing.mode == "eager"


@no_cuda
def test_no_gpu_raises_device_unavailable_with_the_fix() -> None:
    with pytest.raises(DeviceUnavailableError) as ei:
        CudaDevice("local-gpu")
    assert str(ei.value) == ("device 'local-gpu' needs CUDA but torch reports no GPU "
                             "(torch.cuda.is_available() is False); use --device local-cpu")
    with pytest.raises(DeviceUnavailableError, match="'local-gpu' needs CUDA"):
        create_device("local-gpu")


# --- real GPU -------------------------------------------------------------------------------------
GPU_FAST = TimingConfig(warmup=3, repeats=5, min_repeat_ms=0.5, max_cv=10.0, max_retries=0, timeout_s=120)


def _conv(dtype: str = "float32") -> LayerSpec:
    return LayerSpec("conv2d", (8, 32, 32, 32), out_channels=64, kernel=3, padding=1, dtype=dtype)


@require_cuda
@pytest.mark.parametrize("mode", ["eager", "cuda_graph"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_layers_in_both_modes(mode: str, dtype: str) -> None:
    t = TimingConfig(**{**GPU_FAST.to_dict(), "mode": mode})
    specs = [_conv(dtype), LayerSpec("linear", (64, 512), out_channels=256, dtype=dtype)]
    res = CudaDevice().measure([MeasureRequest.for_layer(s) for s in specs], t)
    assert [r.request_key for r in res] == [s.key for s in specs]
    for r in res:
        assert r.ok, r.error
        assert r.extra["mode"] == mode and r.extra["number"] >= 1
        assert 0 < r.min_ms <= r.latency_ms <= r.max_ms < 1000


@require_cuda
@pytest.mark.parametrize("mode", ["eager", "cuda_graph"])
def test_gpu_model_layers_in_context(mode: str) -> None:
    ref = ModelRef("resnet20", {"width_mult": 0.5}, batch=4)
    t = TimingConfig(**{**GPU_FAST.to_dict(), "mode": mode})
    (r,) = CudaDevice().measure([MeasureRequest.for_model(ref, per_layer=True)], t)
    assert r.ok, r.error
    convs = {n for n, m in ref.build().named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs <= set(r.per_layer_ms) and all(v > 0 for v in r.per_layer_ms.values())
    assert r.extra["per_layer_mode"] == mode  # cuda_graph: each layer captured and replayed alone


@require_cuda
def test_gpu_oom_is_an_error_result_and_memory_is_released() -> None:
    huge = LayerSpec("conv2d", (1, 1, 4096, 4096), out_channels=65536, kernel=3, padding=1)  # ~4 TB output
    dev = CudaDevice()
    base = torch.cuda.memory_allocated()
    res = dev.measure([MeasureRequest.for_layer(huge), MeasureRequest.for_layer(_conv())], GPU_FAST)
    assert res[0].error is not None and res[0].error.startswith("out of memory"), res[0].error
    assert res[0].extra.get("oom") is True
    assert res[1].ok
    assert torch.cuda.memory_allocated() - base < 64 * 2**20


@require_cuda
def test_gpu_fingerprint() -> None:
    fp = CudaDevice().fingerprint()
    props = torch.cuda.get_device_properties(0)
    assert fp.identity["gpu"] == props.name
    assert fp.identity["compute_capability"] == f"{props.major}.{props.minor}"
    assert fp.identity["cuda"] == torch.version.cuda and fp.identity["driver"] != ""
    assert fp.info["memory_total_mib"] > 0
    assert CudaDevice(cudnn_benchmark=False).fingerprint().key != fp.key


@no_cuda
def test_cli_reports_the_missing_gpu_in_one_line() -> None:
    import subprocess
    import sys

    from conftest import REPO

    p = subprocess.run([sys.executable, "-m", "hwloop", "devices", "show", "local-gpu", "--probe"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: device 'local-gpu' needs CUDA but torch reports no GPU "
                                             "(torch.cuda.is_available() is False); use --device local-cpu"]
