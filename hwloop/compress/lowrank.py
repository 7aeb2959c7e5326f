"""Low-rank factorisation: a conv ``k×k in→out`` becomes ``k×k in→r`` then ``1×1 r→out``.

The factors come from the truncated SVD of the weight reshaped to ``(out, in·k·k)``:
``W ≈ U·diag(σ)·Vᵀ``. :func:`factorize` returns the two real layers (an
``nn.Sequential``) plus the singular values, which initialise a
:class:`~hwloop.compress.gates.RankGate`; :func:`merge` multiplies two factors back
into one dense layer. Linear layers factorise the same way (``in→r`` then ``r→out``).

:func:`tucker2` gives the Tucker-2 form of a conv: ``1×1 in→r_in``, a ``k×k r_in→r_out`` core that carries
the stride, padding and dilation, and ``1×1 r_out→out``, initialised by HOSVD (the truncated SVDs of the kernel
unfolded along its output and its input channels, and the kernel projected onto both bases as the core).

Example:
    >>> import torch
    >>> from hwloop.compress.lowrank import factorize
    >>> conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    >>> seq, sigma = factorize(conv)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> bool(torch.allclose(seq(x), conv(x), atol=1e-4)), sigma.numel()
    (True, 6)
"""

from __future__ import annotations

import torch
from torch import nn

from hwloop.errors import CompressionError

__all__ = ["factorize", "full_rank", "is_factorizable", "merge", "tucker2", "tucker2_full_ranks"]


def is_factorizable(module: nn.Module) -> bool:
    """Whether :func:`factorize` supports ``module`` (dense conv with groups=1, or linear)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1
                                              and module.padding_mode == "zeros"
                                              and isinstance(module.padding, tuple))


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise CompressionError(f"{type(module).__name__} has no weight tensor")
    return w


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def _require_bias(module: nn.Module) -> torch.Tensor:
    b = _bias(module)
    assert b is not None, "made with bias=True"
    return b


def _conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(kernel_size, stride, padding, dilation)`` of a conv whose padding is a tuple, as pairs."""
    k, st, pad, dil = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    assert not isinstance(pad, str)
    return (k[0], k[1]), (st[0], st[1]), (pad[0], pad[1]), (dil[0], dil[1])


def full_rank(module: nn.Module) -> int:
    """``min(out, in·k·k)``: the rank at which factorisation is exact."""
    w = _weight(module)
    return int(min(w.shape[0], w[0].numel()))


def factorize(module: nn.Module, rank: int | None = None, *, split: str = "right"
              ) -> tuple[nn.Sequential, torch.Tensor]:
    """Replace a dense conv/linear by its rank-``rank`` truncated SVD as two layers.

    Args:
        module: an ``nn.Conv2d`` (groups=1) or ``nn.Linear``.
        rank: kept rank (default: full rank, exact up to float error).
        split: where ``σ`` goes: ``right`` (into the second layer) or ``none`` (factors stay
            orthonormal; the caller applies ``σ`` as gate values between the layers).

    Returns:
        ``(nn.Sequential(first, second), sigma)`` with ``sigma`` the kept singular values.
    """
    if not is_factorizable(module):
        raise CompressionError(f"cannot factorise {type(module).__name__}; only dense Conv2d (groups=1) and Linear")
    full = full_rank(module)
    r = full if rank is None else int(rank)
    if not 1 <= r <= full:
        raise CompressionError(f"rank={rank!r} must be in [1, {full}] for this layer")
    if split not in ("right", "none"):
        raise CompressionError(f"split {split!r} is unknown; allowed: right, none")
    w = _weight(module).detach().float()
    out_c = w.shape[0]
    u, s, vh = torch.linalg.svd(w.reshape(out_c, -1), full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    second_w = u * s if split == "right" else u
    module_bias = _bias(module)
    bias = module_bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(module, nn.Conv2d):
        first = nn.Conv2d(module.in_channels, r, *_conv_geometry(module), groups=1, bias=False)
        first.weight.data.copy_(vh.reshape(r, *w.shape[1:]))
        second = nn.Conv2d(r, out_c, 1, bias=bias)
        second.weight.data.copy_(second_w.reshape(out_c, r, 1, 1))
    else:
        first = nn.Linear(w.shape[1], r, bias=False)
        first.weight.data.copy_(vh)
        second = nn.Linear(r, out_c, bias=bias)
        second.weight.data.copy_(second_w)
    if module_bias is not None:
        _require_bias(second).data.copy_(module_bias.detach())
    seq = nn.Sequential(first, second).to(_weight(module).dtype)
    return seq, s.clone()


def merge(seq: nn.Sequential) -> nn.Module:
    """Multiply a factorised pair (as made by :func:`factorize`) back into one dense layer."""
    if len(seq) != 2:
        raise CompressionError(f"merge needs a 2-layer factorised Sequential, got {len(seq)} layers")
    first, second = seq[0], seq[1]
    w_second, w_first = _weight(second), _weight(first)
    b = w_second.detach().reshape(w_second.shape[0], -1)
    a = w_first.detach().reshape(w_first.shape[0], -1)
    w = b @ a
    second_bias = _bias(second)
    dense: nn.Module
    if isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d):
        dense = nn.Conv2d(first.in_channels, second.out_channels, *_conv_geometry(first),
                          bias=second_bias is not None)
        dense.weight.data.copy_(w.reshape(second.out_channels, *first.weight.shape[1:]))
    elif isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        dense = nn.Linear(first.in_features, second.out_features, bias=second.bias is not None)
        dense.weight.data.copy_(w)
    else:
        raise CompressionError("merge needs two Conv2d or two Linear layers")
    if second_bias is not None:
        _require_bias(dense).data.copy_(second_bias.detach())
    return dense.to(w_first.dtype)


def tucker2_full_ranks(module: nn.Module) -> tuple[int, int]:
    """``(r_in, r_out)`` at which :func:`tucker2` is exact: the ranks of the kernel's input and output unfoldings'
    row spaces, ``min(in, out·k·k)`` and ``min(out, in·k·k)``."""
    if not (isinstance(module, nn.Conv2d) and is_factorizable(module)):
        raise CompressionError(f"tucker2 needs a dense Conv2d (groups=1, zero padding), got {type(module).__name__}")
    w = module.weight
    out_c, in_c = int(w.shape[0]), int(w.shape[1])
    k = int(w.shape[2] * w.shape[3])
    return min(in_c, out_c * k), min(out_c, in_c * k)


def tucker2(module: nn.Module, ranks: tuple[int, int] | None = None) -> nn.Sequential:
    """Replace a dense conv by its Tucker-2 form: ``1×1 in→r_in``, ``k×k r_in→r_out`` core, ``1×1 r_out→out``.

    Args:
        module: an ``nn.Conv2d`` (groups=1, zero padding).
        ranks: ``(r_in, r_out)`` (default: :func:`tucker2_full_ranks`, exact up to float error).

    Returns:
        ``nn.Sequential(first, core, last)``; the core has the conv's stride, padding and dilation, the last
        layer its bias.

    Example:
        >>> conv = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)
        >>> seq = tucker2(conv)
        >>> x = torch.randn(1, 8, 7, 7)
        >>> bool(torch.allclose(seq(x), conv(x), atol=1e-5)), [m.weight.shape[0] for m in tucker2(conv, (3, 2))]
        (True, [3, 2, 6])
    """
    full_in, full_out = tucker2_full_ranks(module)
    r_in, r_out = (full_in, full_out) if ranks is None else (int(ranks[0]), int(ranks[1]))
    if not 1 <= r_in <= full_in or not 1 <= r_out <= full_out:
        raise CompressionError(f"tucker2 ranks {tuple(ranks or ())!r} must be in [1, {full_in}] x [1, {full_out}] "
                               "for this layer")
    assert isinstance(module, nn.Conv2d)
    w = module.weight.detach().float()
    out_c, in_c = w.shape[0], w.shape[1]
    u_out = torch.linalg.svd(w.reshape(out_c, -1), full_matrices=False)[0][:, :r_out]          # (out, r_out)
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(in_c, -1), full_matrices=False)[0][:, :r_in]  # (in, r_in)
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)                                     # (r_out, r_in, kh, kw)
    first = nn.Conv2d(in_c, r_in, 1, bias=False)
    first.weight.data.copy_(u_in.t().reshape(r_in, in_c, 1, 1))
    mid = nn.Conv2d(r_in, r_out, *_conv_geometry(module), bias=False)
    mid.weight.data.copy_(core)
    module_bias = _bias(module)
    last = nn.Conv2d(r_out, out_c, 1, bias=module_bias is not None)
    last.weight.data.copy_(u_out.reshape(out_c, r_out, 1, 1))
    if module_bias is not None:
        _require_bias(last).data.copy_(module_bias.detach())
    return nn.Sequential(first, mid, last).to(module.weight.dtype)
