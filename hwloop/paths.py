"""Where hwloop keeps its files: ``$HWLOOP_HOME``, default ``~/.hwloop`` (the store, predictors, caches,
wheelhouses, SSH known hosts, TVM tuning databases, the demo's output).

Example:
    >>> import os
    >>> hwloop_home() == Path(os.environ.get("HWLOOP_HOME") or "~/.hwloop").expanduser()
    True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hwloop_home"]


def hwloop_home() -> Path:
    """``$HWLOOP_HOME`` (``~`` expanded; unset or empty: ``~/.hwloop``). Nothing is created."""
    return Path(os.environ.get("HWLOOP_HOME") or Path.home() / ".hwloop").expanduser()
