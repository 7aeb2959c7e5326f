"""Random layer and model pools for building predictor data sets.

Two sources: layers taken from random-width variants of the built-in models (what the
search will ask about) and layers drawn from a broad random grid (coverage). Both are
deterministic given a ``numpy.random.Generator``.

Example:
    >>> import numpy as np
    >>> from hwloop.predict.sampling import random_layer_specs
    >>> specs = random_layer_specs(5, np.random.default_rng(0))
    >>> len(specs), all(s.macs > 0 for s in specs)
    (5, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hwloop.errors import ConfigError
from hwloop.models import ModelRef, random_width_kwargs
from hwloop.workload import LayerSpec

__all__ = ["FAMILIES", "random_layer_specs", "random_model_refs", "unique_specs"]

FAMILIES = ("resnet20", "vgg16", "mobilenetv2", "small_cnn")
_SPATIAL = (32, 16, 8, 4)


def _ch(rng: Any, lo: int = 4, hi: int = 512) -> int:
    """Channel count: log-uniform, half of the time rounded to a multiple of 8."""
    import numpy as np

    c = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    if rng.random() < 0.5:
        c = max(8, round(c / 8) * 8)
    return max(1, c)


def random_layer_specs(n: int, rng: Any, *, batches: Sequence[int] = (1, 2), dtype: str = "float32",
                       bits: Sequence[tuple[int | None, int | None]] = ((None, None),)) -> list[LayerSpec]:
    """``n`` random layers covering the op kinds of CIFAR-sized CNNs.

    Args:
        n: how many specs.
        rng: a ``numpy.random.Generator``.
        batches: batch sizes to draw from.
        dtype: element type of every spec.
        bits: ``(w_bits, a_bits)`` choices drawn uniformly for conv2d/linear specs.

    Returns:
        Specs of kinds conv2d (dense 3×3/1×1, depthwise, low-rank), linear, batchnorm,
        activation, pooling and add.
    """
    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    kinds = ("conv3", "conv1", "dw", "lowrank", "linear", "bn", "act", "pool", "add")
    probs = (0.25, 0.15, 0.1, 0.05, 0.07, 0.12, 0.12, 0.06, 0.08)
    out: list[LayerSpec] = []
    while len(out) < n:
        k = str(rng.choice(kinds, p=probs))
        b = int(rng.choice(list(batches)))
        hw = int(rng.choice(_SPATIAL))
        cin = _ch(rng)
        try:
            if k in ("conv3", "conv1", "lowrank"):
                kk = 3 if k != "conv1" else 1
                stride = 2 if rng.random() < 0.2 and hw > 4 else 1
                cout = _ch(rng)
                rank = None
                if k == "lowrank":
                    rank = max(1, int(min(cin, cout) * rng.uniform(0.1, 0.6)))
                out.append(LayerSpec("conv2d", (b, cin, hw, hw), out_channels=cout, kernel=(kk, kk),
                                     stride=(stride, stride), padding=(kk // 2, kk // 2), rank=rank, dtype=dtype))
            elif k == "dw":
                stride = 2 if rng.random() < 0.25 and hw > 4 else 1
                c = _ch(rng, 8, 1024)
                out.append(LayerSpec("conv2d", (b, c, hw, hw), out_channels=c, kernel=(3, 3),
                                     stride=(stride, stride), padding=(1, 1), groups=c, dtype=dtype))
            elif k == "linear":
                lo = bool(rng.random() < 0.2)
                cout = int(rng.choice([10, 100, _ch(rng)]))
                out.append(LayerSpec("linear", (b, _ch(rng, 8, 2048)), out_channels=cout, bias=True,
                                     rank=max(1, cout // 4) if lo and cout > 8 else None, dtype=dtype))
            elif k == "bn":
                out.append(LayerSpec("batchnorm", (b, cin, hw, hw), dtype=dtype))
            elif k == "act":
                out.append(LayerSpec("activation", (b, cin, hw, hw), variant=str(rng.choice(["relu", "relu6"])),
                                     dtype=dtype))
            elif k == "pool":
                if rng.random() < 0.5:
                    out.append(LayerSpec("pooling", (b, cin, hw, hw), (b, cin, 1, 1), variant="adaptive_avg",
                                         dtype=dtype))
                elif hw >= 2:
                    out.append(LayerSpec("pooling", (b, cin, hw, hw), (b, cin, hw // 2, hw // 2), kernel=(2, 2),
                                         stride=(2, 2), variant="max", dtype=dtype))
            else:
                out.append(LayerSpec("add", (b, cin, hw, hw), dtype=dtype))
        except Exception:  # noqa: BLE001, S112 - an invalid random combination is simply redrawn
            continue
        if len(bits) > 1 and out[-1].op in ("conv2d", "linear"):
            wb, ab = bits[int(rng.integers(len(bits)))]
            out[-1] = out[-1].replace(w_bits=wb, a_bits=ab, out_shape=out[-1].out_shape)
    return out


def random_model_refs(n_per_family: int, rng: Any, *, families: Sequence[str] = FAMILIES, batch: int = 1,
                      include_default: bool = True) -> list[ModelRef]:
    """Random-width variants of built-in families (the first of each family at default width).

    Args:
        n_per_family: models per family.
        rng: a ``numpy.random.Generator``.
        families: built-in model names.
        batch: batch size of every reference.
        include_default: make the first model of each family the default-width one.
    """
    refs: list[ModelRef] = []
    for fam in families:
        for i in range(n_per_family):
            kw: dict[str, Any] = {} if (include_default and i == 0) else random_width_kwargs(fam, rng)
            refs.append(ModelRef(fam, kw, batch=batch))
    return refs


def unique_specs(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
    """Specs with duplicate keys removed (first occurrence kept, order preserved)."""
    seen: set[str] = set()
    out = []
    for s in specs:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out
