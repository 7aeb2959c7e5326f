"""CIFAR-10 ResNet-20 on asic-tpu32 from the checkpoint: the search's target schedules side by side (issue 7).

Reads the ``report.json`` of each ``bench_search.py`` run listed in ``RUNS`` (one folder per run under
``search/results/``; each has its own unpruned baseline, the checkpoint trained for as many epochs as search +
fine-tune) and writes ``front.md`` (one table row per run) and ``front.png`` (accuracy vs measured latency / the
baseline's, both schedules, the baselines drawn as one point each). No training; seconds. The table and plot are
:mod:`hwloop.search.studies`' ``schedule_*``; a note quoted at the top of ``front.md`` (``> ...`` lines) is kept.
Example::

    python search/results/cifar10_resnet20_asic-tpu32_ckpt_schedule/front.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run from a checkout

from hwloop.search.evidence import write_keeping_note
from hwloop.search.studies import plot_schedules, schedule_markdown, schedule_rows

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
COLORS = {OLD: "tab:blue", SOFT: "tab:gray", HINGE: "tab:orange", PRUNE: "tab:red"}


def main() -> int:
    out = Path(__file__).resolve().parent
    rows = schedule_rows(RESULTS, RUNS)
    table = schedule_markdown(rows)
    write_keeping_note(out / "front.md", table)
    print(table, end="")
    plot_schedules(rows, COLORS, out / "front.png", device="asic-tpu32",
                   title="ResNet-20 from the checkpoint: search 1 + fine-tune 1 epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
