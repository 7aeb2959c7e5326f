"""The shape-family split of benchmarks/bench_shape_family.py (issue 15): a family never straddles folds."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hwloop.workload import LayerSpec

REPO = Path(__file__).resolve().parents[1]


def _bench():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_shape_family
    finally:
        sys.path.pop(0)
    return bench_shape_family


def test_family_ignores_channels_and_separates_geometry() -> None:
    b = _bench()
    a = LayerSpec("conv2d", (1, 16, 8, 8), in_channels=16, out_channels=32, kernel=(3, 3), padding=(1, 1))
    c = LayerSpec("conv2d", (1, 24, 8, 8), in_channels=24, out_channels=8, kernel=(3, 3), padding=(1, 1))
    d = LayerSpec("conv2d", (2, 16, 8, 8), in_channels=16, out_channels=32, kernel=(3, 3), padding=(1, 1))
    e = LayerSpec("conv2d", (1, 16, 8, 8), in_channels=16, out_channels=16, kernel=(3, 3), padding=(1, 1), groups=16)
    assert b.shape_family(a) == b.shape_family(c)
    assert len({b.shape_family(x) for x in (a, d, e)}) == 3


def test_every_family_sits_in_one_fold_and_folds_are_balanced() -> None:
    b = _bench()
    rng = np.random.default_rng(0)
    fams = [f"f{int(i)}" for i in rng.integers(0, 40, size=2000)]
    fold = b.family_folds(fams, 5, 0)
    for f in set(fams):
        assert len({int(fold[i]) for i, g in enumerate(fams) if g == f}) == 1
    counts = np.bincount(fold, minlength=5)
    assert counts.min() > 0 and counts.max() / counts.min() < 1.5
