"""Plain layer descriptions (dicts, JSON, DataFrames) to the raw spec table, without torch.

Tools outside PyTorch describe layers as plain data. :func:`table_of` accepts every input a
predictor's ``predict`` takes and returns the raw table (:data:`~hwloop.predict.features.RAW_COLUMNS`);
it imports only numpy (and pandas for a DataFrame):

* a list of dicts in :class:`~hwloop.workload.LayerSpec` form (``{"op": "conv2d", "in_shape":
  [1, 3, 32, 32], "out_channels": 16, "kernel": 3, "padding": 1}``; the fields and rules of
  ``LayerSpec.from_dict``, every op kind and shape), or a workload dict (``{"layers": [...]}``,
  ``Workload.to_dict()``, one line of ``workloads.jsonl``);
* a columnar batch (a mapping of arrays, a structured array, or a DataFrame with the columns of
  :mod:`hwloop.predict.columnar`), a DataFrame with the raw columns, or a store DataFrame
  (``spec_json`` column);
* ``LayerSpec`` objects or a ``Workload`` (those come from torch models, so torch is loaded anyway);
* a raw table (2-D float array).

:func:`read_layers` reads such descriptions from a JSON or JSON-lines file. The derivation of shapes,
MACs, parameters and bytes mirrors ``LayerSpec`` exactly (``tests/test_predict_plain.py`` compares
them on random specs and the built-in models' workloads).

Example:
    >>> from hwloop.predict.plain import table_of
    >>> t = table_of([{"op": "conv2d", "in_shape": [1, 8, 16, 16], "out_channels": 16, "kernel": 3,
    ...                "padding": 1}, {"op": "activation", "in_shape": [1, 16, 16, 16], "variant": "relu"}])
    >>> t.shape, int(t[0, 22])   # 2 layers x 25 raw columns; the conv's MACs
    ((2, 25), 294912)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.opkinds import DTYPES, OP_KINDS
from hwloop.predict import features as _features
from hwloop.predict.features import RAW_COLUMNS, VARIANTS, spec_table

__all__ = ["SPEC_FIELDS", "read_layers", "row_from_dict", "table_from_dicts", "table_of"]

#: the fields of a LayerSpec-form dict (``LayerSpec.to_dict()``)
SPEC_FIELDS = ("op", "in_shape", "out_shape", "in_channels", "out_channels", "kernel", "stride", "padding",
               "dilation", "groups", "bias", "variant", "dtype", "rank", "w_bits", "a_bits", "name")
_OP = {o: i for i, o in enumerate(OP_KINDS)}
_VAR = {v: i for i, v in enumerate(VARIANTS)}
#: run-time norms (groupnorm, instancenorm): LayerSpec ops coded as batchnorm rows (features.NORM_CODES)
_NORM_CODES: dict[str, tuple[int, int]] = dict(getattr(_features, "NORM_CODES", {}))
_OPS = (*OP_KINDS, *_NORM_CODES)
_MAX_FILE_BYTES = 256 << 20


def _ints(v: Any, name: str) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f"{name}={v!r} must be a list of integers")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) and not (isinstance(x, float) and x.is_integer()):
            raise ValueError(f"{name}={list(v)!r} must be a list of integers")
        out.append(int(x))
    return tuple(out)


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v), int(v))
    t = _ints(v, name)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"{name}={v!r} must be an int or a pair of ints")
    return t


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 4:
        return shape[2], shape[3]
    if len(shape) == 3:
        return shape[1], 1
    return 1, 1


def _spec_values(d: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a LayerSpec-form dict, validated and completed exactly as ``LayerSpec.__post_init__``."""
    extra = set(d) - set(SPEC_FIELDS)
    if extra:
        raise ValueError(f"unknown field(s) {sorted(extra)}; allowed: {', '.join(SPEC_FIELDS)}")
    if "op" not in d or "in_shape" not in d:
        raise ValueError("a layer needs 'op' and 'in_shape'")
    op, dtype = d["op"], d.get("dtype", "float32")
    if op not in _OPS:
        raise ValueError(f"op {op!r} is unknown; allowed: {', '.join(_OPS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    ins, outs = _ints(d["in_shape"], "in_shape"), _ints(d.get("out_shape", ()), "out_shape")
    k, s = _pair(d.get("kernel", 1), "kernel"), _pair(d.get("stride", 1), "stride")
    p, dil = _pair(d.get("padding", 0), "padding"), _pair(d.get("dilation", 1), "dilation")
    if not ins or any(x <= 0 for x in ins):
        raise ValueError(f"in_shape {ins} must be non-empty with positive sizes")
    if any(x <= 0 for x in outs):
        raise ValueError(f"out_shape {outs} must have positive sizes")
    if min(k + s + dil) < 1 or min(p) < 0:
        raise ValueError(f"kernel/stride/dilation must be >= 1 and padding >= 0, got {k}/{s}/{dil}/{p}")
    v: dict[str, Any] = {}
    for n, default in (("in_channels", 0), ("out_channels", 0), ("groups", 1)):
        x = d.get(n, default)
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"{n}={x!r} must be an integer >= 0 (0: taken from the shapes)")
        v[n] = int(x)
    cin, cout, g = v["in_channels"], v["out_channels"], v["groups"]
    if g < 1:
        raise ValueError(f"groups={g} must be >= 1")
    for n in ("rank", "w_bits", "a_bits"):
        x = d.get(n)
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1):
            raise ValueError(f"{n}={x!r} must be a positive int or None")
        v[n] = None if x is None else int(x)
    if (v["w_bits"] or 0) > 32 or (v["a_bits"] or 0) > 32:
        raise ValueError(f"bits must be <= 32, got w_bits={v['w_bits']} a_bits={v['a_bits']}")
    variant = d.get("variant", "")
    if not isinstance(variant, str):
        raise ValueError(f"variant={variant!r} must be a string")
    if op == "conv2d":
        if len(ins) != 4:
            raise ValueError(f"conv2d needs an NCHW in_shape, got {ins}")
        cin = cin or ins[1]
        if cin != ins[1]:
            raise ValueError(f"conv2d in_channels={cin} differs from in_shape[1]={ins[1]}")
        if cout < 1:
            raise ValueError("conv2d needs out_channels >= 1")
        if cin % g or cout % g:
            raise ValueError(f"groups={g} must divide in_channels={cin} and out_channels={cout}")
        oh = (ins[2] + 2 * p[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
        ow = (ins[3] + 2 * p[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d output would be empty for input {ins} kernel {k}")
        exp = (ins[0], cout, oh, ow)
        if outs and outs != exp:
            raise ValueError(f"conv2d out_shape {outs} differs from computed {exp}")
        outs = exp
    elif op in ("linear", "matmul"):
        cin = cin or ins[-1]
        if cin != ins[-1]:
            raise ValueError(f"{op} in_channels={cin} differs from in_shape[-1]={ins[-1]}")
        if cout < 1:
            raise ValueError(f"{op} needs out_channels >= 1")
        outs = outs or ins[:-1] + (cout,)
    else:
        if cin == 0 and len(ins) >= 2:
            cin = ins[1]
        if op == "pooling" and variant in ("max", "avg"):
            if len(ins) != 4:
                raise ValueError(f"{variant} pooling needs an NCHW in_shape, got {ins}")
            oh = (ins[2] + 2 * p[0] - k[0]) // s[0] + 1
            ow = (ins[3] + 2 * p[1] - k[1]) // s[1] + 1
            if oh < 1 or ow < 1 or 2 * max(p) > max(k):
                raise ValueError(f"{variant} pooling kernel {k} (padding {p}) does not fit input {ins}")
            outs = outs or ins[:2] + (oh, ow)
        outs = outs or ins
        if cout == 0 and len(outs) >= 2:
            cout = outs[1]
    if op == "groupnorm" and cin % g:
        raise ValueError(f"groupnorm groups={g} must divide its {cin} channels")
    if v["rank"] is not None and op not in ("conv2d", "linear"):
        raise ValueError(f"rank is only meaningful for conv2d/linear, not {op}")
    return {"op": op, "dtype": dtype, "in_shape": ins, "out_shape": outs, "cin": cin, "cout": cout, "k": k, "s": s,
            "p": p, "g": g, "bias": d.get("bias", False), "variant": variant, "rank": v["rank"],
            "w_bits": v["w_bits"], "a_bits": v["a_bits"]}


def row_from_dict(d: Mapping[str, Any]) -> tuple[float, ...]:
    """The raw-table row of one LayerSpec-form dict (equal to ``spec_table([LayerSpec.from_dict(d)])[0]``).

    Raises:
        ValueError: a field is unknown or out of range (the message says which).
    """
    x = _spec_values(d)
    op, ins, outs, cin, cout, k, g, rank = x["op"], x["in_shape"], x["out_shape"], x["cin"], x["cout"], x["k"], \
        x["g"], x["rank"]
    batch, in_el, out_el = ins[0], math.prod(ins), math.prod(outs)
    bias = cout if x["bias"] else 0
    kk = k[0] * k[1]
    if op == "conv2d":
        params = (kk * cin * rank // g + rank * cout if rank is not None else kk * cin * cout // g) + bias
    elif op == "linear":
        params = (rank * (cin + cout) if rank is not None else cin * cout) + bias
    else:
        params = 2 * cin if op == "batchnorm" or op in _NORM_CODES else 0
    if op == "conv2d" or ((op in ("pooling", "batchnorm") or op in _NORM_CODES) and len(outs) == 4):
        spatial = outs[2] * outs[3]
    elif op in ("linear", "matmul"):
        spatial = math.prod(outs[1:-1]) if len(outs) > 2 else 1
    else:
        spatial = 1
    if op == "conv2d":
        pos = batch * spatial
        macs = pos * (kk * cin * rank // g + rank * cout) if rank is not None else pos * kk * cin * cout // g
    elif op in ("linear", "matmul"):
        rows = math.prod(ins[:-1])
        macs = rows * rank * (cin + cout) if rank is not None else rows * cin * cout
    elif op == "pooling":
        macs = out_el * kk
    else:
        macs = out_el
    eb = DTYPES[x["dtype"]]
    a_b = x["a_bits"] / 8 if x["a_bits"] else eb
    w_b = x["w_bits"] / 8 if x["w_bits"] else eb
    n_in = in_el * (2 if op == "add" else 1)
    if op == "matmul":
        n_in += cin * cout * (batch if len(ins) > 2 else 1)
        moved = int(n_in * a_b + out_el * eb)
    else:
        moved = int(n_in * a_b + out_el * eb + params * w_b)
    ih, iw = _hw(ins)
    oh, ow = _hw(outs)
    code, var = _NORM_CODES.get(op) or (_OP[op], _VAR.get(x["variant"], len(VARIANTS)))
    return (code, var, eb, x["dtype"] == "bfloat16", batch, cin, cout, ih, iw,
            oh, ow, k[0], k[1], x["s"][0], x["p"][0], g, x["bias"], rank or 0, x["w_bits"] or 0, x["a_bits"] or 0,
            in_el, out_el, macs, params, moved)


def table_from_dicts(layers: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The raw table of LayerSpec-form dicts (torch-free; see :func:`row_from_dict`).

    Raises:
        PredictorError: one line naming the bad layer (its index and ``name``) and what is allowed.
    """
    rows = []
    for i, d in enumerate(layers):
        if not isinstance(d, Mapping):
            raise PredictorError(f"layer {i} is a {type(d).__name__}; a layer description is a dict")
        try:
            rows.append(row_from_dict(d))
        except (ValueError, TypeError, OverflowError) as e:
            name = d.get("name")
            raise PredictorError(f"layer {i}{f' ({name})' if name else ''}: {e}") from None
    if not rows:
        return np.zeros((0, len(RAW_COLUMNS)))
    return np.asarray(rows, dtype=np.float64)


def table_of(x: Any) -> np.ndarray:
    """The raw table of any input a predictor accepts (see the module docstring).

    Raises:
        PredictorError: the input is of no accepted kind, or a layer in it is invalid.
    """
    if isinstance(x, np.ndarray):
        if x.dtype.names is None:
            if x.ndim != 2 or x.shape[1] != len(RAW_COLUMNS):
                raise PredictorError(f"a raw table needs shape (n, {len(RAW_COLUMNS)}), got {x.shape}")
            return x
        from hwloop.predict.columnar import table_from_columns

        return table_from_columns(x)
    if isinstance(x, Mapping):
        if "layers" in x:  # a workload dict
            return table_of(list(x["layers"]))
        from hwloop.predict.columnar import table_from_columns

        return table_from_columns(x)
    if hasattr(x, "columns"):  # a DataFrame
        if all(c in x.columns for c in RAW_COLUMNS):
            return x[list(RAW_COLUMNS)].to_numpy(dtype=np.float64)
        if "spec_json" in x.columns:
            return table_from_dicts([json.loads(v) if isinstance(v, str) else v for v in x["spec_json"]])
        from hwloop.predict.columnar import _REQUIRED, table_from_columns

        if not all(c in x.columns for c in _REQUIRED):
            raise PredictorError(f"a DataFrame needs a 'spec_json' column (store rows of kind 'layer'), the columnar "
                                 f"columns ({', '.join(_REQUIRED)}, ...) or the raw columns; got columns "
                                 f"{list(x.columns)[:8]}")

        return table_from_columns(x)
    if hasattr(x, "layers"):  # a Workload
        x = x.layers
    if isinstance(x, (str, bytes, Path)):
        raise PredictorError(f"got a {type(x).__name__} ({str(x)[:60]!r}); to predict from a file, pass "
                             "hwloop.predict.plain.read_layers(path)")
    try:
        items = list(x)
    except TypeError:
        raise PredictorError(f"cannot predict a {type(x).__name__}; pass layer dicts, LayerSpecs, a Workload, a "
                             "DataFrame or a columnar batch") from None
    if not items:
        return np.zeros((0, len(RAW_COLUMNS)))
    if all(isinstance(s, Mapping) for s in items):
        return table_from_dicts(items)
    return spec_table(items)


def read_layers(path: Any) -> list[dict[str, Any]]:
    """Layer dicts from a JSON file (a list of layers, or a workload object with ``"layers"``) or a
    JSON-lines file (one layer, or one workload, per line; a ``.jsonl`` name).

    Raises:
        PredictorError: the file is missing, too large, not JSON, or holds no layer list.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_FILE_BYTES:
            raise PredictorError(f"layer file {str(p)!r} is larger than {_MAX_FILE_BYTES >> 20} MiB")
        text = p.read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise PredictorError(f"cannot read layer file {str(p)!r}: {type(e).__name__}") from None
    try:
        if p.suffix == ".jsonl":
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            docs = [json.loads(text)]
    except json.JSONDecodeError as e:
        raise PredictorError(f"layer file {str(p)!r} is not valid JSON: {e.msg} (line {e.lineno})") from None
    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, Mapping) and isinstance(doc.get("layers"), list):
            out.extend(doc["layers"])
        elif isinstance(doc, list):
            out.extend(doc)
        elif isinstance(doc, Mapping) and p.suffix == ".jsonl":
            out.append(dict(doc))
        else:
            raise PredictorError(f"layer file {str(p)!r} must hold a list of layers or an object with 'layers'")
    return out
