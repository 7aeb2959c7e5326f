"""Accuracy vs width of CIFAR-10 LCS width families with and without in-place distillation, and the single models
(issue 20, docs/lcs.md "Session 8"): mean ± std over seeds from the ``summary.json`` files of
``lcs_cifar_summary.py``.

Run::

    .venv/bin/python benchmarks/lcs_kd_plot.py search/results/lcs_cifar/tbl_kd_alpha.png \\
        "family (CE)=search/results/lcs_cifar/tbl_s0,search/results/lcs_cifar/tbl_s1,search/results/lcs_cifar/tbl_s2" \\
        "family + in-place KD=search/results/lcs_cifar/tbl_kd_s0,..."

Every group is ``label=dir,dir,...``; single models (trained alone) are taken from the first group's folders.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _stats(rows_by_seed: list[list[dict[str, Any]]], key: str) -> tuple[list[float], list[float], list[float]]:
    widths = sorted({r["width"] for rows in rows_by_seed for r in rows if r.get(key) is not None})
    mean, std = [], []
    for w in widths:
        v = [r[key] for rows in rows_by_seed for r in rows if r["width"] == w and r.get(key) is not None]
        mean.append(statistics.mean(v))
        std.append(statistics.stdev(v) if len(v) > 1 else 0.0)
    return widths, mean, std


def main() -> int:
    out, groups = sys.argv[1], sys.argv[2:]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    singles: list[list[dict[str, Any]]] = []
    for i, g in enumerate(groups):
        label, dirs = g.rsplit("=", 1)   # the label may hold "=", the folders do not
        rows = [json.loads((Path(d) / "summary.json").read_text())["rows"] for d in dirs.split(",")]
        if i == 0:
            singles = rows
        w, m, s = _stats(rows, "family_test")
        ax.errorbar(w, m, yerr=s, fmt="o-", color=f"C{i}", capsize=3, label=f"{label}: test ({len(rows)} seeds)")
        w, m, _ = _stats(rows, "family_val")
        ax.plot(w, m, "o:", color=f"C{i}", alpha=0.45, label=f"{label}: validation")
    w, m, s = _stats(singles, "single_test")
    ax.errorbar(w, m, yerr=s, fmt="s", ms=9, mfc="none", color="k", capsize=3,
                label=f"trained alone at one width: test ({len(singles)} seeds)")
    ax.set_xlabel("width (α = 0 … 1 ↔ width 0.25 … 1)")
    ax.set_ylabel("accuracy % (CIFAR-10, 2,000 random images)")
    ax.set_ylim(30, 92)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("ResNet-20 LCS width family (batch stats + table, sorted channels, 10k images, 1 epoch)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
