"""Engineered layer features: a raw spec table, then vectorised derived features.

Two steps so batch prediction is fast: :func:`spec_table` turns ``LayerSpec`` objects
into a float64 array with :data:`RAW_COLUMNS` (one Python pass), and
:func:`features_from_table` derives every model feature (:data:`FEATURE_NAMES`) with
numpy only. A table can also come straight from a DataFrame that already has the raw
columns (:func:`table_from_frame`), skipping the Python pass.

Feature schema 2 adds accelerator-style features to schema 1: GEMM folds over 16/32/64-wide
arrays with low-bit weights packed into 8-bit processing elements and small groups placed side by
side, the second GEMM of low-rank layers, bytes at the actual bit widths, DRAM traffic of a tiled op
for buffer sizes 32 KiB–1 MiB, and CPU dispatch hints (pointwise conv, per-sample input size).
Feature schema 3 (current) adds the CPU view of a convolution to schema 2: which PyTorch CPU path runs
it (oneDNN, or im2col + GEMM — PyTorch's own single-thread rule, ``aten/src/ATen/native/ConvUtils.h``
``use_mkldnn``), the im2col buffer of the GEMM path, and the two convs of a low-rank layer separately
(``k×k → r`` then ``1×1 r → out``: MACs, input elements and output elements of each).
:func:`baseline_terms` gives the non-negative linear-scale terms (work, traffic, elements) that
:class:`~hwloop.predict.learned.XGBoostPredictor` fits per op kind as its baseline. Files written with
schema 1 or 2 still load and use :data:`FEATURE_NAMES_V1` / :data:`FEATURE_NAMES_V2`
(``features_from_table(t, schema=1)``).

Example:
    >>> from hwloop.workload import LayerSpec
    >>> from hwloop.predict.features import spec_table, features_from_table, FEATURE_NAMES
    >>> t = spec_table([LayerSpec("conv2d", (1, 8, 16, 16), out_channels=16, kernel=3, padding=1)])
    >>> x = features_from_table(t)
    >>> x.shape == (1, len(FEATURE_NAMES))
    True
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.opkinds import DTYPES, OP_KINDS

if TYPE_CHECKING:  # hwloop.workload imports torch; predicting from plain descriptions does not need it
    from hwloop.workload import LayerSpec

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_NAMES_V1",
    "FEATURE_NAMES_V2",
    "FEATURE_SCHEMA",
    "FEATURE_SCHEMAS",
    "NORM_CODES",
    "RAW_COLUMNS",
    "VARIANTS",
    "baseline_terms",
    "feature_names",
    "features_from_table",
    "featurize",
    "reference_features",
    "spec_table",
    "specs_from_any",
    "table_from_frame",
]

#: version of the feature definition; saved with every predictor
FEATURE_SCHEMA = 3
#: feature schemas this hwloop can compute (files of any of them load)
FEATURE_SCHEMAS = (1, 2, 3)
VARIANTS = ("", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "max", "avg",
            "adaptive_avg")
_VAR = {v: i for i, v in enumerate(VARIANTS)}
_OP = {o: i for i, o in enumerate(OP_KINDS)}
#: run-time norms (:data:`hwloop.workload.NORM_KINDS`) → (op code, variant code): ``batchnorm`` rows with variant
#: codes past the unknown-variant code ``len(VARIANTS)``, so stored predictors keep their feature layout
NORM_CODES = {"groupnorm": (_OP["batchnorm"], len(VARIANTS) + 1), "instancenorm": (_OP["batchnorm"], len(VARIANTS) + 2)}

RAW_COLUMNS = ("op", "variant", "dtype_bytes", "is_bf16", "batch", "in_channels", "out_channels", "in_h", "in_w",
               "out_h", "out_w", "kernel_h", "kernel_w", "stride", "padding", "groups", "bias", "rank", "w_bits",
               "a_bits", "in_elements", "out_elements", "macs", "params", "bytes_moved")
_R = {c: i for i, c in enumerate(RAW_COLUMNS)}

FEATURE_NAMES_V1: tuple[str, ...] = (
    *(f"op_{o}" for o in OP_KINDS),
    "variant", "dtype_bytes", "is_bf16", "batch", "in_channels", "out_channels", "in_h", "in_w", "out_h", "out_w",
    "kernel_h", "kernel_w", "stride", "padding", "groups", "bias", "rank", "w_bits", "a_bits", "bits_product",
    "depthwise", "in_per_group", "log2_macs", "log2_bytes", "log2_params", "log2_in_elements",
    "log2_out_elements", "arithmetic_intensity", "out_spatial",
    "cin_mod8", "cin_mod16", "cin_mod32", "cin_mod64", "cout_mod8", "cout_mod16", "cout_mod32", "cout_mod64",
    "rank_mod8", "rank_mod16", "pad_ratio8", "pad_ratio16", "pad_ratio32", "pad_ratio64", "log2_padded_macs32",
    "gemm_m", "gemm_k", "gemm_n", "log2_gemm_m", "log2_gemm_k", "log2_gemm_n",
    "folds16", "folds32", "folds64", "log2_fold_work16", "log2_fold_work32", "log2_fold_work64",
    "lowrank_folds16", "lowrank_folds32", "lowrank_folds64",
    "log2_work_k32_n32", "log2_work_k32_n64", "log2_work_k32_n128", "log2_work_k16_n16", "log2_work_k64_n64",
)
_ARRAYS = (16, 32, 64)
_CAPS_KIB = (32, 64, 128, 256, 512, 1024)
FEATURE_NAMES_V2: tuple[str, ...] = (
    *FEATURE_NAMES_V1,
    *(f"{n}{w}" for w in _ARRAYS for n in ("log2_packed_folds", "log2_packed_work", "log2_lowrank_work",
                                           "log2_total_work", "log2_groups_per_fold")),
    "log2_weight_bytes_at_bits", "log2_in_bytes_at_bits", "log2_out_bytes_at_bits", "weight_pack",
    *(f"log2_tiled_traffic_{c}k" for c in _CAPS_KIB),
    "pointwise", "log2_in_elements_per_sample", "in_elements_per_sample_gt_20480",
)
FEATURE_NAMES: tuple[str, ...] = (
    *FEATURE_NAMES_V2,
    "cpu_onednn_conv", "cpu_onednn_strided", "log2_cpu_im2col_elements", "lowrank_second_onednn",
    "log2_conv1_macs", "log2_conv2_macs", "log2_conv1_out_elements", "log2_conv2_in_elements_per_sample",
)


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 4:
        return shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], 1
    return 1, 1


def _raw_row(s: LayerSpec) -> tuple[float, ...]:
    ih, iw = _hw(s.in_shape)
    oh, ow = _hw(s.out_shape)
    op, var = NORM_CODES.get(s.op) or (_OP[s.op], _VAR.get(s.variant, len(VARIANTS)))
    return (op, var, DTYPES[s.dtype], s.dtype == "bfloat16", s.batch,
            s.in_channels, s.out_channels, ih, iw, oh, ow, s.kernel[0], s.kernel[1], s.stride[0], s.padding[0],
            s.groups, s.bias, s.rank or 0, s.w_bits or 0, s.a_bits or 0, s.in_elements, s.out_elements, s.macs,
            s.params, s.bytes_moved)


def spec_table(specs: Sequence[LayerSpec]) -> np.ndarray:
    """The raw table (``len(specs)`` × ``len(RAW_COLUMNS)``, float64) of layer specs.

    Raises:
        PredictorError: an element is not a :class:`LayerSpec`.
    """
    try:
        rows = [_raw_row(s) for s in specs]
    except AttributeError as e:
        bad = next(s for s in specs if not is_layerspec(s))
        raise PredictorError(f"expected LayerSpec objects, got {type(bad).__name__}") from e
    if not rows:
        return np.zeros((0, len(RAW_COLUMNS)))
    return np.asarray(rows, dtype=np.float64)


def _pad(c: np.ndarray, t: int) -> np.ndarray:
    """Tile waste: channels rounded up to a multiple of ``t``, divided by channels (1 when aligned)."""
    c = np.maximum(c, 1)
    return np.ceil(c / t) * t / c


def _gemm_sizes(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(M, K, N, reps)`` of the GEMM view (see :func:`_gemm`) from the raw columns ``c``."""
    op = c["op"].astype(np.int64)
    conv, dense = op == 0, (op == 1) | (op == 2)
    g = np.maximum(c["groups"], 1)
    rank, cin = c["rank"], c["in_channels"]
    m = np.where(conv, c["batch"] * c["out_h"] * c["out_w"],
                 np.where(dense, c["in_elements"] / np.maximum(cin, 1), c["out_elements"]))
    k = np.where(conv, cin / g * c["kernel_h"] * c["kernel_w"], np.where(dense, cin, 1))
    n = np.where(conv | dense, np.where(rank > 0, rank, c["out_channels"] / np.where(conv, g, 1)), 1)
    return m, k, n, np.where(conv, g, 1)


def _gemm(t: np.ndarray, sizes: tuple[np.ndarray, ...] | None = None) -> Iterator[np.ndarray]:
    """GEMM view ``M×K · K×N`` (per group) and array-fold counts for 16/32/64-wide arrays.

    conv: M = batch·out positions, K = in/groups·kernel area, N = out/groups (× groups folds);
    linear/matmul: M = rows, K = in, N = out; low-rank: N = rank, plus the second factor's folds
    (rank × out); other ops: M = elements. ``log2_work_kA_nB``: streamed rows × folds of an A×B array
    (B > A models low-bit weights packed several per processing element). Yielded one by one, so the
    caller can store each before the next is computed (its temporaries stay in cache).
    """
    c = {n: t[:, _R[n]] for n in RAW_COLUMNS}
    m, k, n, reps = sizes if sizes is not None else _gemm_sizes(c)
    rank = c["rank"]
    yield from (m, k, n)
    yield np.log2(m + 1)
    yield np.log2(k + 1)
    yield np.log2(n + 1)
    folds = [np.ceil(k / w) * np.ceil(n / w) * reps for w in (16, 32, 64)]
    yield from folds
    for f, w in zip(folds, (16, 32, 64)):
        yield np.log2(f * (m + 2 * w) + 1)
    for w in (16, 32, 64):
        yield np.where(rank > 0, np.ceil(rank / w) * np.ceil(c["out_channels"] / w), 0)
    for a, b in ((32, 32), (32, 64), (32, 128), (16, 16), (64, 64)):
        yield np.log2(np.ceil(k / a) * np.ceil(n / b) * reps * (m + a + b) + 1)


def _accel(t: np.ndarray, sizes: tuple[np.ndarray, ...] | None = None) -> dict[str, np.ndarray]:
    """Schema-2 quantities (linear scale): packed fold work per array width, bytes at bits, tiled traffic.
    ``sizes``: :func:`_gemm_sizes` of ``t`` when the caller has them already."""
    c = {n: t[:, _R[n]] for n in RAW_COLUMNS}
    conv = c["op"] == 0
    rank, cout = c["rank"], c["out_channels"]
    m, k, n, reps = sizes if sizes is not None else _gemm_sizes(c)
    wb, ab, native = c["w_bits"], c["a_bits"], 8 * c["dtype_bytes"]
    pack = np.where((wb > 0) & (wb < 8), np.clip(np.floor(8 / np.maximum(wb, 1)), 1, 4), 1.0)
    out: dict[str, np.ndarray] = {}
    for w in _ARRAYS:
        ce = w * pack
        gpf = np.where((k <= w) & (n <= ce), np.maximum(1, np.minimum(np.floor(w / k), np.floor(ce / n))), 1)
        folds = np.ceil(k / w) * np.ceil(n / ce) * np.ceil(reps / gpf)
        out[f"folds{w}"], out[f"gpf{w}"] = folds, gpf
        out[f"work{w}"] = folds * (m + 2 * w - 2) + w
        out[f"lowrank{w}"] = np.where(rank > 0, np.ceil(rank / w) * np.ceil(cout / ce) * (m + 2 * w - 2) + w, 0)
    out["pack"] = pack
    out["w_bytes"] = c["params"] * np.where(wb > 0, wb, native) / 8
    out["i_bytes"] = c["in_elements"] * np.where(ab > 0, ab, native) / 8
    out["o_bytes"] = c["out_elements"] * np.where(ab > 0, ab, native) / 8
    for cap in _CAPS_KIB:
        nw = np.maximum(1, np.ceil(out["w_bytes"] / (cap * 1024)))
        ni = np.maximum(1, np.ceil(out["i_bytes"] / (cap * 1024)))
        out[f"traffic{cap}"] = (np.minimum(out["w_bytes"] + out["i_bytes"] * nw, out["w_bytes"] * ni + out["i_bytes"])
                                + out["o_bytes"])
    out["per_sample"] = c["in_elements"] / np.maximum(c["batch"], 1)
    out["pointwise"] = ((c["kernel_h"] == 1) & (c["stride"] == 1) & conv).astype(np.float64)
    return out


def baseline_terms(t: np.ndarray, accel: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Non-negative linear-scale terms for a per-op-kind baseline: packed work (16/32/64-wide arrays,
    both GEMMs of low-rank layers), tiled traffic (32 KiB–1 MiB buffers), bytes, elements and 1.

    ``accel`` reuses the intermediate quantities of :func:`features_from_table` (``accel_out``)."""
    a = accel if accel is not None else _accel(np.asarray(t, dtype=np.float64))
    cols = [a[f"{n}{w}"] for w in _ARRAYS for n in ("work", "lowrank")]
    cols += [a[f"traffic{c}"] for c in _CAPS_KIB] + [a["w_bytes"], a["i_bytes"], a["o_bytes"]]
    cols += [t[:, _R["in_elements"]], t[:, _R["out_elements"]], np.ones(t.shape[0])]
    return np.column_stack(cols)


def feature_names(schema: int = FEATURE_SCHEMA) -> tuple[str, ...]:
    """The feature names of a feature schema (1, 2 or 3)."""
    if schema not in FEATURE_SCHEMAS:
        raise PredictorError(f"feature schema {schema!r} is unknown; this hwloop computes {FEATURE_SCHEMAS}")
    return {1: FEATURE_NAMES_V1, 2: FEATURE_NAMES_V2}.get(schema, FEATURE_NAMES)


def _cpu(t: np.ndarray) -> list[np.ndarray]:
    """Schema-3 CPU view of convolutions (see the module docstring); zeros for other ops.

    ``cpu_onednn_conv`` is PyTorch's ``use_mkldnn`` rule for float32 at one thread: oneDNN runs a conv
    when (strided, or batch ≥ 16, or not 1×1) and (grouped, or kernel > 3×3, or batch > 1, or
    the input has more than 20,480 elements); otherwise im2col + GEMM (``slow_conv2d``). With more
    threads PyTorch prefers oneDNN more often; the trees learn that from the device's data."""
    c = {n: t[:, _R[n]] for n in RAW_COLUMNS}
    conv = c["op"] == 0
    b, cin, cout, rank = c["batch"], c["in_channels"], c["out_channels"], c["rank"]
    g = np.maximum(c["groups"], 1)
    k_area = c["kernel_h"] * c["kernel_w"]
    pointwise_s1 = (c["kernel_h"] == 1) & (c["kernel_w"] == 1) & (c["stride"] == 1)
    big = (g > 1) | ((c["kernel_h"] > 3) & (c["kernel_w"] > 3)) | (b > 1) | (b * cin * c["in_h"] * c["in_w"] > 20480)
    onednn = conv & (~pointwise_s1 | (b >= 16)) & big
    out_pos = b * c["out_h"] * c["out_w"]
    first_out = np.where(rank > 0, rank, cout)
    lowrank = conv & (rank > 0)
    second_onednn = lowrank & (b >= 16)  # the 1×1 stride-1 second conv: oneDNN only for large batches
    im2col = np.where(conv & ~onednn, out_pos * cin / g * k_area, 0.0)
    macs1 = np.where(conv, out_pos * cin / g * k_area * first_out, 0.0)
    macs2 = np.where(lowrank, out_pos * rank * cout, 0.0)
    return [onednn.astype(np.float64), (onednn & (c["stride"] > 1)).astype(np.float64), np.log2(im2col + 1),
            second_onednn.astype(np.float64), np.log2(macs1 + 1), np.log2(macs2 + 1),
            np.log2(np.where(conv, out_pos * first_out, 0.0) + 1),
            np.log2(np.where(lowrank, rank * c["out_h"] * c["out_w"], 0.0) + 1)]


def features_from_table(t: np.ndarray, schema: int = FEATURE_SCHEMA,
                        accel_out: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Every feature of ``schema`` (:data:`FEATURE_NAMES`; :data:`FEATURE_NAMES_V1`/``_V2`` for 1/2) from a raw
    table (vectorised, float32; an ``(n, width)`` array in Fortran order). ``accel_out`` (a dict) receives the
    intermediate quantities that :func:`baseline_terms` reuses.

    Computed by :func:`hwloop.predict.features_fast.fast_features`: the same values, bit for bit, as
    :func:`reference_features` (the readable definition), in fewer numpy passes."""
    from hwloop.predict.features_fast import fast_features

    return fast_features(t, schema, accel_out)


def reference_features(t: np.ndarray, schema: int = FEATURE_SCHEMA,
                       accel_out: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The definition of every feature (see :func:`features_from_table`, which computes the same values faster)."""
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != len(RAW_COLUMNS):
        raise PredictorError(f"a raw spec table needs {len(RAW_COLUMNS)} columns, got shape {t.shape}")
    width = len(feature_names(schema))
    t = np.asfortranarray(t)  # every column below is a contiguous view: elementwise ops ~15% faster
    n = t.shape[0]
    c = lambda name: t[:, _R[name]]
    # Each feature is written into a feature-major float32 buffer as soon as it is computed (a contiguous
    # row; the float64 temporary is freed at once and its memory reused while still in cache), and the buffer
    # is returned as its transpose: an (n, width) array in Fortran order, which XGBoost reads as fast as a
    # C-ordered one. Holding every column until a final row-major fill cost ~3x the arithmetic (issue 15).
    out = np.empty((width, n), dtype=np.float32)
    j = 0

    def put(*xs: np.ndarray) -> None:
        nonlocal j
        for x in xs:
            out[j] = x
            j += 1

    out[:len(OP_KINDS)] = 0.0
    if n:
        out[c("op").astype(np.int64), np.arange(n)] = 1.0
    j = len(OP_KINDS)
    cin, cout, rank, groups = c("in_channels"), c("out_channels"), c("rank"), c("groups")
    # channels and rank are non-negative integers: ``x & (m - 1)`` equals ``x % m`` for m = 8..64
    # and is ~8x cheaper than a float64 modulo
    ici, ico, irk = cin.astype(np.int64), cout.astype(np.int64), rank.astype(np.int64)
    native_bits = 8 * c("dtype_bytes")
    wb = np.where(c("w_bits") > 0, c("w_bits"), native_bits)
    ab = np.where(c("a_bits") > 0, c("a_bits"), native_bits)
    macs, nbytes = c("macs"), c("bytes_moved")
    for name in ("variant", "dtype_bytes", "is_bf16", "batch", "in_channels", "out_channels", "in_h", "in_w", "out_h",
                 "out_w", "kernel_h", "kernel_w", "stride", "padding", "groups", "bias", "rank", "w_bits", "a_bits"):
        put(c(name))
    put(wb * ab, ((groups > 1) & (groups == cin)).astype(np.float64), cin / np.maximum(groups, 1))
    put(np.log2(macs + 1), np.log2(nbytes + 1), np.log2(c("params") + 1), np.log2(c("in_elements") + 1),
        np.log2(c("out_elements") + 1), macs / np.maximum(nbytes, 1), c("out_h") * c("out_w"))
    for x in (ici, ico):
        for m in (8, 16, 32, 64):
            put(x & (m - 1))
    put(irk & 7, irk & 15)
    pad32 = (_pad(cin, 32), _pad(cout, 32))
    for m in (8, 16, 32, 64):
        put(pad32[0] * pad32[1] if m == 32 else _pad(cin, m) * _pad(cout, m))
    put(np.log2(macs * pad32[0] * pad32[1] + 1))
    sizes = _gemm_sizes({name: c(name) for name in RAW_COLUMNS})
    for x in _gemm(t, sizes):
        put(x)
    if schema >= 2:
        a = _accel(t, sizes)
        if accel_out is not None:
            accel_out.update(a)
        for w in _ARRAYS:
            put(np.log2(a[f"folds{w}"] + 1), np.log2(a[f"work{w}"] + 1), np.log2(a[f"lowrank{w}"] + 1),
                np.log2(a[f"work{w}"] + a[f"lowrank{w}"] + 1), np.log2(a[f"gpf{w}"]))
        put(np.log2(a["w_bytes"] + 1), np.log2(a["i_bytes"] + 1), np.log2(a["o_bytes"] + 1), a["pack"])
        for cap in _CAPS_KIB:
            put(np.log2(a[f"traffic{cap}"] + 1))
        put(a["pointwise"], np.log2(a["per_sample"] + 1), (a["per_sample"] > 20480).astype(np.float64))
    if schema >= 3:
        put(*_cpu(t))
    assert j == width, (j, width)
    return out.T


def is_layerspec(x: Any) -> bool:
    """True for a :class:`~hwloop.workload.LayerSpec`, without importing :mod:`hwloop.workload` (nor torch):
    while that module is not imported, no ``LayerSpec`` can exist."""
    mod = sys.modules.get("hwloop.workload")
    return mod is not None and isinstance(x, mod.LayerSpec)


def featurize(specs: Sequence[LayerSpec]) -> np.ndarray:
    """``features_from_table(spec_table(specs))``."""
    return features_from_table(spec_table(specs))


def specs_from_any(x: Any) -> list[LayerSpec]:
    """Layer specs from a list of specs, a ``Workload`` or a store DataFrame (``spec_json`` column)."""
    if hasattr(x, "layers") and not hasattr(x, "columns"):
        return list(x.layers)
    if hasattr(x, "columns"):
        if "spec_json" not in x.columns:
            raise PredictorError(f"a DataFrame needs a 'spec_json' column (store rows of kind 'layer'), "
                                 f"got columns {list(x.columns)[:8]}")
        from hwloop.workload import LayerSpec

        out = []
        for v in x["spec_json"]:
            d = json.loads(v) if isinstance(v, str) else v
            out.append(LayerSpec.from_dict(d))
        return out
    specs = list(x)
    for s in specs:
        if not is_layerspec(s):
            raise PredictorError(f"expected LayerSpec objects, got {type(s).__name__}")
    return specs


def table_from_frame(df: Any) -> np.ndarray:
    """The raw table of a DataFrame: its :data:`RAW_COLUMNS` if all present (fast), else its specs."""
    if all(col in df.columns for col in RAW_COLUMNS):
        return df[list(RAW_COLUMNS)].to_numpy(dtype=np.float64)
    return spec_table(specs_from_any(df))
