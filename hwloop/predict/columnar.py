"""Columnar layer batches: the raw spec table computed with numpy, no ``LayerSpec`` objects.

Building a million ``LayerSpec`` objects and reading their properties costs far more than
predicting them. A columnar batch gives each field as an array (a mapping of arrays, a
``pandas.DataFrame`` or a numpy structured array), and :func:`table_from_columns` derives
shapes, MACs, parameters and bytes exactly as :class:`~hwloop.workload.LayerSpec` does, in one
vectorised pass. Every predictor's ``predict`` accepts such a batch.

Columns (missing optional columns take the default):

============== =========================================================== ============
column         meaning                                                     default
============== =========================================================== ============
op             op kind name (``conv2d``...) or its index in ``OP_KINDS``   required
batch          batch size                                                  required
in_channels    input channels (features for linear)                        required
out_channels   output channels (0: same as in_channels for non-GEMM ops)   0
in_h, in_w     input height / width (1 for linear)                         1
kernel_h/_w    kernel size (``kernel_w`` defaults to ``kernel_h``)         1
stride         stride (both dims)                                          1
padding        padding (both dims)                                         0
groups         conv groups                                                 1
bias           1 if the op has a bias                                      0
rank           low-rank rank (0: dense)                                    0
w_bits/a_bits  bit widths (0: the device default)                          0
variant        activation/pooling variant name or index in ``VARIANTS``    ""
dtype          ``float32``/``float16``/``bfloat16``                        float32
out_h, out_w   output size (computed for conv2d and max/avg pooling)       in_h, in_w
============== =========================================================== ============

Supported shapes: NCHW ops (conv2d, batchnorm, activation, pooling, add) and 2-D ``linear``
(``(batch, in_channels)``); dilation 1. Specs of other shapes go through
:func:`~hwloop.predict.features.spec_table`.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.columnar import table_from_columns
    >>> from hwloop.predict.features import spec_table
    >>> from hwloop.workload import LayerSpec
    >>> t = table_from_columns({"op": ["conv2d"], "batch": [1], "in_channels": [8], "out_channels": [16],
    ...                         "in_h": [16], "in_w": [16], "kernel_h": [3], "padding": [1]})
    >>> s = LayerSpec("conv2d", (1, 8, 16, 16), out_channels=16, kernel=3, padding=1)
    >>> bool(np.array_equal(t, spec_table([s])))
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict.features import RAW_COLUMNS, VARIANTS
from hwloop.workload import DTYPES, OP_KINDS

__all__ = ["COLUMNS", "table_from_columns"]

#: columns a batch may carry; ``op``, ``batch`` and ``in_channels`` are required
COLUMNS = ("op", "batch", "in_channels", "out_channels", "in_h", "in_w", "kernel_h", "kernel_w", "stride", "padding",
           "groups", "bias", "rank", "w_bits", "a_bits", "variant", "dtype", "out_h", "out_w")
_REQUIRED = ("op", "batch", "in_channels")
_OP = {o: i for i, o in enumerate(OP_KINDS)}
#: op kinds a columnar batch may hold (name -> OP_KINDS index)
_SUPPORTED = {o: _OP[o] for o in ("conv2d", "linear", "batchnorm", "activation", "pooling", "add")}
_VAR = {v: i for i, v in enumerate(VARIANTS)}


def _get(batch: Any, name: str) -> np.ndarray | None:
    names = batch.dtype.names if isinstance(batch, np.ndarray) else list(batch.keys())
    return np.asarray(batch[name]) if name in names else None


def _codes(v: np.ndarray, table: dict[str, int], what: str, unknown: int | None) -> np.ndarray:
    if v.dtype.kind in "iuf":
        return v.astype(np.float64)
    uniq, inv = np.unique(v.astype(str), return_inverse=True)
    codes = []
    for u in uniq:
        if u in table:
            codes.append(table[u])
        elif unknown is not None:
            codes.append(unknown)
        else:
            raise PredictorError(f"{what} {str(u)!r} is unknown; allowed: {', '.join(table)}")
    return np.asarray(codes, dtype=np.float64)[inv.reshape(-1)]


def table_from_columns(batch: Any) -> np.ndarray:
    """The raw spec table (:data:`~hwloop.predict.features.RAW_COLUMNS`) of a columnar batch.

    Args:
        batch: a mapping of column name → array (or a DataFrame, or a structured array); see the
            module docstring for the columns.

    Raises:
        PredictorError: a required column is missing, lengths differ, a name is unknown, or a
            value is out of range (the message names the column and the first bad row).
    """
    if hasattr(batch, "columns") and not isinstance(batch, dict):  # DataFrame
        batch = {c: batch[c].to_numpy() for c in batch.columns}
    names = batch.dtype.names if isinstance(batch, np.ndarray) else list(batch.keys())
    if names is None:
        raise PredictorError("a columnar batch needs named columns (a mapping or a structured array)")
    missing = [c for c in _REQUIRED if c not in names]
    if missing:
        raise PredictorError(f"a columnar batch needs columns {missing}; it has {sorted(names)}")
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown:
        raise PredictorError(f"columnar batch columns {unknown} are unknown; allowed: {', '.join(COLUMNS)}")
    op_col = _get(batch, "op")
    assert op_col is not None
    n = len(op_col)

    def col(name: str, default: float | np.ndarray) -> np.ndarray:
        v = _get(batch, name)
        if v is None:
            return np.broadcast_to(np.asarray(default, dtype=np.float64), (n,)).astype(np.float64)
        if v.shape != (n,):
            raise PredictorError(f"column {name!r} has shape {v.shape}; every column needs shape ({n},)")
        return v.astype(np.float64)

    op = _codes(op_col, _SUPPORTED, "op", None)
    var_col = _get(batch, "variant")
    variant = np.zeros(n) if var_col is None else _codes(var_col, _VAR, "variant", len(VARIANTS))
    dt_col = _get(batch, "dtype")
    dtype_bytes = np.full(n, 4.0) if dt_col is None else _codes(dt_col, dict(DTYPES), "dtype", None)
    is_bf16 = np.zeros(n) if dt_col is None or dt_col.dtype.kind in "iuf" else (dt_col.astype(str) == "bfloat16")
    b, cin = col("batch", 1), col("in_channels", 1)
    ih, iw = col("in_h", 1), col("in_w", 1)
    kh = col("kernel_h", 1)
    kw = col("kernel_w", kh)
    stride, pad, groups = col("stride", 1), col("padding", 0), col("groups", 1)
    bias, rank, wb, ab = col("bias", 0), col("rank", 0), col("w_bits", 0), col("a_bits", 0)
    cout = col("out_channels", 0)
    for name, v, lo in (("batch", b, 1), ("in_channels", cin, 1), ("in_h", ih, 1), ("in_w", iw, 1),
                        ("kernel_h", kh, 1), ("kernel_w", kw, 1), ("stride", stride, 1), ("groups", groups, 1),
                        ("padding", pad, 0), ("rank", rank, 0), ("w_bits", wb, 0), ("a_bits", ab, 0),
                        ("out_channels", cout, 0)):
        bad = np.flatnonzero(~(v >= lo) | (v != np.floor(v)))
        if len(bad):
            raise PredictorError(f"column {name!r} row {bad[0]} is {v[bad[0]]!r}; it must be an integer >= {lo}")
    if np.any(~np.isin(op, list(_SUPPORTED.values()))):
        i = int(np.flatnonzero(~np.isin(op, list(_SUPPORTED.values())))[0])
        raise PredictorError(f"column 'op' row {i} is {OP_KINDS[int(op[i])]!r}; columnar batches support conv2d, "
                             "linear, batchnorm, activation, pooling and add")
    conv, lin, pool = op == _OP["conv2d"], op == _OP["linear"], op == _OP["pooling"]
    gemm = conv | lin
    if np.any(~gemm & (rank > 0)):
        i = int(np.flatnonzero(~gemm & (rank > 0))[0])
        raise PredictorError(f"column 'rank' row {i} is {rank[i]:g}; rank is only meaningful for conv2d/linear")
    cout = np.where(gemm, cout, np.where(cout > 0, cout, cin))
    if np.any(gemm & (cout < 1)):
        raise PredictorError(f"column 'out_channels' row {int(np.flatnonzero(gemm & (cout < 1))[0])} must be >= 1 "
                             "for conv2d/linear")
    if np.any(conv & ((cin % groups != 0) | (cout % groups != 0))):
        i = int(np.flatnonzero(conv & ((cin % groups != 0) | (cout % groups != 0)))[0])
        raise PredictorError(f"column 'groups' row {i} is {groups[i]:g}; it must divide in_channels and out_channels")
    windowed = pool & ((variant == _VAR["max"]) | (variant == _VAR["avg"]))
    adaptive = pool & ~windowed
    c_oh = np.floor((ih + 2 * pad - (kh - 1) - 1) / stride) + 1
    c_ow = np.floor((iw + 2 * pad - (kw - 1) - 1) / stride) + 1
    p_oh = np.floor((ih + 2 * pad - kh) / stride) + 1
    p_ow = np.floor((iw + 2 * pad - kw) / stride) + 1
    oh = np.where(conv, c_oh, np.where(windowed, p_oh, col("out_h", ih)))
    ow = np.where(conv, c_ow, np.where(windowed, p_ow, col("out_w", iw)))
    oh = np.where(adaptive, col("out_h", 1), oh)
    ow = np.where(adaptive, col("out_w", 1), ow)
    oh, ow = np.where(lin, 1, oh), np.where(lin, 1, ow)
    if np.any((oh < 1) | (ow < 1)):
        i = int(np.flatnonzero((oh < 1) | (ow < 1))[0])
        raise PredictorError(f"row {i}: the output would be empty (input {ih[i]:g}x{iw[i]:g}, kernel {kh[i]:g})")
    ih, iw = np.where(lin, 1, ih), np.where(lin, 1, iw)
    in_el = b * cin * ih * iw
    out_el = b * cout * oh * ow
    kk = kh * kw
    dense = rank == 0
    params = np.select(
        [conv & dense, conv, lin & dense, lin, op == _OP["batchnorm"]],
        [kk * cin * cout // groups, kk * cin * rank // groups + rank * cout, cin * cout, rank * (cin + cout),
         2 * cin], 0) + np.where(gemm, cout * (bias > 0), 0)
    pos = b * oh * ow
    macs = np.select(
        [conv & dense, conv, lin & dense, lin, pool],
        [pos * (kk * cin * cout // groups), pos * (kk * cin * rank // groups + rank * cout), b * cin * cout,
         b * rank * (cin + cout), out_el * kk], out_el)
    a_b = np.where(ab > 0, ab / 8, dtype_bytes)
    w_b = np.where(wb > 0, wb / 8, dtype_bytes)
    n_in = in_el * np.where(op == _OP["add"], 2, 1)
    moved = np.floor(n_in * a_b + out_el * dtype_bytes + params * w_b)
    # pooling/activation/... carry no kernel in LayerSpec unless windowed
    ker_h = np.where(conv | windowed, kh, 1)
    ker_w = np.where(conv | windowed, kw, 1)
    st = np.where(conv | windowed, stride, 1)
    pd = np.where(conv | windowed, pad, 0)
    grp = np.where(conv, groups, 1)
    out = {"op": op, "variant": variant, "dtype_bytes": dtype_bytes, "is_bf16": is_bf16.astype(np.float64),
           "batch": b, "in_channels": cin, "out_channels": cout, "in_h": ih, "in_w": iw, "out_h": oh, "out_w": ow,
           "kernel_h": ker_h, "kernel_w": ker_w, "stride": st, "padding": pd, "groups": grp,
           "bias": (bias > 0).astype(np.float64), "rank": rank,
           "w_bits": wb, "a_bits": ab, "in_elements": in_el, "out_elements": out_el, "macs": macs,
           "params": params, "bytes_moved": moved}
    return np.column_stack([out[c] for c in RAW_COLUMNS])
