"""One control cell of the evidence harness (:mod:`hwloop.search.harness`), against a method's finished cell.

The method's row gives the goal (its measured latency ratio on the device) and the compute (its training
images). Uniform and magnitude controls bisect their knob on the device's measured ratio
(:func:`~hwloop.search.controls.bisect_measured`); random search and TPE spend the method's training images on
trials plus a final fine-tune (``[controls] final_share`` of them for the final one), TPE-plateau runs until its
best validation accuracy stops improving and then gets the method's whole training-image budget as its final
fine-tune. Choices are made on the validation split; the test set scores the final model only.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from hwloop.errors import SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.controls import (
    bisect_measured,
    black_box,
    channel_scores,
    magnitude_config,
    recalibrate_bn,
    train_images,
    uniform_config,
)

if TYPE_CHECKING:  # pragma: no cover
    from hwloop.search.harness import Cell, Harness

__all__ = ["control_row"]


def _measure(h: Harness, cell: Cell, net: Any, plan: Any, ledger: ComputeLedger) -> dict[str, Any]:
    from hwloop.search.report import compare_compressed

    t0 = time.perf_counter()
    m = compare_compressed(cell.device, net, plan, h.model, example=h.ref.example_input())
    dt = time.perf_counter() - t0
    ledger.add("measure", wall_s=dt, device_s=dt, device_measurements=2 * max(1, int(m.get("rounds", 1))))
    return m


def _train(h: Harness, net: Any, cell: Cell, images: int, ledger: ComputeLedger) -> str:
    """The control's training: the method's images, or (a method that did not retrain) BN re-estimation or none."""
    sch = h.spec.schedule
    if images > 0:
        train_images(net, h.loader(cell.seed), images, sch.lr, weight_decay=sch.weight_decay, ledger=ledger)
        return f"fine-tuned for {images} training images (the method's)"
    nb = h.spec.controls.bn_batches
    if nb:
        with ledger.phase("bn-recalibrate"):
            seen = recalibrate_bn(net, h.loader(cell.seed), nb)
        return f"no retraining (as the method); batch-norm statistics re-estimated from {seen} images"
    return "no retraining (as the method)"


def control_row(h: Harness, control: str, cell: Cell, ref: dict[str, Any], ledger: ComputeLedger) -> dict[str, Any]:
    """The row of control ``control`` on ``cell`` against the method row ``ref``."""
    if control in ("uniform", "magnitude"):
        return _matched(h, control, cell, ref, ledger)
    if control in ("random", "tpe", "tpe-plateau"):
        return _black_box(h, control, cell, ref, ledger)
    raise SearchError(f"control {control!r} is not run by control_row")


def _matched(h: Harness, control: str, cell: Cell, ref: dict[str, Any], ledger: ComputeLedger) -> dict[str, Any]:
    goal = ref.get("measured_ratio")
    if goal is None or not goal > 0:
        raise SearchError(f"the method cell of {cell.key} has no measured latency ratio")
    space, ctl = h.space, h.spec.controls
    if control == "uniform":
        make = lambda x: uniform_config(space, x)
    else:
        if h._scores is None:
            h._scores = channel_scores(space)
        scores = h._scores
        make = lambda x: magnitude_config(space, x, scores)
    seen: dict[str, tuple[float, Any]] = {}

    def measure(x: float) -> float:
        cfg = make(x)
        plan = space.plan_from_config(cfg)
        key = repr(sorted(plan.widths.items()))
        if key not in seen:
            with ledger.phase("build"):
                net, plan = space.compress(cfg)
            seen[key] = (float(_measure(h, cell, net, plan, ledger)["ratio"]), plan)
        return seen[key][0]

    x, _, trace = bisect_measured(measure, float(goal), lo=0.0, hi=1.0, steps=ctl.bisect_steps,
                                      tol=ctl.tolerance)
    cfg = make(x)
    net, plan = space.compress(cfg)
    m = _measure(h, cell, net, plan, ledger)   # the chosen model, measured again (the figure in the table)
    how = _train(h, net, cell, int(ref.get("train_images") or 0), ledger)
    with ledger.phase("eval"):
        val = h.val_eval(net)
    with ledger.phase("test"):
        test = h.test_eval(net)
    off = m["ratio"] / goal - 1
    ok = abs(off) <= ctl.tolerance
    lat = h.latency(cell.device)
    pred = float(lat.plan_latency(plan)) / float(lat.original())
    status = "matched" if ok else "off-target"
    reason = (f"measured {m['ratio']:.3f}x vs the method's {goal:.3f}x ({off:+.1%}, tolerance ±{ctl.tolerance:.0%}); "
              f"knob {x:.4f} after {len(trace)} measured steps; {how}")
    return {"method": control, "cost_source": "measured", "val_accuracy": val, "test_accuracy": test,
            "predicted_ratio": pred, "search_ratio": None, "measured_ratio": float(m["ratio"]),
            "measured_ms": float(m["latency_ms"]), "original_measured_ms": float(m["original_ms"]),
            "status": status, "status_reason": reason, "plan": plan.to_dict(), "setting": f"knob={x:.4f}",
            "goal_ratio": float(goal), "bisect": [[a, b] for a, b in trace], "knob": x,
            "measured_ratio_ci": m.get("ratio_ci"), "measure_unstable": m.get("unstable"),
            "measured_pass_ratios": m.get("pass_ratios")}


def _black_box(h: Harness, control: str, cell: Cell, ref: dict[str, Any], ledger: ComputeLedger) -> dict[str, Any]:
    ctl, sch = h.spec.controls, h.spec.schedule
    budget = int(ref.get("train_images") or 0)
    n_train = len(h.train_ds)
    trial_images = max(1, round(ctl.trial_fraction * n_train))
    lat = h.latency(cell.device)
    sampler = "random" if control == "random" else "tpe"
    plateau = control == "tpe-plateau"
    final = budget if plateau else round(budget * ctl.final_share)
    res = black_box(h.space, lat, cell.target, h.loader(cell.seed), h.val_eval, sampler=sampler, seed=cell.seed,
                    trial_images=trial_images, lr=sch.lr, weight_decay=sch.weight_decay, max_trials=ctl.max_trials,
                    max_proposals=ctl.max_proposals, n_startup=ctl.n_startup, ledger=ledger,
                    budget_images=None if plateau else budget - final, patience=ctl.patience if plateau else None)
    info = {"trials": res.trials, "proposals": res.proposals, "trial_images": trial_images,
            "search_images": res.images, "stopped": res.stopped}
    if res.config is None:
        return {"method": control, "cost_source": f"{lat.kind}/{h.spec.cost.objective}", "val_accuracy": None,
                "test_accuracy": None, "predicted_ratio": None, "search_ratio": None, "measured_ratio": None,
                "measured_ms": None, "original_measured_ms": None, "status": "missed",
                "status_reason": f"no feasible configuration was trained ({res.stopped}; {res.proposals} proposals, "
                                 f"budget {budget - final if control != 'tpe-plateau' else 'open'} images for trials, "
                                 f"{trial_images} per trial)", "plan": None, "setting": "", **info}
    net, plan = h.space.compress(res.config)
    pred = float(lat.plan_latency(plan)) / float(lat.original())
    how = _train(h, net, cell, final, ledger)
    m = _measure(h, cell, net, plan, ledger)
    with ledger.phase("eval"):
        val = h.val_eval(net)
    with ledger.phase("test"):
        test = h.test_eval(net)
    status = "met" if pred <= cell.target * (1 + 1e-6) else "missed"
    n_tr = sum(1 for t in res.trials if t["accuracy"] is not None)
    reason = (f"best of {n_tr} trained trials ({res.proposals} proposals; stopped: {res.stopped}) at "
              f"validation {res.accuracy:.2f}% after {trial_images} images; predicted {pred:.3f}x; final: {how}")
    return {"method": control, "cost_source": f"{lat.kind}/{h.spec.cost.objective}", "val_accuracy": val,
            "test_accuracy": test, "predicted_ratio": pred, "search_ratio": pred,
            "measured_ratio": float(m["ratio"]), "measured_ms": float(m["latency_ms"]),
            "original_measured_ms": float(m["original_ms"]), "status": status, "status_reason": reason,
            "plan": plan.to_dict(), "setting": f"trials={n_tr}", **info,
            "measured_ratio_ci": m.get("ratio_ci"), "measure_unstable": m.get("unstable"),
            "best_trial_val": res.accuracy if res.accuracy is not None and math.isfinite(res.accuracy) else None}
