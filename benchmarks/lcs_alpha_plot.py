"""Accuracy vs α and measured latency vs α of CIFAR-10 LCS width families (issue 20): one PNG from the
``summary.json`` files that ``lcs_cifar_summary.py`` writes (family validation/test per seed, single models as
points, asic-tpu32 live latency on a second axis).

Run: ``.venv/bin/python benchmarks/lcs_alpha_plot.py search/results/lcs_cifar/fbn_alpha.png search/results/lcs_cifar/fbn_s0 ...``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> int:
    out, dirs = sys.argv[1], [Path(d) for d in sys.argv[2:]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax2 = ax.twinx()
    for i, d in enumerate(dirs):
        s = json.loads((d / "summary.json").read_text())
        rows = s["rows"]
        a = [r["alpha"] for r in rows]
        ax.plot(a, [r["family_test"] for r in rows], "o-", color=f"C{i}", label=f"family test ({d.name})")
        ax.plot(a, [r["family_val"] for r in rows], "o:", color=f"C{i}", alpha=0.5, label=f"family val ({d.name})")
        single = [(r["alpha"], r["single_test"]) for r in rows if r["single_test"] is not None]
        ax.plot([x for x, _ in single], [y for _, y in single], "s", ms=9, mfc="none", color=f"C{i}",
                label=f"trained alone, test ({d.name})")
        if i == 0:
            ax2.plot(a, [r["asic_tpu32_live_ms"] for r in rows], "k^--", label="asic-tpu32 live ms")
            for r in rows:
                ax.annotate(f"w{r['width']:g}", (r["alpha"], 2), fontsize=7, ha="center")
    ax.set_xlabel("alpha (width = 0.25 + 0.75 alpha)")
    ax.set_ylabel("accuracy % (CIFAR-10)")
    ax2.set_ylabel("latency ms (asic-tpu32, measured)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="lower right")
    ax.set_title("LCS frozen-BN width family: accuracy and latency vs alpha", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
