"""hwloop: hardware-in-the-loop latency modelling and hardware-aware compression search.

Data flows one way: model → workloads → device → store → predictor → search →
compressed model → device. Heavy subpackages are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_predictor"]


def load_predictor(path: Any, *, allow_import: bool | None = None, probe: str | None = None) -> Any:
    """Load a saved latency predictor (see :mod:`hwloop.predict`); the file is untrusted input.

    ``probe="scale"`` or ``"refuse"`` checks this machine's speed against the predictor's first
    (:mod:`hwloop.predict.probe`). ``allow_import=True`` lets a predictor class named ``module:Class`` in its metadata be
    imported (see :mod:`hwloop.trust`); by default only hwloop's own predictor kinds load.

    Example:
        >>> import hwloop  # doctest: +SKIP
        >>> hwloop.load_predictor("measurements/local-cpu/predictor.json").predict_model(model, x)  # doctest: +SKIP
    """
    from hwloop.predict.io import load_predictor as _load

    return _load(path, allow_import=allow_import, probe=probe)
