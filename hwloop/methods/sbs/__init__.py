"""``sbs``: Single-path Bit Sharing (Liu, Zhuang, Chen, Shen, Cai, Tan; TPAMI 2023), joint pruning (0-bit filters)
and mixed-precision quantization behind the method contract.

* :mod:`~hwloop.methods.sbs.quant` — the super-bit quantizer (a b₁-bit base plus re-quantized offsets on nested
  grids; all gates on = the top-bit quantizer exactly) and the straight-through threshold gates;
* :mod:`~hwloop.methods.sbs.gated` — :class:`SbsModel`: the gates attached to a model (layer-wise weight and
  activation bit gates, filter-wise 0-bit gates on coupled channel groups, first/last layer policy);
* :mod:`~hwloop.methods.sbs.cost` — BOPs, and latency from the shared layer cost table on bit-aware devices;
* :mod:`~hwloop.methods.sbs.method` — :class:`SbsConfig`, :class:`SbsMethod` (search, repair, extract, QAT
  fine-tune);
* :mod:`~hwloop.methods.sbs.plot` — a PNG of the chosen bit map.

See ``docs/sbs.md``.
"""

from __future__ import annotations

from hwloop.methods.sbs.method import SbsConfig, SbsMethod

__all__ = ["SbsConfig", "SbsMethod"]
