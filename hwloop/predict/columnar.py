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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict.features import RAW_COLUMNS, VARIANTS
from hwloop.opkinds import DTYPES, OP_KINDS

__all__ = ["BLOCK_ROWS", "COLUMNS", "ColumnarBatch", "prepare_columns", "table_from_columns", "unique_rows"]

#: columns a batch may carry; ``op``, ``batch`` and ``in_channels`` are required
COLUMNS = ("op", "batch", "in_channels", "out_channels", "in_h", "in_w", "kernel_h", "kernel_w", "stride", "padding",
           "groups", "bias", "rank", "w_bits", "a_bits", "variant", "dtype", "out_h", "out_w")
#: rows derived per block: the float64 intermediates of a block stay in the CPU's L2 cache
BLOCK_ROWS = 8192
_REQUIRED = ("op", "batch", "in_channels")
_OP = {o: i for i, o in enumerate(OP_KINDS)}
#: op kinds a columnar batch may hold (name -> OP_KINDS index)
_SUPPORTED = {o: _OP[o] for o in ("conv2d", "linear", "batchnorm", "activation", "pooling", "add")}
_VAR = {v: i for i, v in enumerate(VARIANTS)}
#: integer columns and their lower bounds
_BOUNDS = (("batch", 1), ("in_channels", 1), ("in_h", 1), ("in_w", 1), ("kernel_h", 1), ("kernel_w", 1),
           ("stride", 1), ("groups", 1), ("padding", 0), ("rank", 0), ("w_bits", 0), ("a_bits", 0),
           ("out_channels", 0))
_DEFAULTS = {"batch": 1.0, "in_channels": 1.0, "in_h": 1.0, "in_w": 1.0, "kernel_h": 1.0, "stride": 1.0,
             "padding": 0.0, "groups": 1.0, "bias": 0.0, "rank": 0.0, "w_bits": 0.0, "a_bits": 0.0,
             "out_channels": 0.0}


def _codes(v: np.ndarray, table: Mapping[str, int], what: str, unknown: int | None) -> np.ndarray:
    """Numeric codes of a name column: one vectorised comparison per allowed name (no sort of the strings)."""
    if v.dtype.kind in "iuf":
        return v.astype(np.float64)
    s = v if v.dtype.kind == "U" else v.astype(str)
    out = np.full(len(s), -1.0)
    left = len(s)
    for name, code in table.items():
        hit = s == name
        out[hit] = code
        left -= int(np.count_nonzero(hit))
        if left == 0:
            break
    if left:
        bad = out < 0
        if unknown is None:
            raise PredictorError(f"{what} {str(s[np.flatnonzero(bad)[0]])!r} is unknown; allowed: {', '.join(table)}")
        out[bad] = unknown
    return out


@dataclass(frozen=True)
class ColumnarBatch:
    """A columnar batch with its names resolved to codes; :meth:`rows` derives raw-table rows block by block.

    Built by :func:`prepare_columns` (which checks names, lengths and codes); the row-wise checks
    (integer ranges, groups, empty outputs) run in :meth:`rows` and name the row's index in the whole
    batch, so blocks can be derived independently (e.g. in worker threads).

    Example:
        >>> b = prepare_columns({"op": ["add", "linear"], "batch": [1, 2], "in_channels": [8, 16],
        ...                      "out_channels": [0, 4]})
        >>> b.n, b.rows(1, 2).shape
        (2, (1, 25))
    """

    n: int
    codes: Mapping[str, np.ndarray] = field(repr=False)
    given: Mapping[str, np.ndarray] = field(repr=False)

    def _col(self, name: str, lo: int, hi: int, default: Any = None) -> np.ndarray:
        v = self.given.get(name)
        if v is None:
            d = _DEFAULTS[name] if default is None else default
            return np.broadcast_to(np.asarray(d, dtype=np.float64), (hi - lo,)).astype(np.float64)
        return v[lo:hi].astype(np.float64)

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Raw-table rows ``start:stop`` (float64, ``len(RAW_COLUMNS)`` columns; C order).

        Raises:
            PredictorError: a value is out of range (the message names the column and the row).
        """
        lo, hi = max(0, start), self.n if stop is None else min(stop, self.n)
        n = max(0, hi - lo)
        op = self.codes["op"][lo:hi]
        variant, dtype_bytes, is_bf16 = (self.codes[k][lo:hi] for k in ("variant", "dtype_bytes", "is_bf16"))
        col = lambda name, default=None: self._col(name, lo, hi, default)
        b, cin = col("batch"), col("in_channels")
        ih, iw = col("in_h"), col("in_w")
        kh = col("kernel_h")
        kw = col("kernel_w", kh)
        stride, pad, groups = col("stride"), col("padding"), col("groups")
        bias, rank, wb, ab = col("bias"), col("rank"), col("w_bits"), col("a_bits")
        cout = col("out_channels")
        vals = {"batch": b, "in_channels": cin, "in_h": ih, "in_w": iw, "kernel_h": kh, "kernel_w": kw,
                "stride": stride, "groups": groups, "padding": pad, "rank": rank, "w_bits": wb, "a_bits": ab,
                "out_channels": cout}
        for name, bound in _BOUNDS:
            v = vals[name]
            bad = np.flatnonzero(~(v >= bound) | (v != np.floor(v)))
            if len(bad):
                raise PredictorError(f"column {name!r} row {lo + bad[0]} is {v[bad[0]]:g}; it must be an integer "
                                     f">= {bound}")
        conv, lin, pool = op == _OP["conv2d"], op == _OP["linear"], op == _OP["pooling"]
        gemm = conv | lin
        if np.any(~gemm & (rank > 0)):
            i = int(np.flatnonzero(~gemm & (rank > 0))[0])
            raise PredictorError(f"column 'rank' row {lo + i} is {rank[i]:g}; rank is only meaningful for "
                                 "conv2d/linear")
        cout = np.where(gemm, cout, np.where(cout > 0, cout, cin))
        if np.any(gemm & (cout < 1)):
            raise PredictorError(f"column 'out_channels' row {lo + int(np.flatnonzero(gemm & (cout < 1))[0])} must "
                                 "be >= 1 for conv2d/linear")
        if np.any(conv & ((cin % groups != 0) | (cout % groups != 0))):
            i = int(np.flatnonzero(conv & ((cin % groups != 0) | (cout % groups != 0)))[0])
            raise PredictorError(f"column 'groups' row {lo + i} is {groups[i]:g}; it must divide in_channels and "
                                 "out_channels")
        windowed = pool & ((variant == _VAR["max"]) | (variant == _VAR["avg"]))
        adaptive = pool & ~windowed
        c_oh = np.floor((ih + 2 * pad - (kh - 1) - 1) / stride) + 1
        c_ow = np.floor((iw + 2 * pad - (kw - 1) - 1) / stride) + 1
        p_oh = np.floor((ih + 2 * pad - kh) / stride) + 1
        p_ow = np.floor((iw + 2 * pad - kw) / stride) + 1
        oh = np.where(conv, c_oh, np.where(windowed, p_oh, col("out_h", ih)))
        ow = np.where(conv, c_ow, np.where(windowed, p_ow, col("out_w", iw)))
        oh = np.where(adaptive, col("out_h", 1.0), oh)
        ow = np.where(adaptive, col("out_w", 1.0), ow)
        oh, ow = np.where(lin, 1, oh), np.where(lin, 1, ow)
        if np.any((oh < 1) | (ow < 1)):
            i = int(np.flatnonzero((oh < 1) | (ow < 1))[0])
            raise PredictorError(f"row {lo + i}: the output would be empty (input {ih[i]:g}x{iw[i]:g}, "
                                 f"kernel {kh[i]:g})")
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
        win = conv | windowed
        out = {"op": op, "variant": variant, "dtype_bytes": dtype_bytes, "is_bf16": is_bf16,
               "batch": b, "in_channels": cin, "out_channels": cout, "in_h": ih, "in_w": iw, "out_h": oh,
               "out_w": ow, "kernel_h": np.where(win, kh, 1), "kernel_w": np.where(win, kw, 1),
               "stride": np.where(win, stride, 1), "padding": np.where(win, pad, 0), "groups": np.where(conv, groups, 1),
               "bias": (bias > 0).astype(np.float64), "rank": rank, "w_bits": wb, "a_bits": ab, "in_elements": in_el,
               "out_elements": out_el, "macs": macs, "params": params, "bytes_moved": moved}
        table = np.empty((n, len(RAW_COLUMNS)))
        for j, c in enumerate(RAW_COLUMNS):
            table[:, j] = out[c]
        return table


def prepare_columns(batch: Any) -> ColumnarBatch:
    """Check a columnar batch's names and lengths and resolve its name columns to codes.

    Args:
        batch: a mapping of column name → array (or a DataFrame, or a structured array); see the
            module docstring for the columns.

    Raises:
        PredictorError: a required column is missing, a column is unknown, lengths differ, or an op,
            variant or dtype name is unknown.
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
    cols = {c: np.asarray(batch[c]) for c in names}
    n = len(cols["op"])
    for name, v in cols.items():
        if v.shape != (n,):
            raise PredictorError(f"column {name!r} has shape {v.shape}; every column needs shape ({n},)")
    op = _codes(cols["op"], _SUPPORTED, "op", None)
    supported = np.isin(op, list(_SUPPORTED.values()))
    if not supported.all():
        i = int(np.flatnonzero(~supported)[0])
        what = OP_KINDS[int(op[i])] if 0 <= op[i] < len(OP_KINDS) and op[i] == int(op[i]) else f"{op[i]:g}"
        raise PredictorError(f"column 'op' row {i} is {what!r}; columnar batches support conv2d, linear, batchnorm, "
                             "activation, pooling and add")
    var_col = cols.get("variant")
    variant = np.zeros(n) if var_col is None else _codes(var_col, _VAR, "variant", len(VARIANTS))
    dt_col = cols.get("dtype")
    dtype_bytes = np.full(n, 4.0) if dt_col is None else _codes(dt_col, dict(DTYPES), "dtype", None)
    if dt_col is None or dt_col.dtype.kind in "iuf":
        is_bf16 = np.zeros(n)
    else:
        is_bf16 = (dt_col == "bfloat16" if dt_col.dtype.kind == "U" else dt_col.astype(str) == "bfloat16")
        is_bf16 = is_bf16.astype(np.float64)
    given = {}
    for name, v in cols.items():
        if name in ("op", "variant", "dtype"):
            continue
        if v.dtype.kind not in "iufb":
            try:
                v = v.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise PredictorError(f"column {name!r} must be numeric, got dtype {v.dtype}") from e
        given[name] = v
    return ColumnarBatch(n, {"op": op, "variant": variant, "dtype_bytes": dtype_bytes, "is_bf16": is_bf16}, given)


def table_from_columns(batch: Any, *, threads: int = 1) -> np.ndarray:
    """The raw spec table (:data:`~hwloop.predict.features.RAW_COLUMNS`) of a columnar batch.

    Derived in blocks of :data:`BLOCK_ROWS` rows (cache-sized), equal to ``spec_table`` of the
    same layers.

    Args:
        batch: a mapping of column name → array (or a DataFrame, or a structured array); see the
            module docstring for the columns.
        threads: derive blocks in this many threads (numpy releases the GIL).

    Raises:
        PredictorError: a required column is missing, lengths differ, a name is unknown, or a
            value is out of range (the message names the column and a bad row).
    """
    b = prepare_columns(batch)
    out = np.empty((b.n, len(RAW_COLUMNS)))
    starts = list(range(0, b.n, BLOCK_ROWS))

    def run(part: list[int]) -> None:
        for s in part:
            out[s:s + BLOCK_ROWS] = b.rows(s, s + BLOCK_ROWS)

    if threads <= 1 or len(starts) < 2:
        run(starts)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, [starts[w::threads] for w in range(threads)]))
    return out


def unique_rows(table: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact de-duplication of a raw table's rows: ``(first, inverse)`` with ``table[first][inverse] == table``.

    Rows are grouped by a random projection (one matrix-vector product and a hash table over one
    float column, far cheaper than ``np.unique(table, axis=0)``); every row grouped with an earlier one is
    then compared with it in full, and a row that differs (a projection collision) keeps a group of
    its own, so the result is exact. ``first`` lists each group's first row in order of appearance.

    Example:
        >>> import numpy as np
        >>> t = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
        >>> first, inv = unique_rows(t)
        >>> first.tolist(), inv.tolist()
        ([0, 1], [0, 1, 0])
    """
    t = np.asarray(table, dtype=np.float64)
    n = t.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    import pandas as pd

    proj = t @ np.random.default_rng(seed).standard_normal(t.shape[1])
    codes, _ = pd.factorize(proj, use_na_sentinel=False)  # hash table; codes in order of first appearance
    inv = np.asarray(codes, dtype=np.int64)
    seen = np.maximum.accumulate(inv)
    is_first = np.empty(n, dtype=bool)
    is_first[0] = True
    is_first[1:] = inv[1:] > seen[:-1]  # a group's first row has a code above every earlier one
    first = np.flatnonzero(is_first)
    dup = np.flatnonzero(first[inv] != np.arange(n))
    if len(dup):
        bad = dup[~np.all(t[dup] == t[first[inv[dup]]], axis=1)]
        if len(bad):  # projection collisions (or NaN rows): each keeps its own group
            inv[bad] = len(first) + np.arange(len(bad))
            first = np.concatenate([first, bad])
    return first, inv
