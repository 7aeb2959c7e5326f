"""GPU features of an op: tensor-core alignment, CTA tiles and SM waves, channel staircases, launches.

Computed with numpy from the raw spec table (:func:`hwloop.predict.features.spec_table`), so they
need no torch. Every column is an *additive cost term* of one op (zero where it does not apply): a
whole model's feature vector is the column sum over its ops, which is what
:mod:`hwloop.predict.graph_cost` fits whole-model latencies on.

Convolutions and linears are seen as the implicit GEMM cuDNN/cuBLAS run: ``M`` = batch × output
positions, ``N`` = output channels (per group), ``K`` = input channels (per group) × kernel area.

* **tensor-core alignment per dtype** — tensor cores want channel counts that are multiples of
  8 elements for float16/bfloat16 (16 bytes) and 4 for float32 run as TF32; a misaligned input or
  output channel count sends cuDNN to a padded or non-tensor-core kernel (the staircases of the H100
  sweeps: float16 output widths that are multiples of 8 run ~30 µs eager, the others ~45 µs).
* **SM waves** — output tiles ``ceil(M/128)·ceil(N/tn)`` for CTA tiles 128×tn (tn = 32, 64, 128), and
  ``waves = ceil(tiles / SMs)``; ``waves × ceil(K/32)`` is the serial main-loop work of the slowest SM.
* **channel staircases** — ``ceil(N/64)`` and ``ceil(K/64)``: latency steps with every 64 channels.
* **launch count** — kernels an op launches: 1 per op, plus one per misaligned side of a float16
  conv (the layout/padding kernels), 0 for ops that launch nothing here.

Example:
    >>> import numpy as np
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.predict.features import spec_table
    >>> from hwloop.predict.gpu_features import gpu_op_features, GPU_FEATURE_NAMES
    >>> t = spec_table([LayerSpec("conv2d", (1, 64, 32, 32), out_channels=60, kernel=3, padding=1, dtype="float16")])
    >>> f = dict(zip(GPU_FEATURE_NAMES, gpu_op_features(t, sms=132)[0]))
    >>> float(f["gemm_misaligned_out"]), float(f["launches"])
    (1.0, 2.0)
"""

from __future__ import annotations

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict.features import RAW_COLUMNS

__all__ = ["GPU_FEATURE_NAMES", "KNOWN_SMS", "PHYSICAL_FEATURE_NAMES", "gpu_op_features", "physical_op_features", "sms_of"]

_R = {c: i for i, c in enumerate(RAW_COLUMNS)}
_TILE_N = (32, 64, 128)
GPU_FEATURE_NAMES: tuple[str, ...] = (
    "gemm", "gemm_misaligned_in", "gemm_misaligned_out", "gemm_strided", "gemm_pointwise", "gemm_depthwise",
    *(f"gemm_wave_k_n{tn}" for tn in _TILE_N), "gemm_util_n64", "gemm_gmacs_aligned", "gemm_mbytes",
    "gemm_n_steps64", "gemm_k_steps64", "launches",
    "elementwise", "elementwise_mbytes", "pool", "pool_mbytes", "add", "add_mbytes",
)
#: the three non-negative cost terms of :func:`physical_op_features`
PHYSICAL_FEATURE_NAMES: tuple[str, ...] = ("kernels", "wave_ksteps", "mbytes")
#: streaming multiprocessors of GPUs hwloop has data for (the fingerprint's ``sm_count`` wins)
KNOWN_SMS = {"NVIDIA H100 80GB HBM3": 132}


def sms_of(fingerprint: object, default: int = 132) -> int:
    """The SM count in a fingerprint's ``info`` (``sm_count``), else :data:`KNOWN_SMS` by GPU name, else ``default``."""
    info = getattr(fingerprint, "info", {}) or {}
    ident = getattr(fingerprint, "identity", {}) or {}
    n = info.get("sm_count") or KNOWN_SMS.get(str(ident.get("gpu", "")))
    return int(n) if n else default


def gpu_op_features(t: np.ndarray, sms: int = 132) -> np.ndarray:
    """Per-op GPU cost terms (:data:`GPU_FEATURE_NAMES`) of a raw spec table, float64 (n_ops × n_features).

    Raises:
        PredictorError: the table does not have the raw columns, or ``sms`` < 1.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != len(RAW_COLUMNS):
        raise PredictorError(f"a raw spec table needs {len(RAW_COLUMNS)} columns, got shape {t.shape}")
    if sms < 1:
        raise PredictorError(f"sms={sms} must be >= 1 (streaming multiprocessors of the GPU)")
    c = {n: t[:, _R[n]] for n in RAW_COLUMNS}
    op = c["op"].astype(np.int64)
    conv, lin = op == 0, (op == 1) | (op == 2)
    gemm = (conv | lin).astype(np.float64)
    g = np.maximum(c["groups"], 1)
    cin, cout, nbytes = c["in_channels"], c["out_channels"], c["dtype_bytes"]
    align = np.where(nbytes <= 2, 8, 4)
    mis_in = gemm * ((cin / g) % align != 0)
    mis_out = gemm * ((cout / g) % align != 0)
    m = np.where(conv, c["batch"] * c["out_h"] * c["out_w"], c["in_elements"] / np.maximum(cin, 1))
    k = np.where(conv, cin / g * c["kernel_h"] * c["kernel_w"], cin)
    n = np.maximum(cout / np.where(conv, g, 1), 1)
    reps = np.where(conv, g, 1)
    cols = [gemm, mis_in, mis_out, gemm * (c["stride"] > 1), gemm * conv * (c["kernel_h"] == 1),
            gemm * ((g > 1) & (g == cin))]
    for tn in _TILE_N:
        tiles = np.ceil(m / 128) * np.ceil(n / tn) * reps
        cols.append(gemm * np.ceil(tiles / sms) * np.ceil(k / 32) / 100)
    tiles64 = np.ceil(m / 128) * np.ceil(n / 64) * reps
    cols.append(gemm * tiles64 / (np.ceil(tiles64 / sms) * sms))
    aligned = np.ceil(k / align) * align * np.ceil(n / align) * align * m * reps
    cols.append(gemm * aligned / 1e9)
    mb = (c["in_elements"] + c["out_elements"] + c["params"]) * nbytes / 1e6
    cols += [gemm * mb, gemm * np.ceil(n / 64), gemm * np.ceil(k / 64) / 10]
    fp16_conv = conv & (nbytes <= 2)
    other = op == 7
    cols.append(np.where(other, 0.0, 1.0) + fp16_conv * ((mis_in > 0).astype(float) + (mis_out > 0)))
    ew = ((op == 3) | (op == 4)).astype(np.float64)  # batchnorm, activation
    pool, add = (op == 5).astype(np.float64), (op == 6).astype(np.float64)
    cols += [ew, ew * mb, pool, pool * mb, add, add * mb]
    return np.column_stack(cols)


def physical_op_features(t: np.ndarray, sms: int = 132) -> np.ndarray:
    """Three physical per-op cost terms (:data:`PHYSICAL_FEATURE_NAMES`), float64 (n_ops × 3), each >= 0 and
    non-decreasing in the op's work, so a non-negative fit of them cannot invert a ranking or go negative:

    * ``kernels`` — kernels the op launches (the ``launches`` column of :func:`gpu_op_features`);
    * ``wave_ksteps`` — GEMM ops: SM waves of 128×64 CTA tiles × main-loop steps ``ceil(K/32)`` / 100, the serial
      work of the slowest SM (``gemm_wave_k_n64``); 0 for other ops;
    * ``mbytes`` — MB read and written (inputs, outputs, weights) by every op that launches a kernel.

    Raises:
        PredictorError: as :func:`gpu_op_features`.
    """
    f = gpu_op_features(t, sms)
    col = {n: f[:, i] for i, n in enumerate(GPU_FEATURE_NAMES)}
    mb = col["gemm_mbytes"] + col["elementwise_mbytes"] + col["pool_mbytes"] + col["add_mbytes"]
    return np.column_stack([col["launches"], col["gemm_wave_k_n64"], mb])
