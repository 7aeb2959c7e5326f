"""``cuda`` backend: PyTorch on a local NVIDIA GPU, timed with CUDA events.

Two execution modes (``TimingConfig.mode``):

* ``eager`` — every sample is ``number`` back-to-back calls between two CUDA events, so
  host launch overhead is included, as in a plain PyTorch deployment.
* ``cuda_graph`` — the call is warmed up on a side stream, ``number`` iterations are
  captured into one :class:`torch.cuda.CUDAGraph`, and each sample is one replay timed
  with events (divided by ``number``). Launch overhead disappears, as in deployed
  runtimes (TensorRT, torch.compile's ``reduce-overhead``).

``model_layers`` requests also time every leaf module of the model. In ``eager`` mode they are
timed *in context* during whole-model runs, with an event recorded in forward pre/post hooks and
no host synchronisation between modules (:func:`hwloop.devices.cpu.time_model_layers`). Events
cannot be timed inside a graph replay, so in ``cuda_graph`` mode each leaf module call is captured
**alone** in its own CUDA graph, on the very input tensors it received in the model, and replayed
(:func:`time_layers_graph`; ``extra["per_layer_mode"] == "cuda_graph"``): per-layer times as a
graph-deployed model runs them, minus the overlap between neighbouring kernels.

Failures are data: an out-of-memory error, an op without a CUDA kernel, a graph capture
that fails or a timeout comes back as ``MeasureResult.error`` and the cache is emptied.

Example:
    >>> from hwloop.devices.cuda import CudaDevice
    >>> from hwloop.devices.base import MeasureRequest, TimingConfig
    >>> from hwloop.workload import LayerSpec
    >>> dev = CudaDevice()  # raises DeviceUnavailableError without a GPU  # doctest: +SKIP
    >>> spec = LayerSpec("conv2d", (8, 64, 32, 32), out_channels=64, kernel=3, padding=1, dtype="float16")
    >>> (r,) = dev.measure([MeasureRequest.for_layer(spec)], TimingConfig(mode="cuda_graph"))  # doctest: +SKIP
    >>> r.ok, r.extra["mode"]  # doctest: +SKIP
    (True, 'cuda_graph')
"""

from __future__ import annotations

import csv
import functools
import io
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from hwloop.devices._timing import Deadline, MeasureTimeout, Timer, pick_number, time_fn
from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig, summarize
from hwloop.devices.cpu import error_message, prepare_request, time_model_layers
from hwloop.errors import ConfigError, DeviceError, DeviceUnavailableError

__all__ = [
    "CUDA_MODES",
    "MAX_GRAPH_ITERS",
    "NVIDIA_SMI_FIELDS",
    "CudaDevice",
    "CudaEventTimer",
    "backend_flags",
    "leaf_calls",
    "parse_nvidia_smi_csv",
    "parse_proc_driver_version",
    "query_nvidia_smi",
    "time_cuda_graph",
    "time_layers_graph",
]

CUDA_MODES = ("eager", "cuda_graph")
#: most iterations captured into one graph (bounds capture time and graph memory).
MAX_GRAPH_ITERS = 2000

#: ``nvidia-smi --query-gpu`` field → name (with unit) in the fingerprint's ``info``.
NVIDIA_SMI_FIELDS: dict[str, str] = {
    "name": "gpu",
    "uuid": "uuid",
    "driver_version": "driver",
    "clocks.sm": "sm_clock_mhz",
    "clocks.mem": "mem_clock_mhz",
    "clocks.max.sm": "max_sm_clock_mhz",
    "clocks.max.mem": "max_mem_clock_mhz",
    "power.limit": "power_limit_w",
    "power.draw": "power_draw_w",
    "memory.total": "memory_total_mib",
    "temperature.gpu": "temperature_c",
    "pstate": "pstate",
    "persistence_mode": "persistence_mode",
}
_MISSING = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]"}
_TEXT_FIELDS = {"name", "uuid", "driver_version", "pstate", "persistence_mode"}


def parse_nvidia_smi_csv(text: str, fields: Sequence[str] = tuple(NVIDIA_SMI_FIELDS)) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` output, one dict per GPU.

    Keys are renamed with units (:data:`NVIDIA_SMI_FIELDS`), numbers become floats and
    ``[N/A]``/``[Not Supported]`` become None.

    Raises:
        DeviceError: a line has a different number of columns than ``fields``.

    Example:
        >>> rows = parse_nvidia_smi_csv("NVIDIA H100, 550.54.15, 1980\\n", ["name", "driver_version", "clocks.sm"])
        >>> rows[0]["gpu"], rows[0]["driver"], rows[0]["sm_clock_mhz"]
        ('NVIDIA H100', '550.54.15', 1980.0)
    """
    rows: list[dict[str, Any]] = []
    for cols in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not cols or all(not c.strip() for c in cols):
            continue
        if len(cols) != len(fields):
            raise DeviceError(f"nvidia-smi returned {len(cols)} column(s) {cols!r}; expected {len(fields)} "
                              f"({', '.join(fields)})")
        row: dict[str, Any] = {}
        for f, raw in zip(fields, cols):
            v = raw.strip()
            key = NVIDIA_SMI_FIELDS.get(f, f.replace(".", "_"))
            if v.lower() in _MISSING:
                row[key] = None
            elif f in _TEXT_FIELDS:
                row[key] = v
            else:
                try:
                    row[key] = float(v)
                except ValueError:
                    row[key] = v
        rows.append(row)
    return rows


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version``, or None.

    Example:
        >>> parse_proc_driver_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 2023")
        '535.129.03'
    """
    m = re.search(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", text + " ")
    return m.group(1) if m else None


def query_nvidia_smi(gpu_id: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Live facts about one GPU (``gpu_id``: index or UUID) from ``nvidia-smi``.

    Returns an empty dict when ``nvidia-smi`` is not installed; ``{"nvidia_smi_error": ...}``
    when it fails. The command is run with list arguments (no shell).
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = tuple(NVIDIA_SMI_FIELDS)
    try:
        p = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                            f"--id={gpu_id}"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"nvidia_smi_error": error_message(e)}
    if p.returncode != 0:
        return {"nvidia_smi_error": (p.stderr or p.stdout).strip().splitlines()[0] if (p.stderr or p.stdout).strip()
                else f"exit status {p.returncode}"}
    try:
        rows = parse_nvidia_smi_csv(p.stdout, fields)
    except DeviceError as e:
        return {"nvidia_smi_error": str(e)}
    return rows[0] if rows else {}


def _driver_version(smi: Mapping[str, Any]) -> str:
    if smi.get("driver"):
        return str(smi["driver"])
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            v = parse_proc_driver_version(f.read())
        if v:
            return v
    except OSError:
        pass
    return "unknown"


@contextmanager
def backend_flags(*, cudnn_benchmark: bool, allow_tf32: bool | None = None, allow_tf32_conv: bool = True,
                  allow_tf32_matmul: bool = False) -> Iterator[None]:
    """Set ``cudnn.benchmark`` and TF32 for the duration of a block, restoring them after.

    ``allow_tf32_conv`` / ``allow_tf32_matmul`` set ``torch.backends.cudnn.allow_tf32`` /
    ``torch.backends.cuda.matmul.allow_tf32`` (PyTorch's defaults: True / False); ``allow_tf32``,
    when given, sets both.

    Example:
        >>> import torch
        >>> with backend_flags(cudnn_benchmark=True, allow_tf32=False):
        ...     torch.backends.cudnn.benchmark
        True
    """
    if allow_tf32 is not None:
        allow_tf32_conv = allow_tf32_matmul = allow_tf32
    old = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32_matmul
    torch.backends.cudnn.allow_tf32 = allow_tf32_conv
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@dataclass
class CudaEventTimer(Timer):
    """Times calls with two CUDA events on the current stream; divides by ``iters_per_call`` too
    (a graph replay that runs ``iters_per_call`` captured iterations)."""

    iters_per_call: int = 1

    def time(self, fn: Callable[[], object], number: int) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / (number * self.iters_per_call)


def _record_event() -> torch.cuda.Event:
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return ev


def time_cuda_graph(fn: Callable[[], object], timing: TimingConfig, *, request_key: str,
                    extra: dict[str, object] | None = None, deadline: Deadline | None = None) -> MeasureResult:
    """Time ``fn`` as CUDA-graph replays: side-stream warm-up, capture ``number`` iterations, replay.

    ``number`` is ``timing.number`` or, when 0, enough eager iterations to fill
    ``timing.min_repeat_ms`` (at most :data:`MAX_GRAPH_ITERS`). Each sample is one replay;
    the sample value is the replay time divided by ``number``.
    """
    dl = deadline or Deadline(timing.timeout_s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(3, timing.warmup)):  # lazy init, cuDNN autotuning, allocator warm-up
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    dl.check()
    number = timing.number or min(MAX_GRAPH_ITERS, pick_number(fn, CudaEventTimer(), timing))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(number):
            fn()
    torch.cuda.synchronize()
    dl.check()
    try:
        return time_fn(graph.replay, timing, CudaEventTimer(iters_per_call=number), request_key=request_key,
                       extra={**(extra or {}), "number": number, "graph_replays_per_sample": 1}, deadline=dl,
                       number=1)
    finally:
        del graph


def leaf_calls(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[str, torch.nn.Module, tuple]]:
    """Every call of a timed leaf module (conv, linear, batchnorm, activation, pooling) in one forward
    pass, in order, with the input tensors it received: ``(name, module, args)``."""
    from hwloop.devices.cpu import _LEAF_TYPES

    names: dict[torch.nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, _LEAF_TYPES)}
    calls: list[tuple[str, torch.nn.Module, tuple]] = []

    def pre(mod: torch.nn.Module, args: tuple) -> None:
        calls.append((names[mod], mod, tuple(args)))

    handles = [m.register_forward_pre_hook(pre) for m in names]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def time_layers_graph(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], timing: TimingConfig, *,
                      deadline: Deadline | None = None) -> dict[str, float]:
    """Per-leaf-module CUDA-graph latency (median ms): each call captured and replayed alone.

    A module called twice in one forward pass is summed (as in eager ``model_layers``).

    Raises:
        DeviceError: a layer's graph timing failed (the message names the layer).
    """
    out: dict[str, float] = {}
    with torch.inference_mode():
        for name, mod, args in leaf_calls(model, inputs):
            res = time_cuda_graph(functools.partial(mod, *args), timing, request_key=name, deadline=deadline)
            if not res.ok:
                raise DeviceError(f"layer {name!r}: {res.error}")
            out[name] = out.get(name, 0.0) + res.latency_ms
    return out


class CudaDevice:
    """PyTorch on a local NVIDIA GPU, timed with CUDA events (modes ``eager`` and ``cuda_graph``).

    Args:
        name: the device's name (its profile's name).
        timing: default :class:`TimingConfig` for :meth:`measure`.
        device_index: which GPU (as torch numbers them, i.e. after ``CUDA_VISIBLE_DEVICES``).
        cudnn_benchmark: let cuDNN autotune convolution algorithms (part of the fingerprint).
        allow_tf32_conv: allow TF32 tensor cores for float32 convolutions (``cudnn.allow_tf32``;
            PyTorch's default True; part of the fingerprint).
        allow_tf32_matmul: allow TF32 for float32 matmul/linear (``cuda.matmul.allow_tf32``; PyTorch's
            default False; part of the fingerprint).
        allow_tf32: when given, sets both of the above (older profiles).

    Raises:
        DeviceUnavailableError: torch sees no CUDA GPU on this machine.
        ConfigError: an option has the wrong type or ``device_index`` is out of range.

    Example:
        >>> CudaDevice("local-gpu")  # on a machine without a GPU  # doctest: +SKIP
        Traceback (most recent call last):
        hwloop.errors.DeviceUnavailableError: device 'local-gpu' needs CUDA but torch reports no GPU ...
    """

    backend = "cuda"

    def __init__(self, name: str = "local-gpu", timing: TimingConfig | None = None, device_index: int = 0,
                 cudnn_benchmark: bool = True, allow_tf32: bool | None = None, allow_tf32_conv: bool = True,
                 allow_tf32_matmul: bool = False, **_ignored: Any) -> None:
        if not isinstance(device_index, int) or isinstance(device_index, bool) or device_index < 0:
            raise ConfigError(f"device {name!r}: device_index={device_index!r} must be an integer >= 0")
        for opt, v in (("cudnn_benchmark", cudnn_benchmark), ("allow_tf32", allow_tf32),
                       ("allow_tf32_conv", allow_tf32_conv), ("allow_tf32_matmul", allow_tf32_matmul)):
            if v is None and opt == "allow_tf32":
                continue
            if not isinstance(v, bool):
                raise ConfigError(f"device {name!r}: {opt}={v!r} must be true or false")
        if timing is not None and timing.mode not in CUDA_MODES:
            raise ConfigError(f"device {name!r}: timing mode {timing.mode!r} is not supported by the cuda backend; "
                              f"allowed: {', '.join(CUDA_MODES)}")
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {name!r} needs CUDA but torch reports no GPU "
                                         "(torch.cuda.is_available() is False); use --device local-cpu")
        count = torch.cuda.device_count()
        if device_index >= count:
            raise ConfigError(f"device {name!r}: device_index={device_index} is out of range; "
                              f"this machine has {count} GPU(s) (0..{count - 1})")
        self.name = name
        self.timing = timing or TimingConfig()
        self.device_index = device_index
        self.cudnn_benchmark = cudnn_benchmark
        if allow_tf32 is not None:
            allow_tf32_conv = allow_tf32_matmul = allow_tf32
        self.allow_tf32_conv = allow_tf32_conv
        self.allow_tf32_matmul = allow_tf32_matmul

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.device_index}"

    def fingerprint(self) -> DeviceFingerprint:
        """GPU, compute capability, driver, CUDA/cuDNN/torch versions and numeric settings as
        identity; clocks, power limit, memory, temperature (``nvidia-smi`` when installed) as info."""
        props = torch.cuda.get_device_properties(self.device_index)
        uuid = str(getattr(props, "uuid", "") or "")
        gpu_id = f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else (uuid or str(self.device_index))
        smi = query_nvidia_smi(gpu_id)
        info: dict[str, Any] = {"device_index": self.device_index, "uuid": gpu_id, "sm_count": props.multi_processor_count,
                                "memory_total_mib": int(props.total_memory // 2**20),
                                "info_source": "nvidia-smi" if smi and "nvidia_smi_error" not in smi else "torch"}
        info.update({k: v for k, v in smi.items() if k not in ("gpu", "driver", "uuid")})
        if "sm_clock_mhz" not in info:
            try:  # needs pynvml; absent is fine
                info["sm_clock_mhz"] = float(torch.cuda.clock_rate(self.device_index))
            except Exception:  # noqa: BLE001 - optional context only
                pass
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        identity = {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
                    "driver": _driver_version(smi), "cuda": torch.version.cuda, "cudnn": cudnn,
                    "torch": torch.__version__.split("+")[0], "cudnn_benchmark": self.cudnn_benchmark,
                    "cudnn_allow_tf32": self.allow_tf32_conv, "matmul_allow_tf32": self.allow_tf32_matmul}
        return DeviceFingerprint(name=self.name, backend=self.backend, identity=identity, info=info)

    def _measure_one(self, req: MeasureRequest, timing: TimingConfig, deadline: Deadline) -> MeasureResult:
        model, inputs = prepare_request(req, device=self.torch_device)
        deadline.check()
        extra: dict[str, object] = {"mode": timing.mode}
        with torch.inference_mode():
            fn = lambda: model(*inputs)  # noqa: E731
            if timing.mode == "cuda_graph":
                res = time_cuda_graph(fn, timing, request_key=req.key, extra=extra, deadline=deadline)
            else:
                res = time_fn(fn, timing, CudaEventTimer(), request_key=req.key, extra=extra, deadline=deadline)
        if req.kind == "model_layers" and res.ok:
            if timing.mode == "cuda_graph":
                per = time_layers_graph(model, inputs, timing, deadline=deadline)
            else:
                per = time_model_layers(model, inputs, timing, _record_event, lambda a, b: float(a.elapsed_time(b)),
                                        sync=torch.cuda.synchronize, check=deadline.check)
            res = summarize(res.samples_ms, timing, request_key=req.key, attempts=res.attempts, per_layer_ms=per,
                            extra={**res.extra, "per_layer_mode": timing.mode})
        return res

    def _measure_safely(self, req: MeasureRequest, timing: TimingConfig) -> MeasureResult:
        res: MeasureResult | None = None
        try:
            res = self._measure_one(req, timing, Deadline(timing.timeout_s))
        except MeasureTimeout as e:
            res = MeasureResult.failure(req.key, timing, f"timeout: {e}")
        except torch.cuda.OutOfMemoryError as e:
            res = MeasureResult.failure(req.key, timing, f"out of memory: {error_message(e)}", oom=True)
        except Exception as e:  # noqa: BLE001 - a failure is data, the sweep goes on
            res = MeasureResult.failure(req.key, timing, error_message(e))
        if not res.ok:  # the traceback (and the tensors it held) is gone here
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - a sticky CUDA error shows up in the next result too
                pass
            torch.cuda.empty_cache()
        return res

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        """Time each request on the GPU; one result per request, in order, failures as errors.

        Raises:
            ConfigError: ``timing.mode`` is not ``eager`` or ``cuda_graph``.
        """
        t = timing or self.timing
        if t.mode not in CUDA_MODES:
            raise ConfigError(f"the cuda backend supports modes {', '.join(CUDA_MODES)}, not {t.mode!r}")
        out: list[MeasureResult] = []
        with backend_flags(cudnn_benchmark=self.cudnn_benchmark, allow_tf32_conv=self.allow_tf32_conv,
                           allow_tf32_matmul=self.allow_tf32_matmul), \
                torch.cuda.device(self.device_index):
            for req in requests:
                out.append(self._measure_safely(req, t))
        return out

    def close(self) -> None:
        torch.cuda.empty_cache()
