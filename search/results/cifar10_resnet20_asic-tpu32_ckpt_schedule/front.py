"""CIFAR-10 ResNet-20 on asic-tpu32 from the checkpoint: the search's target schedules side by side (issue 7).

Reads the ``report.json`` of each ``bench_search.py`` run listed in ``RUNS`` (one folder per run under
``search/results/``; each has its own unpruned baseline, the checkpoint trained for as many epochs as search +
fine-tune) and writes ``front.md`` (one table row per run) and ``front.png`` (accuracy vs measured latency / the
baseline's, both schedules, the baselines drawn as one point each). No training; seconds. Example::

    python search/results/cifar10_resnet20_asic-tpu32_ckpt_schedule/front.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["HINGE", "OLD", "PRUNE", "RUNS", "SOFT", "main"]

RESULTS = Path(__file__).resolve().parents[1]
OLD, SOFT, HINGE, PRUNE = ("dual ascent (before)", "warm-up + hinge on the soft latency",
                           "warm-up + hinge", "warm-up + hinge + widths fixed after warm-up")
RUNS = {   # folder -> schedule label (the 0.48 "before" run is the second session's, same command and predictor seed)
    "cifar10_resnet20_asic-tpu32_ckpt_fill": OLD,
    "cifar10_resnet20_asic-tpu32_ckpt_old_t060": OLD,
    "cifar10_resnet20_asic-tpu32_ckpt_old_t070": OLD,
    "cifar10_resnet20_asic-tpu32_ckpt_wu05_softhinge_t048": SOFT,
    "cifar10_resnet20_asic-tpu32_ckpt_wu05_hinge_t048": HINGE,
    "cifar10_resnet20_asic-tpu32_ckpt_wu05_hinge_prune_t048": PRUNE,
    "cifar10_resnet20_asic-tpu32_ckpt_wu05_hinge_prune_t060": PRUNE,
    "cifar10_resnet20_asic-tpu32_ckpt_wu05_hinge_prune_t070": PRUNE,
}


def _ratios_from_log(path: Path) -> tuple[float, float]:
    """(latency ratio at the end of the search, ratio of the hard sizes) as a run's ``bench.log`` states them."""
    import re

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    soft = re.findall(r"search epoch \d+: .*?latency ratio ([0-9.]+)", text)
    hard = re.findall(r"budget: hard sizes gave ([0-9.]+)", text)
    return (float(soft[-1]) if soft else float("nan")), (float(hard[0]) if hard else float("nan"))


def _rows() -> list[dict]:
    rows = []
    for folder, label in RUNS.items():
        path = RESULTS / folder / "report.json"
        if not path.is_file():
            print(f"skipping {folder}: no report.json", file=sys.stderr)
            continue
        rep = json.loads(path.read_text(encoding="utf-8"))
        b, x = rep["baseline"], rep["runs"]["predictor"]
        soft, hard = _ratios_from_log(RESULTS / folder / "bench.log")   # runs recorded before report.json had them
        rows.append({"folder": folder, "schedule": label, "target": x["target"],
                     "soft_end": x.get("soft_final_ratio", soft), "hard_search": x.get("hard_search_ratio", hard),
                     "measured_ratio": x["measured_ms"] / b["measured_ms"], "pred_error": x["prediction_error"],
                     "accuracy": x["accuracy"], "accuracy_extracted": x["accuracy_extracted"],
                     "baseline_accuracy": b["accuracy"], "drop": x["accuracy_drop"], "macs": x["macs"] / x["original_macs"],
                     "w_bits": x["mean_w_bits"], "cost": x["cost_ratio"], "search_s": x["seconds"]["total"],
                     "baseline_s": b["seconds"]})
    return rows


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows()
    out = Path(__file__).resolve().parent
    lines = [("| run | schedule | target | latency ratio, search end (soft / hard) | measured / baseline | pred. error | "
              "accuracy % (after extraction) | baseline % | Δacc | MACs | mean w-bits | wall s (search / baseline) | cost |"),
             "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| `{r['folder']}` | {r['schedule']} | {r['target']:.2f} | {r['soft_end']:.3f} / {r['hard_search']:.3f} | "
                     f"{r['measured_ratio']:.3f} | {r['pred_error']:+.1%} | {r['accuracy']:.2f} ({r['accuracy_extracted']:.2f}) | "
                     f"{r['baseline_accuracy']:.2f} | {-r['drop']:+.2f} | {r['macs']:.1%} | {r['w_bits']:.1f} | "
                     f"{r['search_s']:.0f} / {r['baseline_s']:.0f} | {r['cost']:.2f} |")
    (out / "front.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    base = [r["baseline_accuracy"] for r in rows]
    if base:
        ax.scatter([1.0], [sum(base) / len(base)], color="k", label="unpruned, same epochs")
    for label, color in ((OLD, "tab:blue"), (SOFT, "tab:gray"), (HINGE, "tab:orange"), (PRUNE, "tab:red")):
        pts = sorted((r["measured_ratio"], r["accuracy"], r["target"]) for r in rows if r["schedule"] == label)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        for m, a, t in pts:
            ax.annotate(f"target {t:.2f}", (m, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("measured latency on asic-tpu32 / unpruned")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("ResNet-20 from the checkpoint: search 1 + fine-tune 1 epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
