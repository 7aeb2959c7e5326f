"""The batched feature path: every feature of :mod:`hwloop.predict.features`, bit-identical, in fewer numpy passes.

:func:`~hwloop.predict.features.features_from_table` calls :func:`fast_features` for each block of rows.
The definitions stay in :mod:`hwloop.predict.features` (``reference_features``, the readable form);
this module computes the same float64 operations in the same order, so every float32 feature is equal
bit for bit (``tests/test_predict_throughput.py`` checks it on random tables and on the shipped
predictors' predictions). What makes it cheaper (issue 15, "batched prediction keeps >= 80% of the
booster's own rate"):

* shared sub-expressions computed once: ``ceil(k/w)``, ``ceil(n/w)`` and the GEMM fold counts feed
  the array-fold, packed-work and ``log2_work_kA_nB`` features (three of those equal the fold-work
  features exactly and are copied); ``16/k`` serves ``32/k`` and ``64/k`` (scaling by a power of two
  is exact, so ``RN(32/k) == 2*RN(16/k)``);
* divisions by powers of two done as multiplications by the exact reciprocal (identical results);
* results written straight into the float32 feature buffer (``out=``), scratch buffers reused;
* fast paths that are exact special cases of the general formulas: no low-bit weights (``pack == 1``,
  so ``w * pack == w``), no low-rank rows (the low-rank terms are 0 and ``log2(work + 0 + 1) ==
  log2(work + 1)``);
* the 18 baseline terms written into one ``(18, n)`` array (``accel_out["terms_T"]``), so the
  baseline needs no column stack.

Tables outside the valid range (op codes outside ``0..7``) go through the reference implementation.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.features import reference_features, spec_table
    >>> from hwloop.predict.features_fast import fast_features
    >>> from hwloop.predict.sampling import random_layer_specs
    >>> t = spec_table(random_layer_specs(300, np.random.default_rng(0)))
    >>> bool(np.array_equal(fast_features(t), reference_features(t)))
    True
"""

from __future__ import annotations

import numpy as np

from hwloop.opkinds import OP_KINDS
from hwloop.predict.features import _ARRAYS, _CAPS_KIB, FEATURE_SCHEMA, RAW_COLUMNS, feature_names

__all__ = ["TERMS", "fast_features"]

_NOP = len(OP_KINDS)
#: rows of ``accel_out["terms_T"]`` (the order of :func:`~hwloop.predict.features.baseline_terms`' columns)
TERMS = (*(f"{n}{w}" for w in _ARRAYS for n in ("work", "lowrank")), *(f"traffic{c}" for c in _CAPS_KIB),
         "w_bytes", "i_bytes", "o_bytes", "in_elements", "out_elements", "one")


def fast_features(t: np.ndarray, schema: int = FEATURE_SCHEMA, accel_out: dict[str, np.ndarray] | None = None
                  ) -> np.ndarray:
    """:func:`~hwloop.predict.features.reference_features` of a raw table, bit-identical (an ``(n, width)``
    float32 array in Fortran order). ``accel_out`` receives the schema-2 quantities (the reference keys)
    and ``terms_T``, the baseline terms as one ``(18, n)`` float64 array."""
    from hwloop.predict.features import reference_features

    t = np.asarray(t, dtype=np.float64)
    width = len(feature_names(schema))
    n = t.shape[0]
    if t.ndim != 2 or t.shape[1] != len(RAW_COLUMNS) or n == 0:
        return reference_features(t, schema, accel_out)
    tf = np.ascontiguousarray(t.T)  # (25, n): each raw column a contiguous row
    opi = tf[0].astype(np.int64)
    if opi.min() < 0 or opi.max() >= _NOP or not np.array_equal(opi, tf[0]):
        return reference_features(t, schema, accel_out)  # invalid op codes: the reference's behaviour
    (_, _, db, _, b, cin, cout, _, _, oh, ow, kh, kw, _, _, groups, _, rank, wbits, abits, in_el, out_el,
     macs, params, nbytes) = tf
    out = np.empty((width, n), dtype=np.float32)
    s1, s2, s3 = np.empty(n), np.empty(n), np.empty(n)

    def lg(x: np.ndarray, j: int) -> None:  # out[j] = log2(x + 1)
        np.add(x, 1, out=s1)
        np.log2(s1, out=out[j])

    for k in range(_NOP):
        np.equal(opi, k, out=out[k])
    out[8:27] = tf[1:20]  # variant ... a_bits, as stored
    native = 8 * db
    has_wb, has_ab = bool((wbits > 0).any()), bool((abits > 0).any())
    wb = np.where(wbits > 0, wbits, native) if has_wb else native
    ab = np.where(abits > 0, abits, native) if has_ab else native
    np.multiply(wb, ab, out=out[27])
    g = np.maximum(groups, 1)
    np.logical_and(groups > 1, groups == cin, out=out[28])
    np.divide(cin, g, out=out[29])
    lg(macs, 30)
    lg(nbytes, 31)
    lg(params, 32)
    lg(in_el, 33)
    lg(out_el, 34)
    np.divide(macs, np.maximum(nbytes, 1), out=out[35])
    np.multiply(oh, ow, out=out[36])
    ici, ico, irk = cin.astype(np.int64), cout.astype(np.int64), rank.astype(np.int64)
    j = 37
    for x in (ici, ico):
        for m in (8, 16, 32, 64):
            np.bitwise_and(x, m - 1, out=out[j])
            j += 1
    np.bitwise_and(irk, 7, out=out[45])
    np.bitwise_and(irk, 15, out=out[46])
    # tile waste: ceil(c / t) * t / c with c = max(channels, 1)
    c_in, c_out = np.maximum(cin, 1), np.maximum(cout, 1)
    pad32 = None
    for j, m in zip(range(47, 51), (8, 16, 32, 64)):
        np.multiply(c_in, 1 / m, out=s1)
        np.ceil(s1, out=s1)
        s1 *= m
        s1 /= c_in
        np.multiply(c_out, 1 / m, out=s2)
        np.ceil(s2, out=s2)
        s2 *= m
        s2 /= c_out
        if m == 32:
            pad32 = (s1.copy(), s2.copy())
        np.multiply(s1, s2, out=out[j])
    assert pad32 is not None
    np.multiply(macs, pad32[0], out=s3)
    s3 *= pad32[1]
    lg(s3, 51)
    # the GEMM view (features._gemm_sizes)
    conv = opi == 0
    dense = (opi == 1) | (opi == 2)
    gemm_any = conv | dense
    bo = b * oh
    bo *= ow  # batch * out_h * out_w
    m_ = np.where(conv, bo, np.where(dense, in_el / c_in, out_el))
    k_ = np.where(conv, cin / g * kh * kw, np.where(dense, cin, 1))
    has_rank = bool((rank > 0).any())
    n_ = np.where(gemm_any, np.where(rank > 0, rank, cout / np.where(conv, g, 1)) if has_rank else
                  cout / np.where(conv, g, 1), 1)
    reps = np.where(conv, g, 1)
    out[52], out[53], out[54] = m_, k_, n_
    lg(m_, 55)
    lg(k_, 56)
    lg(n_, 57)
    ck = {w: np.ceil(k_ * (1 / w)) for w in (16, 32, 64)}
    cn = {w: np.ceil(n_ * (1 / w)) for w in (16, 32, 64, 128)}
    kn = {w: ck[w] * cn[w] for w in (16, 32, 64)}
    folds = {w: kn[w] * reps for w in (16, 32, 64)}
    mp = {w: m_ + 2 * w for w in (16, 32, 64)}
    for i, w in enumerate((16, 32, 64)):
        out[58 + i] = folds[w]
        np.multiply(folds[w], mp[w], out=s3)
        lg(s3, 61 + i)
    cr = {w: np.ceil(rank * (1 / w)) for w in (16, 32, 64)} if has_rank else {}
    cc = {w: np.ceil(cout * (1 / w)) for w in (16, 32, 64)} if has_rank else {}
    for i, w in enumerate((16, 32, 64)):
        out[64 + i] = np.where(rank > 0, cr[w] * cc[w], 0) if has_rank else 0.0
    # log2_work_kA_nB: ceil(k/A) * ceil(n/B) * reps * (m + A + B); for A == B that is the fold work of width A
    # (m + A + A == m + 2A exactly when m is an integer below 2^52, as it is for every valid layer)
    integral = bool(np.all(m_ == np.floor(m_))) and float(np.max(np.abs(m_))) < 2.0 ** 52
    for j, (a, bb) in enumerate(((32, 32), (32, 64), (32, 128), (16, 16), (64, 64)), start=67):
        if a == bb and integral:
            out[j] = out[61 + (16, 32, 64).index(a)]
            continue
        np.multiply(ck[a], cn[bb], out=s3)
        s3 *= reps
        s3 *= m_ + a + bb
        lg(s3, j)
    if schema >= 2:
        _accel_features(out, tf, opi, conv, m_, k_, n_, reps, ck, cn, kn, mp, cr, native, has_rank, accel_out,
                        s1, lg)
    if schema >= 3:
        _cpu_features(out, tf, conv, g, bo, has_rank, s1, s2, lg)
    return out.T


def _accel_features(out: np.ndarray, tf: np.ndarray, opi: np.ndarray, conv: np.ndarray, m_: np.ndarray,
                    k_: np.ndarray, n_: np.ndarray, reps: np.ndarray, ck: dict, cn: dict, kn: dict, mp: dict,
                    cr: dict, native: np.ndarray, has_rank: bool, accel_out: dict[str, np.ndarray] | None,
                    s1: np.ndarray, lg: object) -> None:
    """Features 72-99 (schema 2; features._accel) and the baseline terms."""
    (_, _, _, _, b, _, cout, _, _, _, _, kh, _, stride, _, _, _, rank, wbits, abits, in_el, out_el,
     _, params, _) = tf
    n = tf.shape[1]
    terms = np.empty((len(TERMS), n))
    a: dict[str, np.ndarray] = {}
    low = (wbits > 0) & (wbits < 8)
    packed = bool(low.any())
    pack = np.where(low, np.clip(np.floor(8 / np.maximum(wbits, 1)), 1, 4), 1.0) if packed else None
    # w/k for w = 16, 32, 64 from one division (RN(2^i * 16/k) == 2^i * RN(16/k)); with pack == 1, the same for ce/n
    qk = 16 / k_
    qn = 16 / n_ if not packed else None
    for i, w in enumerate(_ARRAYS):
        scale = w // 16
        wk = qk * scale
        if packed:
            assert pack is not None
            ce = w * pack
            cen = ce / n_
            cn_ce = np.ceil(n_ / ce)
            fit = (k_ <= w) & (n_ <= ce)
        else:
            assert qn is not None
            cen = qn * scale
            cn_ce = cn[w]
            fit = (k_ <= w) & (n_ <= w)
        gpf = np.where(fit, np.maximum(1, np.minimum(np.floor(wk), np.floor(cen))), 1)
        folds = (ck[w] * cn_ce if packed else kn[w].copy())
        folds *= np.ceil(reps / gpf)
        work = terms[2 * i]
        np.subtract(mp[w], 2, out=s1)  # m + 2 * w - 2
        np.multiply(folds, s1, out=work)
        work += w
        low_rank = terms[2 * i + 1]
        if has_rank:
            cc = np.ceil(cout / ce) if packed else np.ceil(cout * (1 / w))
            low_rank[:] = np.where(rank > 0, cr[w] * cc * s1 + w, 0)
        else:
            low_rank[:] = 0.0
        a[f"folds{w}"], a[f"gpf{w}"], a[f"work{w}"], a[f"lowrank{w}"] = folds, gpf, work, low_rank
        j = 72 + 5 * i
        lg(folds, j)  # type: ignore[operator]
        lg(work, j + 1)  # type: ignore[operator]
        if has_rank:
            lg(low_rank, j + 2)  # type: ignore[operator]
            lg(work + low_rank, j + 3)  # type: ignore[operator]
        else:
            out[j + 2] = 0.0  # log2(0 + 1)
            out[j + 3] = out[j + 1]  # log2(work + 0 + 1) == log2(work + 1)
        np.log2(gpf, out=out[j + 4])
    a["pack"] = pack if pack is not None else np.ones(n)
    wsel = np.where(wbits > 0, wbits, native) if bool((wbits > 0).any()) else native
    asel = np.where(abits > 0, abits, native) if bool((abits > 0).any()) else native
    w_bytes, i_bytes, o_bytes = terms[12], terms[13], terms[14]
    np.multiply(params, wsel, out=w_bytes)
    w_bytes *= 1 / 8
    np.multiply(in_el, asel, out=i_bytes)
    i_bytes *= 1 / 8
    np.multiply(out_el, asel, out=o_bytes)
    o_bytes *= 1 / 8
    a["w_bytes"], a["i_bytes"], a["o_bytes"] = w_bytes, i_bytes, o_bytes
    lg(w_bytes, 87)  # type: ignore[operator]
    lg(i_bytes, 88)  # type: ignore[operator]
    lg(o_bytes, 89)  # type: ignore[operator]
    out[90] = a["pack"]
    s2, s3 = np.empty(n), np.empty(n)
    for i, cap in enumerate(_CAPS_KIB):
        inv = 1 / (cap * 1024)
        np.multiply(w_bytes, inv, out=s1)
        np.ceil(s1, out=s1)
        np.maximum(s1, 1, out=s1)  # nw
        np.multiply(i_bytes, inv, out=s2)
        np.ceil(s2, out=s2)
        np.maximum(s2, 1, out=s2)  # ni
        np.multiply(i_bytes, s1, out=s3)
        s3 += w_bytes  # w + i * nw
        np.multiply(w_bytes, s2, out=s1)
        s1 += i_bytes  # w * ni + i
        traffic = terms[6 + i]
        np.minimum(s3, s1, out=traffic)
        traffic += o_bytes
        a[f"traffic{cap}"] = traffic
        lg(traffic, 91 + i)  # type: ignore[operator]
    per_sample = in_el / np.maximum(b, 1)
    pointwise = ((kh == 1) & (stride == 1) & conv).astype(np.float64)
    a["per_sample"], a["pointwise"] = per_sample, pointwise
    out[97] = pointwise
    lg(per_sample, 98)  # type: ignore[operator]
    np.greater(per_sample, 20480, out=out[99])
    terms[15], terms[16], terms[17] = in_el, out_el, 1.0
    if accel_out is not None:
        accel_out.update(a)
        accel_out["terms_T"] = terms


def _cpu_features(out: np.ndarray, tf: np.ndarray, conv: np.ndarray, g: np.ndarray, bo: np.ndarray, has_rank: bool,
                  s1: np.ndarray, s2: np.ndarray, lg: object) -> None:
    """Features 100-107 (schema 3; features._cpu)."""
    (_, _, _, _, b, cin, cout, ih, iw, oh, ow, kh, kw, stride, _, _, _, rank, _, _, _, _, _, _, _) = tf
    k_area = kh * kw
    pointwise_s1 = (kh == 1) & (kw == 1) & (stride == 1)
    np.multiply(b, cin, out=s1)
    s1 *= ih
    s1 *= iw
    big = (g > 1) | ((kh > 3) & (kw > 3)) | (b > 1) | (s1 > 20480)
    onednn = conv & (~pointwise_s1 | (b >= 16)) & big
    out[100] = onednn
    np.logical_and(onednn, stride > 1, out=out[101])
    np.multiply(bo, cin, out=s2)
    s2 /= g
    s2 *= k_area  # out_pos * cin / g * k_area
    lg(np.where(conv & ~onednn, s2, 0.0), 102)  # type: ignore[operator]
    if has_rank:
        first_out = np.where(rank > 0, rank, cout)
        lowrank = conv & (rank > 0)
        np.logical_and(lowrank, b >= 16, out=out[103])
        lg(np.where(conv, s2 * first_out, 0.0), 104)  # type: ignore[operator]
        lg(np.where(lowrank, bo * rank * cout, 0.0), 105)  # type: ignore[operator]
        lg(np.where(conv, bo * first_out, 0.0), 106)  # type: ignore[operator]
        lg(np.where(lowrank, rank * oh * ow, 0.0), 107)  # type: ignore[operator]
    else:
        out[103] = 0.0
        lg(np.where(conv, s2 * cout, 0.0), 104)  # type: ignore[operator]
        out[105] = 0.0
        lg(np.where(conv, bo * cout, 0.0), 106)  # type: ignore[operator]
        out[107] = 0.0
