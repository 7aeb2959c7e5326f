"""Helpers shared by command modules: parsing model references, timing overrides, opening stores."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from hwloop.errors import ConfigError

__all__ = ["console", "err_console", "parse_model_ref", "parse_shape", "timing_with"]

console = Console()
err_console = Console(stderr=True)


def parse_shape(text: str | None) -> tuple[int, ...]:
    """``"3,32,32"`` → ``(3, 32, 32)``; empty → ``()``."""
    if not text:
        return ()
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"--input-shape {text!r} must be comma-separated positive integers, e.g. 3,32,32") from e
    if any(d <= 0 for d in shape):
        raise ConfigError(f"--input-shape {text!r} must be positive integers, e.g. 3,32,32")
    return shape


def parse_model_ref(model: str, kwargs: str | None = None, input_shape: str | None = None, batch: int = 1,
                    dtype: str = "float32") -> Any:
    """A :class:`hwloop.models.ModelRef` from CLI options (``kwargs`` is a JSON object)."""
    from hwloop.models import ModelRef

    kw: dict[str, Any] = {}
    if kwargs:
        try:
            kw = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--kwargs {kwargs!r} is not valid JSON ({e.msg}); e.g. '{{\"width_mult\": 0.5}}'") from e
        if not isinstance(kw, dict):
            raise ConfigError(f"--kwargs must be a JSON object, got {kwargs!r}")
    return ModelRef(model, kw, parse_shape(input_shape), batch=batch, dtype=dtype)


def timing_with(base: Any, **overrides: Any) -> Any:
    """``base`` TimingConfig with the non-None overrides applied (validated)."""
    from hwloop.devices.base import TimingConfig

    d = base.to_dict()
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TimingConfig.from_dict(d)
