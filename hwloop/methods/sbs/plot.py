"""A PNG of the bit map SBS chose: weight and activation bits and the kept share of output channels per layer.

Example:
    >>> import tempfile, pathlib
    >>> bm = {"conv1": {"w_bits": 8, "a_bits": 8, "out_channels": 16, "of": 16},
    ...       "fc": {"w_bits": 2, "a_bits": 4, "out_channels": 10, "of": 10}}
    >>> p = plot_bit_map(bm, pathlib.Path(tempfile.mkdtemp()) / "bits.png", title="toy")
    >>> p.stat().st_size > 0
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_bit_map"]


def plot_bit_map(bit_map: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "SBS bit map") -> Path:
    """Write the bar chart of ``bit_map`` (``Candidate.extra["bit_map"]``) to ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bit_map)
    xs = list(range(len(names)))
    w = [float(bit_map[n].get("w_bits") or 32) for n in names]
    a = [float(bit_map[n].get("a_bits") or 32) for n in names]
    keep = [bit_map[n]["out_channels"] / max(1, bit_map[n]["of"]) for n in names]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(names)), 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    ax.bar([x - 0.2 for x in xs], w, width=0.4, color="tab:blue", label="weight bits")
    ax.bar([x + 0.2 for x in xs], a, width=0.4, color="tab:orange", label="activation bits")
    ax.set_ylabel("bits (32: float)")
    ax.set_yticks([2, 4, 8, 16, 32] if max(w + a) > 8 else [2, 4, 8])
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax2.bar(xs, keep, color="tab:green")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("kept output\nchannels")
    ax2.set_xticks(xs)
    ax2.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
