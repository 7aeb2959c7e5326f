"""Fused feature + baseline kernel for large batches (optional: numba, the ``fast`` extra).

Without numba the batched path computes features with numpy (:mod:`hwloop.predict.features_fast`): ~350
numpy passes over each block, whose cost rivals the trees' own. With numba installed
(``pip install hwloop[fast]``), :func:`jit_block` computes a block's features, baseline terms and baseline in
one pass over its rows, writing each row of the feature matrix once (row-major, the layout XGBoost reads
fastest). The float64 arithmetic is the reference's (:func:`~hwloop.predict.features.reference_features`:
the same operations in the same order, no fast-math, no fused multiply-add; only exact shortcuts such as
``x / 1 == x`` and ``x / 2**k == x * 2**-k``), and every ``log2`` is numpy's: the kernel collects the
arguments of 1,024 rows, numpy's ``log2`` writes them into the matrix, whose columns are in
:func:`order` (the logarithms last) and which a copy of the booster with renumbered split indices
(:func:`permuted_booster`) predicts. So the float32 features are bit-identical to the reference's. The
baseline sums its 18 terms in a fixed order (the reference's BLAS product may differ in a float64 last bit;
``tests/test_predict_throughput.py`` compares the predictions).

Used by :class:`~hwloop.predict.learned.XGBoostPredictor` for a batch of at least :data:`JIT_MIN_ROWS`
rows when numba imports and ``HWLOOP_NO_JIT`` is unset, in chunks of its ``batch_rows``; the kernel is
compiled on first use and cached by numba (``__pycache__``). A value that is not finite or an op code
outside 0..7 makes :func:`jit_block` return None (the numpy path handles such rows, errors included).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from hwloop.predict.features import RAW_COLUMNS, feature_names

__all__ = ["JIT_MIN_ROWS", "LOG_COLS", "available", "jit_block", "order", "permuted_booster"]

#: batches of at least this many rows use the kernel (its first use in a process loads numba)
JIT_MIN_ROWS = 16384
#: rows whose log2 arguments are collected at a time (~0.4 MB: they stay in the CPU's L2 cache; 1,024 was
#: faster than 4,096 or 16,384 in two interleaved runs on this box)
_SUB_ROWS = 1024
#: feature indices that are ``log2`` of an argument the kernel collects (all ``log2(x + 1)`` except the
#: groups-per-fold features 76, 81, 86: ``log2(gpf)``)
LOG_COLS: dict[int, tuple[int, ...]] = {1: (30, 31, 32, 33, 34, 51, 55, 56, 57, 61, 62, 63, 67, 68, 69, 70, 71)}
LOG_COLS[2] = (*LOG_COLS[1], *range(72, 90), *range(91, 97), 98)
LOG_COLS[3] = (*LOG_COLS[2], 102, 104, 105, 106, 107)
_kernels: list[Any] = []


def _compile() -> Any:
    if _kernels:
        return _kernels[0]
    nb = importlib.import_module("numba")
    jit = nb.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @jit
    def kernel(t, schema, out, pos, la, lut, cm, base):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        n = t.shape[0]
        terms = np.empty(18)
        for i in range(n):
            for k in range(25):
                if not np.isfinite(t[i, k]):
                    return False
            op = t[i, 0]
            if not (op >= 0 and op <= 7 and op == np.floor(op)):
                return False
            opi = int(op)
            db, b, cin, cout = t[i, 2], t[i, 4], t[i, 5], t[i, 6]
            ih, iw, oh, ow, kh, kw = t[i, 7], t[i, 8], t[i, 9], t[i, 10], t[i, 11], t[i, 12]
            stride, groups, rank, wbits, abits = t[i, 13], t[i, 15], t[i, 17], t[i, 18], t[i, 19]
            in_el, out_el, macs, params, nbytes = t[i, 20], t[i, 21], t[i, 22], t[i, 23], t[i, 24]
            for k in range(8):
                out[i, pos[k]] = 1.0 if k == opi else 0.0
            for k in range(19):
                out[i, pos[8 + k]] = t[i, 1 + k]
            native = 8 * db
            wb = wbits if wbits > 0 else native
            ab = abits if abits > 0 else native
            out[i, pos[27]] = wb * ab
            out[i, pos[28]] = 1.0 if (groups > 1 and groups == cin) else 0.0
            g = max(groups, 1.0)
            # exact shortcuts only: x / 1 == x; x / 2^k == x * 2^-k; RN(2^k * 16 / y) == 2^k * RN(16 / y)
            out[i, pos[29]] = cin if g == 1.0 else cin / g
            la[i, 0] = macs + 1
            la[i, 1] = nbytes + 1
            la[i, 2] = params + 1
            la[i, 3] = in_el + 1
            la[i, 4] = out_el + 1
            out[i, pos[35]] = macs / max(nbytes, 1.0)
            out[i, pos[36]] = oh * ow
            ici, ico, irk = np.int64(cin), np.int64(cout), np.int64(rank)
            out[i, pos[37]], out[i, pos[38]], out[i, pos[39]], out[i, pos[40]] = ici & 7, ici & 15, ici & 31, ici & 63
            out[i, pos[41]], out[i, pos[42]], out[i, pos[43]], out[i, pos[44]] = ico & 7, ico & 15, ico & 31, ico & 63
            out[i, pos[45]], out[i, pos[46]] = irk & 7, irk & 15
            c1, c2 = max(cin, 1.0), max(cout, 1.0)
            p_in32 = p_out32 = 1.0
            for j in range(4):
                m = 8.0 * 2 ** j
                inv = 0.125 / 2 ** j
                ui = np.ceil(c1 * inv) * m
                uo = np.ceil(c2 * inv) * m
                pi = 1.0 if ui == c1 else ui / c1
                po = 1.0 if uo == c2 else uo / c2
                out[i, pos[47 + j]] = pi * po
                if j == 2:
                    p_in32, p_out32 = pi, po
            la[i, 5] = macs * p_in32 * p_out32 + 1
            conv = opi == 0
            dense = opi == 1 or opi == 2
            bo = b * oh * ow
            mm = bo if conv else (in_el / c1 if dense else out_el)
            kk = (cin if g == 1.0 else cin / g) * kh * kw if conv else (cin if dense else 1.0)
            nn = (rank if rank > 0 else (cout if (g == 1.0 or not conv) else cout / g)) if (conv or dense) else 1.0
            reps = g if conv else 1.0
            out[i, pos[52]], out[i, pos[53]], out[i, pos[54]] = mm, kk, nn
            la[i, 6], la[i, 7], la[i, 8] = mm + 1, kk + 1, nn + 1
            ck16, ck32, ck64 = np.ceil(kk * 0.0625), np.ceil(kk * 0.03125), np.ceil(kk * 0.015625)
            cn16, cn32, cn64 = np.ceil(nn * 0.0625), np.ceil(nn * 0.03125), np.ceil(nn * 0.015625)
            cn128 = np.ceil(nn * 0.0078125)
            f16, f32, f64 = ck16 * cn16 * reps, ck32 * cn32 * reps, ck64 * cn64 * reps
            out[i, pos[58]], out[i, pos[59]], out[i, pos[60]] = f16, f32, f64
            la[i, 9] = f16 * (mm + 32.0) + 1
            la[i, 10] = f32 * (mm + 64.0) + 1
            la[i, 11] = f64 * (mm + 128.0) + 1
            if rank > 0:
                out[i, pos[64]] = np.ceil(rank * 0.0625) * np.ceil(cout * 0.0625)
                out[i, pos[65]] = np.ceil(rank * 0.03125) * np.ceil(cout * 0.03125)
                out[i, pos[66]] = np.ceil(rank * 0.015625) * np.ceil(cout * 0.015625)
            else:
                out[i, pos[64]] = out[i, pos[65]] = out[i, pos[66]] = 0.0
            la[i, 12] = f32 * (mm + 32.0 + 32.0) + 1
            la[i, 13] = ck32 * cn64 * reps * (mm + 32.0 + 64.0) + 1
            la[i, 14] = ck32 * cn128 * reps * (mm + 32.0 + 128.0) + 1
            la[i, 15] = f16 * (mm + 16.0 + 16.0) + 1
            la[i, 16] = f64 * (mm + 64.0 + 64.0) + 1
            if schema < 2:
                continue
            packed = wbits > 0 and wbits < 8
            pack = min(max(np.floor(8 / max(wbits, 1.0)), 1.0), 4.0) if packed else 1.0
            qk = 16.0 / kk
            qn = 16.0 / nn
            for j in range(3):
                w = 16.0 * 2 ** j
                sc = 2.0 ** j
                ckw = ck16 if j == 0 else (ck32 if j == 1 else ck64)
                if packed:
                    ce = w * pack
                    cen = ce / nn
                    cnce = np.ceil(nn / ce)
                else:
                    ce = w
                    cen = qn * sc
                    cnce = cn16 if j == 0 else (cn32 if j == 1 else cn64)
                gpf = max(1.0, min(np.floor(qk * sc), np.floor(cen))) if (kk <= w and nn <= ce) else 1.0
                cr = 1.0 if (reps == 1.0 and gpf <= 64.0) else np.ceil(reps / gpf)  # ceil(1 / gpf) == 1
                folds = ckw * cnce * cr
                m2 = mm + 2 * w - 2
                work = folds * m2 + w
                if rank > 0:
                    cc = np.ceil(cout / ce) if packed else np.ceil(cout * (0.0625 / sc))
                    low = np.ceil(rank * (0.0625 / sc)) * cc * m2 + w
                else:
                    low = 0.0
                terms[2 * j], terms[2 * j + 1] = work, low
                la[i, 17 + 5 * j] = folds + 1
                la[i, 18 + 5 * j] = work + 1
                la[i, 19 + 5 * j] = low + 1
                la[i, 20 + 5 * j] = work + low + 1
                la[i, 21 + 5 * j] = gpf
            wsel = wbits if wbits > 0 else native
            asel = abits if abits > 0 else native
            w_b = params * wsel * 0.125
            i_b = in_el * asel * 0.125
            o_b = out_el * asel * 0.125
            la[i, 32], la[i, 33], la[i, 34] = w_b + 1, i_b + 1, o_b + 1
            out[i, pos[90]] = pack
            for j in range(6):
                inv_cap = 1.0 / (32768.0 * 2 ** j)  # an exact power of two
                nw = max(1.0, np.ceil(w_b * inv_cap))
                ni = max(1.0, np.ceil(i_b * inv_cap))
                tr = min(w_b + i_b * nw, w_b * ni + i_b) + o_b
                terms[6 + j] = tr
                la[i, 35 + j] = tr + 1
            ps = in_el if b == 1.0 else in_el / max(b, 1.0)
            out[i, pos[97]] = 1.0 if (kh == 1 and stride == 1 and op == 0) else 0.0
            la[i, 41] = ps + 1
            out[i, pos[99]] = 1.0 if ps > 20480 else 0.0
            terms[12], terms[13], terms[14], terms[15], terms[16], terms[17] = w_b, i_b, o_b, in_el, out_el, 1.0
            if cm.shape[0] > 0:
                r = lut[opi]
                s = 0.0
                for j in range(18):
                    s += terms[j] * cm[r, j]
                base[i] = max(s, 1e-7)
            if schema < 3:
                continue
            k_area = kh * kw
            pw_s1 = kh == 1 and kw == 1 and stride == 1
            big = g > 1 or (kh > 3 and kw > 3) or b > 1 or b * cin * ih * iw > 20480
            onednn = op == 0 and (not pw_s1 or b >= 16) and big
            lowrank = op == 0 and rank > 0
            first_out = rank if rank > 0 else cout
            x = (bo * cin if g == 1.0 else bo * cin / g) * k_area
            out[i, pos[100]] = 1.0 if onednn else 0.0
            out[i, pos[101]] = 1.0 if (onednn and stride > 1) else 0.0
            la[i, 42] = (x if (op == 0 and not onednn) else 0.0) + 1
            out[i, pos[103]] = 1.0 if (lowrank and b >= 16) else 0.0
            la[i, 43] = (x * first_out if op == 0 else 0.0) + 1
            la[i, 44] = (bo * rank * cout if lowrank else 0.0) + 1
            la[i, 45] = (bo * first_out if op == 0 else 0.0) + 1
            la[i, 46] = (rank * oh * ow if lowrank else 0.0) + 1
        return True

    _kernels.append(kernel)
    return _kernels[0]


def available() -> bool:
    """True when numba imports and ``HWLOOP_NO_JIT`` is unset (the kernel is then used for large batches)."""
    if os.environ.get("HWLOOP_NO_JIT"):
        return False
    if _kernels:
        return True
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True


def order(schema: int) -> np.ndarray:
    """The kernel's column order: ``order(schema)[j]`` is the feature in column ``j`` of :func:`jit_block`'s
    matrix (the features that are not logarithms in their own order, then :data:`LOG_COLS`), so numpy's
    ``log2`` writes the logarithms straight into the matrix; :func:`permuted_booster` reads this order."""
    logs = LOG_COLS[schema]
    return np.asarray([c for c in range(len(feature_names(schema))) if c not in logs] + list(logs), dtype=np.int64)


def permuted_booster(booster: Any, schema: int) -> Any:
    """A copy of an XGBoost booster that reads features in :func:`order` (each split's feature index
    renumbered; thresholds, leaves and everything else unchanged: the same predictions)."""
    import json

    import xgboost as xgb

    model = json.loads(bytes(booster.save_raw("json")))
    where = np.empty(len(order(schema)), dtype=np.int64)
    where[order(schema)] = np.arange(len(where))
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        tree["split_indices"] = [int(where[i]) for i in tree["split_indices"]]
    for key in ("feature_names", "feature_types"):
        if model["learner"].get(key):
            model["learner"][key] = [model["learner"][key][i] for i in order(schema)]
    out = xgb.Booster(params={"nthread": int(json.loads(booster.save_config())["learner"]["generic_param"]
                                             ["nthread"])})
    out.load_model(bytearray(json.dumps(model).encode()))
    return out


def _buffer(scratch: dict[str, np.ndarray] | None, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if scratch is None:
        return np.empty(shape, dtype=dtype)
    buf = scratch.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = scratch[name] = np.empty(shape, dtype=dtype)
    return buf


def jit_block(rows: np.ndarray, schema: int, coef: Any, scratch: dict[str, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(features, margin)`` of raw-table rows: the features as a C-ordered float32 ``(n, width)`` array with
    its columns in :func:`order` (``features[:, j]`` is feature ``order(schema)[j]``, bit-identical to
    :func:`~hwloop.predict.features.reference_features`; predict it with :func:`permuted_booster`) and, with
    baseline coefficients ``coef``, ``log(baseline_ms)`` as float32 (else None). None when a value is not
    finite or an op code is invalid (then use the numpy path). ``scratch``: a dict whose buffers are reused
    from call to call (the features returned then live in it until the next call)."""
    t = np.ascontiguousarray(rows, dtype=np.float64)
    n = t.shape[0]
    if t.ndim != 2 or t.shape[1] != len(RAW_COLUMNS) or n == 0 or (coef is not None and schema < 2):
        return None
    kernel = _compile()
    width = len(feature_names(schema))
    n_log = len(LOG_COLS[schema])
    pos = np.empty(width, dtype=np.int64)
    pos[order(schema)] = np.arange(width)
    out = _buffer(scratch, "out", (n, width), np.float32)
    sub = min(n, _SUB_ROWS)
    la = _buffer(scratch, "la", (sub, n_log), np.float64)
    lut = np.zeros(8, dtype=np.int64)
    if coef is None:
        cm = np.zeros((0, 18))
    else:
        keys = [k for k in coef["per_op"] if 0 <= int(k) < 8]
        cm = np.asarray([coef["global"], *(coef["per_op"][k] for k in keys)], dtype=np.float64)
        for j, k in enumerate(keys):
            lut[int(k)] = j + 1
    base = _buffer(scratch, "base", (n,), np.float64)
    for s in range(0, n, sub):  # log2 arguments in cache-sized pieces; numpy's log2 writes into the matrix
        e = min(n, s + sub)
        part = la[:e - s]
        if not kernel(t[s:e], schema, out[s:e], pos, part, lut, cm, base[s:e]):
            return None  # a value that is not finite, or an op code outside 0..7
        np.log2(part, out=out[s:e, width - n_log:])
    return out, (None if coef is None else np.log(base).astype(np.float32))
