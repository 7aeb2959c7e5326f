"""The ``obc`` method's keys (:class:`ObcConfig`, checked on construction; see ``docs/obc.md`` for each key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hwloop.errors import SearchError
from hwloop.methods.base import MethodConfig

__all__ = ["BN_DATA", "BN_MODES", "CALIBRATE_BY", "CHECKS", "COST_SOURCES", "DPS", "DTYPES", "ERRORS", "JOINT_SOURCES",
           "KINDS", "ObcConfig"]

KINDS = ("channels", "bits", "unstructured", "n:m")
ERRORS = ("loss", "obs")
COST_SOURCES = ("latency", "table")
CHECKS = ("latency", "device")
BN_MODES = ("reset", "blend")
BN_DATA = ("train", "calib")
DPS = ("additive", "joint")
JOINT_SOURCES = ("measure", "predictor")
CALIBRATE_BY = ("whole", "resolution", "dp")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _numbers(name: str, v: Any, lo: float, hi: float, *, ints: bool = False, closed_lo: bool = False) -> None:
    what = "ints" if ints else "numbers"
    rng = f"[{lo:g}, {hi:g}]" if closed_lo else f"({lo:g}, {hi:g}]"
    ok = isinstance(v, list) and len(v) > 0 and all(
        not isinstance(x, bool) and isinstance(x, int if ints else (int, float))
        and (lo <= x if closed_lo else lo < x) and x <= hi for x in v)
    if not ok:
        raise SearchError(f"{name}={v!r} must be a non-empty list of {what} in {rng}")


@dataclass(frozen=True)
class ObcConfig(MethodConfig):
    """The ``obc`` keys (see the module docstring and ``docs/obc.md``)."""

    calib: int = 1024
    kinds: list[str] = field(default_factory=lambda: ["channels", "bits"])
    channel_levels: list[float] = field(default_factory=lambda: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    bits: list[int] = field(default_factory=lambda: [8, 4])
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.75])
    error: str = "loss"
    error_images: int = 256
    rel_damp: float = 0.0
    dtype: str = "float32"
    cost_source: str = "latency"
    buckets: int = 10_000
    corrections: int = 8
    tolerance: float = 0.02
    check: str = "latency"
    bn_reestimate: bool = True
    bn_mode: str = "reset"
    bn_data: str = "train"
    targets: list[float] | None = None
    dp: str = "additive"
    rerank: int = 0
    joint_source: str = "measure"
    joint_predictor: str | None = None
    calibrate: int = 0
    calibrate_by: str = "whole"
    margin: float = 0.0
    database_cache: str | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.calib, bool) or not isinstance(self.calib, int) or self.calib < 1:
            raise SearchError(f"calib={self.calib!r} must be an int >= 1 (calibration images)")
        if not (isinstance(self.kinds, list) and self.kinds and all(isinstance(k, str) and k in KINDS for k in self.kinds)):
            raise SearchError(f"kinds={self.kinds!r} must be a non-empty list of {', '.join(KINDS)}")
        _numbers("channel_levels", self.channel_levels, 0.0, 1.0)
        _numbers("bits", self.bits, 2, 16, ints=True, closed_lo=True)
        _numbers("sparsities", self.sparsities, 0.0, 0.99)
        if self.targets is not None:
            _numbers("targets", self.targets, 0.0, 1.0)
        for key, val, allowed in (("error", self.error, ERRORS), ("dtype", self.dtype, tuple(DTYPES)),
                                  ("cost_source", self.cost_source, COST_SOURCES), ("check", self.check, CHECKS),
                                  ("bn_mode", self.bn_mode, BN_MODES), ("bn_data", self.bn_data, BN_DATA),
                                  ("dp", self.dp, DPS), ("joint_source", self.joint_source, JOINT_SOURCES),
                                  ("calibrate_by", self.calibrate_by, CALIBRATE_BY)):
            if val not in allowed:
                raise SearchError(f"{key}={val!r} is unknown; allowed: {', '.join(allowed)}")
        for key, num, lo in (("error_images", self.error_images, 1), ("buckets", self.buckets, 10),
                             ("corrections", self.corrections, 0), ("finetune_epochs", self.finetune_epochs, 0),
                             ("rerank", self.rerank, 0), ("calibrate", self.calibrate, 0)):
            if isinstance(num, bool) or not isinstance(num, int) or num < lo:
                raise SearchError(f"{key}={num!r} must be an int >= {lo}")
        if not (isinstance(self.finetune_lr, (int, float)) and self.finetune_lr > 0):
            raise SearchError(f"finetune_lr={self.finetune_lr!r} must be a number > 0")
        if isinstance(self.margin, bool) or not (isinstance(self.margin, (int, float)) and 0.0 <= self.margin < 0.5):
            raise SearchError(f"margin={self.margin!r} must be a number in [0, 0.5) (the DP aims at "
                              "target x (1 - margin))")
        if not (isinstance(self.tolerance, (int, float)) and 0.0 <= self.tolerance < 1.0):
            raise SearchError(f"tolerance={self.tolerance!r} must be a number in [0, 1)")
        if self.rerank > 1 and self.dp != "joint":
            raise SearchError(f"rerank={self.rerank} needs dp='joint' (its answers per hub combination)")
        if self.joint_predictor is not None and not (isinstance(self.joint_predictor, str)
                                                     and self.joint_predictor.endswith(".json")):
            raise SearchError(f"joint_predictor={self.joint_predictor!r} must be a predictor file path (.json)")
        if self.joint_predictor is not None and self.joint_source != "predictor":
            raise SearchError(f"joint_predictor={self.joint_predictor!r} needs joint_source='predictor'")
        for key, on in (("calibrate", self.calibrate > 0), ("joint_source", self.joint_source != "measure")):
            if on and self.dp != "joint":
                raise SearchError(f"{key}={getattr(self, key)!r} needs dp='joint' (it sets the joint DP's cost)")
        if self.calibrate_by != "whole" and self.calibrate < 1:
            raise SearchError(f"calibrate_by={self.calibrate_by!r} needs calibrate >= 1 (the number of its probes)")
        if self.dp == "joint" and self.cost_source != "table":
            raise SearchError(f"dp='joint' needs cost_source='table' (per-op costs), not {self.cost_source!r}")
        if self.database_cache is not None and not (isinstance(self.database_cache, str) and self.database_cache):
            raise SearchError(f"database_cache={self.database_cache!r} must be a folder path or absent")
        if not (isinstance(self.rel_damp, (int, float)) and 0.0 <= self.rel_damp <= 1.0):
            raise SearchError(f"rel_damp={self.rel_damp!r} must be a number in [0, 1]")
