"""ExactOBS and OBQ for one layer (Frantar, Singh, Alistarh, NeurIPS 2022), written for hwloop.

The layer-wise problem: for a conv/linear weight ``W`` (rows = output channels, columns = inputs; a conv is
flattened to ``C_out × C_in·kh·kw``, its input unfolded) and calibration inputs ``X`` (columns × N), find a
compressed ``Ŵ`` minimising the output error ``||(W − Ŵ)X||²/N``. Every row shares the Hessian
``H = 2XXᵀ/N`` (:class:`HessianHook` accumulates it in float64 from forward hooks, as a running mean).

* :func:`prepare_hessian` — dead inputs (``H_ii = 0``: the weight column is zeroed, ``H_ii = 1``), optional
  dampening ``H += rel_damp·mean(diag H)·I``, the inverse by Cholesky (retried with growing dampening).
* :func:`obs_rows` — the row-wise greedy loop, batched over rows: score every remaining weight by
  ``(w_p − t_p)²/[H⁻¹]_pp`` (``t`` = 0 to prune, the grid value to quantize), fix the best, compensate the
  rest ``w ← w − (w_p − t_p)/[H⁻¹]_pp · H⁻¹[:, p]``, downdate ``H⁻¹`` by one rank-1 step. The recorded loss of
  a step, ``(w_p − t_p)²/(2[H⁻¹]_pp)``, *is* the increase of ``||(W − Ŵ)X||²/N`` (``H`` is twice the sample
  second moment). Rows whose remaining set shrank by a quarter are compacted (the inverse of the remaining
  block is a sub-block of the downdated inverse), which cuts the work about threefold.
* :func:`unstructured_database` / :func:`nm_prune` / :func:`block_database` — one pass records every step
  (a trace), and the within-layer global allocation (sort all rows' step losses, take the cheapest) gives
  every sparsity level from it; :func:`obq_quantize` — OBQ on a per-channel symmetric grid with MSE
  clipping (:func:`mse_scales`) and the outlier rule (a weight pushed off the grid by compensation by more
  than half a step is fixed first).

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> X = torch.randn(8, 64, dtype=torch.float64)
    >>> H = 2 * X @ X.T / 64
    >>> W = torch.randn(3, 8, dtype=torch.float64)
    >>> Wq, loss = obq_quantize(W, H, 4)
    >>> bool(abs(loss - float(((W - Wq) @ X).pow(2).sum() / 64)) < 1e-8)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

__all__ = [
    "HessianHook",
    "LayerDatabase",
    "block_database",
    "collect_hessians",
    "layer_weight",
    "mse_scales",
    "nm_prune",
    "obq_quantize",
    "obs_rows",
    "prepare_hessian",
    "quantize_rtn",
    "unstructured_database",
]

_COMPACT = 0.75   # compact when the remaining columns fell to this share of the current block


def qmax_of(bits: int) -> int:
    """The largest integer of a symmetric ``bits``-bit grid (hwloop's ``fake_quant`` convention)."""
    return max(1, 2 ** (bits - 1) - 1)


# ---------------------------------------------------------------------------------------------- Hessians
def layer_weight(m: nn.Module) -> torch.Tensor:
    """A conv/linear layer's weight tensor (TypeError when it has none)."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(m).__name__} has no weight tensor")
    return w


class HessianHook:
    """Accumulates ``H = 2XXᵀ/N`` of one conv/linear layer's inputs (float64, running mean over samples)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        w = layer_weight(layer)
        self.columns = w[0].numel()
        self.H = torch.zeros(self.columns, self.columns, dtype=torch.float64, device=w.device)
        self.n = 0

    def columns_of(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as columns × samples (conv: unfolded patches; linear: last dim)."""
        m = self.layer
        if isinstance(m, nn.Conv2d):
            u = nn.functional.unfold(x, m.kernel_size, dilation=m.dilation, padding=cast(Any, m.padding),
                                     stride=m.stride)
            return u.permute(1, 0, 2).reshape(u.shape[1], -1)
        return x.reshape(-1, x.shape[-1]).t()

    def add(self, x: torch.Tensor) -> None:
        b = x.shape[0]
        cols = self.columns_of(x.detach())
        self.H *= self.n / (self.n + b)
        self.n += b
        self.H += (2.0 / self.n) * (cols @ cols.t()).to(torch.float64)   # batch product in the input's dtype


def collect_hessians(model: nn.Module, layers: Sequence[str], batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``H`` of each named layer from one pass of ``batches`` through ``model`` (eval mode, no grad)."""
    hooks = {n: HessianHook(model.get_submodule(n)) for n in layers}
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda mod, inp, h=h: h.add(inp[0]))
               for n, h in hooks.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for hd in handles:
            hd.remove()
        model.train(was)
    return {n: h.H for n, h in hooks.items()}


def prepare_hessian(H: torch.Tensor, W: torch.Tensor, rel_damp: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H', W', H'⁻¹)``: dead inputs handled (column zeroed, ``H_ii = 1``), dampening, Cholesky inverse."""
    H = H.clone()
    W = W.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    mean = float(torch.diag(H).mean())
    if rel_damp > 0:
        H += rel_damp * mean * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = 0.0
    for _ in range(8):
        try:
            L = torch.linalg.cholesky(H + damp * mean * torch.eye(H.shape[0], dtype=H.dtype, device=H.device))
            H = H + damp * mean * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
            return H, W, torch.cholesky_inverse(L)
        except RuntimeError:  # torch.linalg.LinAlgError subclasses it
            damp = 1e-6 if damp == 0 else damp * 10
    raise RuntimeError("the Hessian is not positive definite even with dampening")


# ---------------------------------------------------------------------------------------------- quantizer
def mse_scales(W: torch.Tensor, bits: int, *, grid: int = 100, maxshrink: float = 0.8, norm: float = 2.4
               ) -> torch.Tensor:
    """Per-row scale of a symmetric ``bits`` grid: ``shrink·max|w|/qmax`` with the shrink in
    ``{1, 0.99, …, 1 − maxshrink}`` that minimises ``Σ|q(w) − w|^norm`` (the reference's MSE clipping)."""
    qmax = qmax_of(bits)
    amax = W.abs().amax(1).clamp_min(1e-12)
    best = torch.full_like(amax, math.inf)
    scale = amax / qmax
    for i in range(int(maxshrink * grid) + 1):
        s = amax * (1 - i / grid) / qmax
        q = torch.clamp(torch.round(W / s[:, None]), -qmax, qmax) * s[:, None]
        err = (q - W).abs().pow(norm).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
    return scale


def quantize_rtn(W: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest on the grid ``scale·{−qmax…qmax}`` (per row)."""
    qmax = qmax_of(bits)
    return torch.clamp(torch.round(W / scale[:, None]), -qmax, qmax) * scale[:, None]


# ---------------------------------------------------------------------------------------------- the loop
def obs_rows(W: torch.Tensor, Hinv: torch.Tensor, *, steps: int | None = None, scale: torch.Tensor | None = None,
             bits: int | None = None, groups: torch.Tensor | None = None, group_allow: torch.Tensor | None = None,
             trace: bool = False, compact: bool = True, lazy: int = 32
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The greedy ExactOBS / OBQ loop over the rows of ``W`` (all rows at once).

    The rank-1 downdates of the per-row inverse Hessians are applied lazily: the last ``lazy`` downdate
    vectors are kept (the diagonal and the chosen row are corrected with them exactly) and folded into the
    inverse as one batched rank-``lazy`` product, which turns a memory-bound update per step into a
    compute-bound one every ``lazy`` steps; the result is the same up to float rounding.

    Args:
        W: (rows, d) weights; Hinv: (d, d) the inverse Hessian shared by every row.
        steps: how many weights each row fixes (default all ``d``).
        scale / bits: quantize (to ``scale[r]·{−qmax…qmax}``) instead of pruning.
        groups / group_allow: N:M pruning: ``groups[c]`` the run of column ``c``, ``group_allow[g]`` how many
            weights run ``g`` may lose.
        trace: also return the (steps + 1, rows, d) weights after every step.

    Returns:
        ``(Ŵ, losses, traces)``: the weights after ``steps``, the (rows, steps) loss of every step (its exact
        output-error increase), the trace or None.
    """
    rows, d = W.shape
    dev, dt = W.device, W.dtype
    steps = d if steps is None else steps
    full = W.clone()
    w = W.clone()
    Hi = Hinv.to(dt).unsqueeze(0).repeat(rows, 1, 1)
    idx = torch.arange(d, device=dev).unsqueeze(0).repeat(rows, 1)
    done = torch.zeros(rows, d, dtype=torch.bool, device=dev)
    val = torch.zeros(rows, d, dtype=dt, device=dev)
    diag = torch.diagonal(Hi, dim1=1, dim2=2).clone()
    U = torch.zeros(rows, d, lazy, dtype=dt, device=dev)
    k = 0
    losses = torch.zeros(rows, steps, dtype=dt, device=dev)
    tr = torch.zeros(steps + 1, rows, d, dtype=dt, device=dev) if trace else None
    if tr is not None:
        tr[0] = full
    rr = torch.arange(rows, device=dev)
    qmax = qmax_of(bits) if bits is not None else 0
    outlier = (0.25 * scale ** 2)[:, None] if scale is not None else None
    buckets = (torch.zeros(rows, int(group_allow.numel()), dtype=torch.long, device=dev)
               if groups is not None and group_allow is not None else None)
    fixed = 0
    for step in range(steps):
        a = w.shape[1]
        if compact and a > 32 and (a - fixed) <= _COMPACT * a:
            if k:
                Hi.baddbmm_(U[:, :, :k], U[:, :, :k].transpose(1, 2), alpha=-1)
                k = 0
            full.scatter_(1, idx, w)
            keep = (~done).nonzero()[:, 1].reshape(rows, -1)
            n = keep.shape[1]
            Hi = torch.gather(torch.gather(Hi, 1, keep[:, :, None].expand(rows, n, a)), 2,
                              keep[:, None, :].expand(rows, n, n))
            w, idx, diag = torch.gather(w, 1, keep), torch.gather(idx, 1, keep), torch.gather(diag, 1, keep)
            done = torch.zeros(rows, n, dtype=torch.bool, device=dev)
            val = torch.zeros(rows, n, dtype=dt, device=dev)
            U = torch.zeros(rows, n, lazy, dtype=dt, device=dev)
            fixed = 0
        if scale is not None:
            tgt = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax) * scale[:, None]
        else:
            tgt = torch.zeros_like(w)
        err = (w - tgt) ** 2
        bad = done
        if buckets is not None:
            assert groups is not None and group_allow is not None
            g = groups[idx]
            bad = bad | (torch.gather(buckets, 1, g) >= group_allow[g])
        scores = (err / diag).masked_fill(bad, math.inf)
        j = torch.argmin(scores, 1)
        if outlier is not None:
            e = err.masked_fill(done, 0.0)
            sel = (e > outlier).any(1)
            if bool(sel.any()):
                j = torch.where(sel, torch.argmax(e, 1), j)
        d_j = diag[rr, j]
        wj, tj = w[rr, j], tgt[rr, j]
        losses[:, step] = (wj - tj) ** 2 / d_j / 2
        row = Hi[rr, j, :]
        if k:
            row = row - torch.bmm(U[rr, j, :k].unsqueeze(1), U[:, :, :k].transpose(1, 2)).squeeze(1)
        w = w - row * ((wj - tj) / d_j).unsqueeze(1)
        done[rr, j] = True
        val[rr, j] = tj
        w = torch.where(done, val, w)    # fixed weights stay exactly where they were put
        if buckets is not None:
            assert groups is not None
            buckets[rr, groups[idx[rr, j]]] += 1
        fixed += 1
        u = row / torch.sqrt(d_j.clamp_min(1e-300)).unsqueeze(1)
        diag = diag - u * u
        U[:, :, k] = u
        k += 1
        if k == lazy:
            Hi.baddbmm_(U, U.transpose(1, 2), alpha=-1)
            k = 0
        if tr is not None or step == steps - 1:
            full.scatter_(1, idx, w)
            if tr is not None:
                tr[step + 1] = full
    return full, losses, tr


# ---------------------------------------------------------------------------------------------- kinds
@dataclass
class LayerDatabase:
    """One layer's levels: ``weights[level]`` (shaped like the layer's weight) and ``loss[level]`` (the exact
    output error ``||(W − Ŵ)X||²/N`` of that level)."""

    weights: dict[object, torch.Tensor]
    loss: dict[object, float]


def _flat(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1)


def global_allocation(losses: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, float]:
    """Steps per row for one sparsity: the ``ceil(rows·steps·sparsity)`` cheapest step losses of the whole
    layer (sorted globally), counted per row; returns ``(k per row, the layer's loss)`` where the loss sums
    each row's first ``k_i`` step losses."""
    rows, steps = losses.shape
    count = math.ceil(rows * steps * sparsity - 1e-9)
    order = torch.argsort(losses.reshape(-1), stable=True)[:count]
    k = torch.bincount(torch.div(order, steps, rounding_mode="floor"), minlength=rows)
    cum = torch.cat([torch.zeros(rows, 1, dtype=losses.dtype, device=losses.device), losses.cumsum(1)], 1)
    return k, float(cum[torch.arange(rows), k].sum())


def unstructured_database(weight: torch.Tensor, H: torch.Tensor, sparsities: Sequence[float], *,
                          rel_damp: float = 0.0, dtype: torch.dtype = torch.float64) -> LayerDatabase:
    """Every unstructured sparsity level of one layer from one ExactOBS pass (trace + global allocation)."""
    W0 = _flat(weight).to(H.dtype)
    _, W, Hinv = prepare_hessian(H, W0, rel_damp)
    W, Hinv = W.to(dtype), Hinv.to(dtype)
    # every row is traced to the end: the global allocation may prune one row far more than the average
    steps = W.shape[1] if sparsities else 0
    _, losses, tr = obs_rows(W, Hinv, steps=steps, trace=True)
    assert tr is not None
    db = LayerDatabase({}, {})
    for s in sparsities:
        k, loss = global_allocation(losses, s * W.shape[1] / max(steps, 1)) if steps else (None, 0.0)
        out = W.clone() if k is None else tr[k, torch.arange(W.shape[0])]
        db.weights[s] = out.reshape(weight.shape).to(weight.dtype)
        db.loss[s] = loss + _dead_loss(W0, W, H)
    return db


def _dead_loss(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """Output error from zeroing dead columns (their inputs are zero, so it is zero; kept for clarity)."""
    d = W0 - W.to(W0.dtype)
    return float(torch.einsum("ri,ij,rj->", d, H, d) / 2)


def nm_prune(weight: torch.Tensor, H: torch.Tensor, n: int = 2, m: int = 4, *, rel_damp: float = 0.0,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, float]:
    """N:M ExactOBS: keep ``n`` of every ``m`` consecutive input channels (per output channel and kernel
    position, the layout of :func:`~hwloop.compress.sparsity.sparsity_mask`); a shorter last run keeps ``n``."""
    W0 = _flat(weight).to(H.dtype)
    _, W, Hinv = prepare_hessian(H, W0, rel_damp)
    W, Hinv = W.to(dtype), Hinv.to(dtype)
    cin = weight.shape[1]
    kk = W.shape[1] // cin
    c = torch.arange(W.shape[1], device=W.device) // kk
    p = torch.arange(W.shape[1], device=W.device) % kk
    runs = (cin + m - 1) // m
    groups = p * runs + c // m
    size = torch.bincount(groups, minlength=kk * runs)
    allow = (size - n).clamp_min(0)
    steps = int(allow.sum())
    out, losses, _ = obs_rows(W, Hinv, steps=steps, groups=groups, group_allow=allow)
    return out.reshape(weight.shape).to(weight.dtype), float(losses.sum()) + _dead_loss(W0, W, H)


def obq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int, *, rel_damp: float = 0.0,
                 scale: torch.Tensor | None = None, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, float]:
    """OBQ: every weight greedily quantized to its row's grid (MSE-clipped scale unless ``scale`` is given) with
    the optimal compensation of the rest; returns ``(Ŵ on the grid, its output error)``."""
    W0 = _flat(weight).to(H.dtype)
    _, W, Hinv = prepare_hessian(H, W0, rel_damp)
    W, Hinv = W.to(dtype), Hinv.to(dtype)
    s = mse_scales(W, bits) if scale is None else scale.to(W.dtype)
    out, losses, _ = obs_rows(W, Hinv, scale=s, bits=bits)
    out = quantize_rtn(out, s, bits)    # exactly on the grid (the loop already put each weight there)
    return out.reshape(weight.shape).to(weight.dtype), float(losses.sum()) + _dead_loss(W0, W, H)


def block_database(weight: torch.Tensor, H: torch.Tensor, densities: Sequence[float], *, block_in: int = 1,
                   rel_damp: float = 0.0, dtype: torch.dtype = torch.float64) -> LayerDatabase:
    """Block ExactOBS: a block is ``block_in`` input channels × all kernel positions of one row (the
    ``block=(1, block_in)`` tiles of :class:`~hwloop.compress.actions.Sparsify`); one pass per row batch,
    global allocation over blocks gives every density."""
    W0 = _flat(weight).to(H.dtype)
    _, W, Hinv1 = prepare_hessian(H, W0, rel_damp)
    W, Hinv1 = W.to(dtype), Hinv1.to(dtype)
    rows, d = W.shape
    cin = weight.shape[1]
    if cin % block_in:
        raise ValueError(f"block_in={block_in} does not divide the layer's {cin} input channels")
    bs = d // cin * block_in
    nb = d // bs
    dev = W.device
    Hinv = Hinv1.unsqueeze(0).repeat(rows, 1, 1)
    w = W.clone()
    rr = torch.arange(rows, device=dev)
    mask = torch.zeros(rows, nb, dtype=torch.bool, device=dev)
    losses = torch.zeros(rows, nb, dtype=W.dtype, device=dev)
    tr = torch.zeros(nb + 1, rows, d, dtype=W.dtype, device=dev)
    tr[0] = w
    eye = torch.eye(bs, dtype=W.dtype, device=dev)
    for step in range(nb):
        blocks = Hinv.reshape(rows, nb, bs, nb, bs).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # (r, nb, bs, bs)
        blocks = torch.where(mask[:, :, None, None], eye, blocks)
        inv = torch.cholesky_inverse(torch.linalg.cholesky(blocks))
        wb = w.reshape(rows, nb, 1, bs)
        lam = wb @ inv                                          # (r, nb, 1, bs)
        scores = (lam * wb).sum((2, 3)).masked_fill(mask, math.inf)
        j = torch.argmin(scores, 1)
        losses[:, step] = scores[rr, j] / 2
        cols = (j[:, None] * bs + torch.arange(bs, device=dev)[None, :])   # (r, bs)
        hrows = torch.gather(Hinv, 1, cols[:, :, None].expand(rows, bs, d))  # (r, bs, d)
        w = w - (lam[rr, j] @ hrows).squeeze(1)
        mask[rr, j] = True
        colmask = mask.repeat_interleave(bs, 1)
        w = w.masked_fill(colmask, 0.0)
        tr[step + 1] = w
        Hinv.baddbmm_(hrows.transpose(1, 2), inv[rr, j] @ hrows, alpha=-1)
        ri = rr[:, None]
        Hinv[ri, cols, :] = 0.0
        Hinv[ri, :, cols] = 0.0
        Hinv[ri, cols, cols] = 1.0
    db = LayerDatabase({}, {})
    for dens in densities:
        k, loss = global_allocation(losses, 1.0 - dens)
        db.weights[dens] = tr[k, rr].reshape(weight.shape).to(weight.dtype)
        db.loss[dens] = loss + _dead_loss(W0, W, H)
    return db
