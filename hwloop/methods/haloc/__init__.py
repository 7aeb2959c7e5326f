"""HALOC (Xiao et al., AAAI 2023): hardware-aware automatic low-rank compression, as a method behind the seam.

* :mod:`~hwloop.methods.haloc.mixed` — the over-parameterised layer (Tucker-2 / SVD branches at candidate ranks,
  HOSVD-initialised, plus the dense layer), wrapping and extraction into a real model and its plan;
* :mod:`~hwloop.methods.haloc.costs` — rank candidates at multiples of the device's latency step, read from the
  shared layer cost table, and the expected latency ``Σ p·T_l(r)``;
* :mod:`~hwloop.methods.haloc.search` — alternating weight / architecture steps with the feature-map-approaching
  regulariser and a latency target;
* :mod:`~hwloop.methods.haloc.method` — :class:`HalocConfig` and :class:`HalocMethod` (``"haloc"`` in
  :data:`hwloop.methods.METHODS`).

See ``docs/haloc.md``.
"""

from hwloop.methods.haloc.method import HalocConfig, HalocMethod

__all__ = ["HalocConfig", "HalocMethod"]
