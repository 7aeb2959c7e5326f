"""The ℓ1/ℓ2 latency surrogate (Nasery et al. 2023): cost as a polynomial in layer widths.

Per layer ``l`` with (effective) input width ``n_in``, output width ``n_out`` and a constant
``c_l`` fixed by the layer's geometry (batch × output positions × kernel area / groups):

============  =========================================  ===========================
kind (code)   cost                                       ``c_l``
============  =========================================  ===========================
dense (0)     ``c_l · n_in · n_out``                     ``B·H·W·k²/g`` (conv), rows (linear)
depthwise (1) ``c_l · n``                                ``B·H·W·k²``
low-rank (2)  ``c_l · r · (k² · n_in + n_out)``          ``B·H·W`` (k² = 1 for linear)
elementwise(3) ``c_l · n``                               ``B·H·W`` (× k² for pooling)
============  =========================================  ===========================

Compute kinds (0–2) are multiplied by ``w_bits · a_bits / native_bits²``. For a concrete
spec the cost equals its MACs (bit-scaled). Latency is ``scale_ms_per_mac · cost``; with no
data the scale is a nominal 1 GMAC/s, and :meth:`SurrogatePredictor.fit` fits that one
constant per device from a handful of measurements (geometric-mean ratio).

The differentiable form used by search is :func:`surrogate_cost_torch`; its widths are
typically :func:`l1_l2_width` of channel gates, ``(‖g‖₁/‖g‖₂)²``, which equals the number
of non-zero gates when they are equal and is a smooth, scale-invariant proxy otherwise.

Example:
    >>> import torch
    >>> from hwloop.predict.surrogate import surrogate_cost_torch, l1_l2_width
    >>> g = torch.ones(8, requires_grad=True)
    >>> n = l1_l2_width(g)
    >>> cost = surrogate_cost_torch(n.reshape(1), torch.tensor([16.0]), torch.tensor([100.0]),
    ...                             kind=torch.tensor([0]))
    >>> round(float(cost), 1)
    12800.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hwloop.errors import PredictorError
from hwloop.predict.base import BasePredictor
from hwloop.predict.features import RAW_COLUMNS, spec_table, specs_from_any

__all__ = [
    "KIND_DENSE",
    "KIND_DEPTHWISE",
    "KIND_ELEMENTWISE",
    "KIND_LOWRANK",
    "NOMINAL_MS_PER_MAC",
    "SurrogatePredictor",
    "l1_l2_width",
    "surrogate_cost",
    "surrogate_cost_torch",
    "surrogate_terms",
]

KIND_DENSE, KIND_DEPTHWISE, KIND_LOWRANK, KIND_ELEMENTWISE = 0, 1, 2, 3
#: 1 GMAC/s: the no-data scale
NOMINAL_MS_PER_MAC = 1e-6
_R = {c: i for i, c in enumerate(RAW_COLUMNS)}


def surrogate_terms(x: Any) -> dict[str, np.ndarray]:
    """Per-layer surrogate terms of specs (or a raw table): ``kind, c, n_in, n_out, rank, k2, w_bits, a_bits,
    native_bits`` as float64 arrays (``kind`` int64)."""
    t = x if isinstance(x, np.ndarray) else spec_table(specs_from_any(x))
    col = lambda n: t[:, _R[n]]
    op = col("op").astype(np.int64)  # OP_KINDS order: conv2d, linear, matmul, ...
    cin, cout, rank, groups, batch = col("in_channels"), col("out_channels"), col("rank"), col("groups"), col("batch")
    hw = col("out_h") * col("out_w")
    k2 = col("kernel_h") * col("kernel_w")
    macs = col("macs")
    kind = np.full(len(op), KIND_ELEMENTWISE, dtype=np.int64)
    c = macs / np.maximum(cout, 1)
    n_in = np.maximum(cout, 1).astype(np.float64)
    n_out = np.ones(len(op))
    conv, lin, mm = op == 0, op == 1, op == 2
    dw = conv & (groups > 1) & (groups == cin) & (cin == cout) & (rank == 0)
    low = (conv | lin) & (rank > 0)
    dense = (conv | lin | mm) & ~dw & ~low
    rows = col("in_elements") / np.maximum(cin, 1)
    kind[dense], kind[dw], kind[low] = KIND_DENSE, KIND_DEPTHWISE, KIND_LOWRANK
    c = np.where(dense & conv, batch * hw * k2 / np.maximum(groups, 1), c)
    c = np.where(dense & (lin | mm), rows, c)
    c = np.where(dw, batch * hw * k2, c)
    c = np.where(low & conv, batch * hw, c)
    c = np.where(low & lin, rows, c)
    n_in = np.where(kind == KIND_ELEMENTWISE, n_in, cin)
    n_out = np.where((kind == KIND_DENSE) | (kind == KIND_LOWRANK), cout, n_out)
    k2 = np.where(low & conv, k2, 1.0)
    native = 8 * col("dtype_bytes")
    return {"kind": kind, "c": c, "n_in": n_in, "n_out": n_out, "rank": rank, "k2": k2,
            "w_bits": np.where(col("w_bits") > 0, col("w_bits"), native),
            "a_bits": np.where(col("a_bits") > 0, col("a_bits"), native), "native_bits": native}


def surrogate_cost(terms: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-layer cost (bit-scaled MAC units) from :func:`surrogate_terms` (numpy)."""
    kind, c, n_in, n_out = terms["kind"], terms["c"], terms["n_in"], terms["n_out"]
    base = np.select([kind == KIND_DENSE, kind == KIND_DEPTHWISE, kind == KIND_LOWRANK],
                     [c * n_in * n_out, c * n_in, c * terms["rank"] * (terms["k2"] * n_in + n_out)], c * n_in)
    bits = np.where(kind != KIND_ELEMENTWISE, terms["w_bits"] * terms["a_bits"] / terms["native_bits"] ** 2, 1.0)
    return np.asarray(base * bits, dtype=np.float64)


def l1_l2_width(gates: Any, dim: int = -1, eps: float = 1e-12) -> Any:
    """Effective width ``(‖g‖₁ / ‖g‖₂)²`` of gate vectors along ``dim`` (torch, differentiable).

    Equals the number of non-zero entries when they have equal magnitude; scale-invariant.
    """
    import torch

    g = torch.as_tensor(gates)
    return g.abs().sum(dim) ** 2 / (g.pow(2).sum(dim) + eps)


def surrogate_cost_torch(n_in: Any, n_out: Any, c: Any, *, kind: Any, rank: Any = None, k2: Any = None,
                         w_bits: Any = None, a_bits: Any = None, native_bits: float = 32.0,
                         reduce: bool = True) -> Any:
    """Differentiable surrogate cost (MAC units) of ``L`` layers.

    Args:
        n_in: float tensor (L,) of effective input widths (e.g. :func:`l1_l2_width` of the gates).
        n_out: float tensor (L,) of effective output widths (ignored for depthwise/elementwise).
        c: float tensor (L,) of per-layer constants (see the module table; from :func:`surrogate_terms`).
        kind: int tensor (L,) of kind codes (0 dense, 1 depthwise, 2 low-rank, 3 elementwise).
        rank: float tensor (L,) of effective ranks (used where kind == 2).
        k2: float tensor (L,) of kernel areas of low-rank convs (1 for linear); default 1.
        w_bits / a_bits: float tensors (L,) of (soft) bit-widths; default ``native_bits``.
        native_bits: bits of the unquantised dtype (32 for float32).
        reduce: sum over layers (scalar) or return per-layer costs.

    Returns:
        A tensor: the total cost, or per-layer costs when ``reduce`` is False. Multiply by a fitted
        :attr:`SurrogatePredictor.scale_ms_per_mac_` to get milliseconds.
    """
    import torch

    n_in, n_out, c = (torch.as_tensor(v, dtype=torch.float32) for v in (n_in, n_out, c))
    kind = torch.as_tensor(kind)
    if not (n_in.shape == n_out.shape == c.shape == kind.shape):
        raise PredictorError(f"n_in/n_out/c/kind must share a shape, got {tuple(n_in.shape)}, {tuple(n_out.shape)}, "
                             f"{tuple(c.shape)}, {tuple(kind.shape)}")
    r = torch.as_tensor(rank, dtype=c.dtype) if rank is not None else torch.zeros_like(c)
    kk = torch.as_tensor(k2, dtype=c.dtype) if k2 is not None else torch.ones_like(c)
    dense = c * n_in * n_out
    lin = c * n_in
    low = c * r * (kk * n_in + n_out)
    cost = torch.where(kind == KIND_DENSE, dense, torch.where(kind == KIND_LOWRANK, low, lin))
    if w_bits is not None or a_bits is not None:
        wb = torch.as_tensor(w_bits, dtype=c.dtype) if w_bits is not None else torch.full_like(c, native_bits)
        ab = torch.as_tensor(a_bits, dtype=c.dtype) if a_bits is not None else torch.full_like(c, native_bits)
        cost = torch.where(kind == KIND_ELEMENTWISE, cost, cost * wb * ab / native_bits ** 2)
    return cost.sum() if reduce else cost


class SurrogatePredictor(BasePredictor):
    """The no-data predictor: ``scale · surrogate cost``, optionally fitted to one constant per device.

    Usable without ``fit`` (nominal 1 GMAC/s). ``fit(specs, latencies_ms)`` sets
    ``scale_ms_per_mac_`` to the geometric mean of measured/cost.

    Args:
        scale_ms_per_mac: the unfitted scale (ms per MAC unit).
    """

    kind = "surrogate"

    def __init__(self, scale_ms_per_mac: float = NOMINAL_MS_PER_MAC, fingerprint: Any = None,
                 mode: str = "eager") -> None:
        super().__init__(fingerprint, mode)
        self.scale_ms_per_mac = scale_ms_per_mac

    @property
    def fitted(self) -> bool:
        return True

    @property
    def scale(self) -> float:
        return float(getattr(self, "scale_ms_per_mac_", self.scale_ms_per_mac))

    def _fit_table(self, table: np.ndarray, y_ms: np.ndarray) -> None:
        cost = np.maximum(surrogate_cost(surrogate_terms(table)), 1.0)
        self.scale_ms_per_mac_ = float(np.exp(np.mean(np.log(y_ms) - np.log(cost))))

    def _predict_table(self, table: np.ndarray) -> np.ndarray:
        return self.scale * np.maximum(surrogate_cost(surrogate_terms(table)), 1.0)

    def cost_torch(self, *args: Any, **kwargs: Any) -> Any:
        """:func:`surrogate_cost_torch` in milliseconds (times this device's fitted scale)."""
        return surrogate_cost_torch(*args, **kwargs) * self.scale

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes | None]:
        st: dict[str, Any] = {}
        if hasattr(self, "scale_ms_per_mac_"):
            st["scale_ms_per_mac_"] = self.scale_ms_per_mac_
        return st, {}, None

    def _set_state(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray], native: bytes | None) -> None:
        if "scale_ms_per_mac_" in state:
            self.scale_ms_per_mac_ = float(state["scale_ms_per_mac_"])
