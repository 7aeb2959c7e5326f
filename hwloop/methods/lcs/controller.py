"""The run-time controller: switch α along a stream of latency budgets (or a load signal), judged on the device.

At each step :class:`LcsController` asks the family's :meth:`~hwloop.methods.lcs.family.LcsFamily.select` for the
most accurate α whose *table* latency meets the budget (no data, no retraining), then measures the chosen member
*live on the device* (``measure(alpha) -> ms``; by default :func:`hwloop.search.report.measure_compressed`). A step
is a **miss** when the measured latency is above the budget, whatever the table said. The **regret** of a step is
the accuracy of the best α that would have met the budget by measured latency (``reference_ms``: one live
measurement per α, taken once before the run) minus the accuracy delivered (0 when no α meets it — an
*infeasible* step; a step whose chosen α missed is charged the full accuracy of that best α).

Example:
    >>> from hwloop.methods.lcs.controller import budgets_from_load
    >>> budgets_from_load([0.0, 0.5, 0.75], 10.0)
    [10.0, 5.0, 2.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hwloop.errors import SearchError
from hwloop.methods.lcs.family import LcsFamily

__all__ = ["ControllerRun", "ControllerStep", "LcsController", "budgets_from_load", "plot_run"]


def budgets_from_load(load: Iterable[float], budget_ms: float) -> list[float]:
    """Budgets under a load signal: a share ``load`` ∈ [0, 1) of the device is taken, ``budget·(1 − load)`` is left."""
    out = []
    for v in load:
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise SearchError(f"load value {v!r} must be in [0, 1)")
        out.append(float(budget_ms) * (1.0 - float(v)))
    return out


@dataclass(frozen=True)
class ControllerStep:
    """One budget: what was chosen, what the table said, what the device measured."""

    t: int
    budget_ms: float
    alpha: float
    table_ms: float
    measured_ms: float
    accuracy: float | None
    table_met: bool
    miss: bool
    best_alpha: float | None
    best_accuracy: float | None
    regret: float | None
    switched: bool


@dataclass
class ControllerRun:
    """Every step plus the totals."""

    device: str
    steps: list[ControllerStep] = field(default_factory=list)

    @property
    def misses(self) -> int:
        return sum(s.miss for s in self.steps)

    @property
    def switches(self) -> int:
        return sum(s.switched for s in self.steps)

    def summary(self) -> dict[str, Any]:
        regs = [s.regret for s in self.steps if s.regret is not None]
        accs = [s.accuracy for s in self.steps if s.accuracy is not None]
        feasible = [s for s in self.steps if s.best_alpha is not None]
        return {"device": self.device, "steps": len(self.steps), "misses": self.misses,
                "infeasible_steps": len(self.steps) - len(feasible),
                "misses_when_feasible": sum(s.miss for s in feasible),
                "table_misses": sum(not s.table_met for s in self.steps), "switches": self.switches,
                "mean_regret": sum(regs) / len(regs) if regs else None, "max_regret": max(regs) if regs else None,
                "mean_accuracy": sum(accs) / len(accs) if accs else None}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "steps": [asdict(s) for s in self.steps]}


class LcsController:
    """Switches the family's α to follow a budget (see the module docstring).

    Args:
        family: a family with a latency table for ``device`` (:meth:`LcsFamily.measure`).
        device: a profile name or Device; members are measured on it.
        measure: ``alpha -> measured ms`` (default: a live :func:`measure_compressed` of the member).
        reference_ms: measured latency per α for the regret (default: ``measure`` of every table α, once).
    """

    def __init__(self, family: LcsFamily, device: str | Any, *, measure: Callable[[float], float] | None = None,
                 reference_ms: Mapping[float, float] | None = None, timing: Any = None) -> None:
        from hwloop.devices import create_device

        self.family = family
        self.device = create_device(device) if isinstance(device, str) else device
        if self.device.name not in family.latency:
            raise SearchError(f"family has no latency table for device {self.device.name!r}; run measure() first")
        self._members: dict[float, Any] = {}
        self._timing = timing
        self.measure = measure or self._measure_live
        self.reference_ms = dict(reference_ms) if reference_ms is not None else {
            a: self.measure(a) for a in sorted(family.latency[self.device.name])}
        self.alpha: float | None = None

    def _measure_live(self, alpha: float) -> float:
        from hwloop.search.report import measure_compressed

        m = self._members.get(alpha)
        if m is None:
            m = self._members[alpha] = self.family.at(alpha)
        return float(measure_compressed(self.device, m.model, m.plan, example=self.family.ref.example_input(),
                                        timing=self._timing, method="model" if m.plan is not None else "auto"
                                        )["latency_ms"])

    def step(self, t: int, budget_ms: float) -> ControllerStep:
        sel = self.family.select(budget_ms, self.device.name)
        measured = self.measure(sel.alpha)
        ok = [a for a, ms in self.reference_ms.items() if ms <= budget_ms]
        acc = self.family.accuracy
        best = max(ok, key=lambda a: (acc.get(a, -math.inf), a)) if ok else None
        best_acc = acc.get(best) if best is not None else None
        miss = measured > budget_ms
        regret = None
        if best_acc is not None:
            regret = best_acc - (sel.accuracy or 0.0) if not miss else best_acc
        elif best is None:
            regret = 0.0
        switched = self.alpha is not None and sel.alpha != self.alpha
        self.alpha = sel.alpha
        return ControllerStep(t, float(budget_ms), sel.alpha, sel.latency_ms, measured, sel.accuracy, sel.met, miss,
                              best, best_acc, regret, switched)

    def run(self, budgets: Sequence[float]) -> ControllerRun:
        run = ControllerRun(self.device.name)
        for t, b in enumerate(budgets):
            run.steps.append(self.step(t, float(b)))
        return run


def plot_run(run: ControllerRun, path: str, title: str = "") -> str:
    """A PNG: budget, table and measured latency of the chosen α (misses marked), α and accuracy below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in run.steps]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.step(t, [s.budget_ms for s in run.steps], where="mid", label="budget", color="k")
    ax1.plot(t, [s.table_ms for s in run.steps], "o--", ms=3, label="table latency (select)")
    ax1.plot(t, [s.measured_ms for s in run.steps], "s-", ms=3, label="measured latency")
    miss = [s for s in run.steps if s.miss]
    if miss:
        ax1.plot([s.t for s in miss], [s.measured_ms for s in miss], "rx", ms=9, label=f"miss ({len(miss)})")
    ax1.set_ylabel(f"ms on {run.device}")
    ax1.legend(fontsize=8)
    ax2.step(t, [s.alpha for s in run.steps], where="mid", label="alpha chosen")
    ax2.set_ylabel("alpha")
    ax3 = ax2.twinx()
    ax3.plot(t, [s.accuracy if s.accuracy is not None else math.nan for s in run.steps], "g.-", label="accuracy")
    ax3.set_ylabel("accuracy %", color="g")
    ax2.set_xlabel("step")
    s = run.summary()
    fig.suptitle(title or f"LCS controller on {run.device}: {s['misses']} misses, mean regret {s['mean_regret']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
