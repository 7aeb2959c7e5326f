"""The harness table flags a method whose MEASURED latency is above its target, whatever its own cost model said."""

from __future__ import annotations

from hwloop.search.harness_report import summarize


def _row(seed: int, measured: float, kind: str = "method", entry: str = "l1l2") -> dict:
    return {"entry": entry, "kind": kind, "device": "local-cpu", "target": 0.5, "seed": seed, "status": "met",
            "measured_ratio": measured, "test_accuracy": 80.0}


def test_a_method_measured_above_its_target_is_flagged_with_the_count_and_the_worst_excess() -> None:
    g = summarize([_row(0, 0.603), _row(1, 0.51), _row(2, 0.55)])[0]
    assert g["status"] == "met 3/3; MEASURED above the target by more than 5%: 2/3 (up to +21%)"


def test_within_five_percent_and_controls_are_not_flagged() -> None:
    assert summarize([_row(0, 0.524), _row(1, 0.49)])[0]["status"] == "met 2/2"
    ctl = [{**_row(0, 0.8, kind="control", entry="uniform"), "status": "matched"}]
    assert summarize(ctl)[0]["status"] == "matched 1/1"


def test_a_control_budgeted_by_its_own_cost_model_is_flagged_too() -> None:
    """Random search and TPE stop at the target by the predictor ("met"); the device may say otherwise."""
    rows = [{**_row(s, m, kind="control", entry="random")} for s, m in ((0, 0.579), (1, 0.52), (2, 0.49))]
    assert summarize(rows)[0]["status"] == "met 3/3; MEASURED above the target by more than 5%: 1/3 (up to +16%)"
