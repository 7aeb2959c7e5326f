"""LCS: Learning Compressible Subspaces (Nunez et al.) — one trained line of networks, α chosen at run time.

* :mod:`~hwloop.methods.lcs.lines` — line layers, compression functions γ(α), α samplers, the cos² regulariser;
* :mod:`~hwloop.methods.lcs.train` — training both endpoints;
* :mod:`~hwloop.methods.lcs.family` — the deployable family (files, real members, α → latency tables, ``select``);
* :mod:`~hwloop.methods.lcs.controller` — switching α along a stream of budgets, misses measured on the device;
* :mod:`~hwloop.methods.lcs.method` — ``LcsMethod`` behind the method seam (registered as ``lcs``).

See ``docs/lcs.md``.
"""

from __future__ import annotations

from hwloop.methods.lcs.family import LcsFamily, Member, Selection, default_grid
from hwloop.methods.lcs.lines import (
                                      MODES,
                                      LineConv2d,
                                      LineLinear,
                                      LineNorm,
                                      LineState,
                                      alpha_to_bits,
                                      cos2_regularizer,
                                      n_channels,
                                      sample_alphas,
                                      to_lines,
                                      topk_mask,
)
from hwloop.methods.lcs.train import train_lines

__all__ = ["MODES", "LcsFamily", "LineConv2d", "LineLinear", "LineNorm", "LineState", "Member", "Selection",
           "alpha_to_bits", "cos2_regularizer", "default_grid", "n_channels", "sample_alphas", "to_lines",
           "topk_mask", "train_lines"]
