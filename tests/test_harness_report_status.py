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


def test_paired_uses_the_interpolated_accuracy_and_says_when_the_method_is_ahead_beyond_the_spread() -> None:
    from hwloop.search.harness_report import paired

    method = [_row(s, 0.50) | {"test_accuracy": a, "val_accuracy": a} for s, a in ((0, 80.0), (1, 81.0), (2, 79.0))]
    flops = [{**_row(s, 0.52, kind="control", entry="flops-matched"), "ref": "l1l2", "status": "matched",
              "test_accuracy": 70.0, "val_accuracy": 70.0, "interp_test_accuracy": i, "interp_val_accuracy": i}
             for s, i in ((0, 79.0), (1, 79.5), (2, 77.0))]
    uniform = [{**_row(s, 0.48, kind="control", entry="uniform"), "ref": "l1l2", "status": "matched",
                "test_accuracy": a, "val_accuracy": a} for s, a in ((0, 82.0), (1, 78.0), (2, 79.0))]
    other = [{**_row(0, 0.5, kind="control", entry="uniform"), "ref": "sbs", "status": "matched"}]   # no sbs rows
    by = {p["entry"]: p for p in paired(method + flops + uniform + other)}
    assert set(by) == {"flops-matched", "uniform"}
    f = by["flops-matched"]
    assert f["d_test"] == [1.0, 1.5, 2.0] and f["ahead"] == "ahead, beyond the spread"   # interpolated, not 70.0
    assert f["d_ratio"] == [0.0, 0.0, 0.0] and f["interp"] == [0, 1, 2]   # compared at the method's own latency
    u = by["uniform"]
    assert u["d_test"] == [-2.0, 3.0, 0.0] and u["ahead"] == "ahead, inside the spread"
    assert paired(method + [uniform[0] | {"test_accuracy": 90.0}])[0]["ahead"] == "behind (one seed)"
    mixed = [u | {"test_accuracy": a} for u, a in zip(uniform, (70.0, 90.0, 85.0))]
    assert paired(method + mixed)[0]["ahead"] == "behind, inside the spread"
    behind = [u | {"test_accuracy": 90.0 + u["seed"] * 0.1} for u in uniform]
    assert paired(method + behind)[0]["ahead"] == "behind, beyond the spread"


def test_paired_lists_seeds_without_a_control_result_and_marks_partly_interpolated_groups() -> None:
    from hwloop.search.harness_report import _paired_lines, paired

    method = [_row(s, 0.50) | {"test_accuracy": 80.0, "val_accuracy": 80.0} for s in (0, 1, 2)]
    rnd = [{**_row(s, 0.52, kind="control", entry="random"), "ref": "l1l2", "test_accuracy": a, "val_accuracy": a,
            "status": st} for s, a, st in ((0, None, "missed"), (1, 70.0, "met"), (2, 71.0, "met"))]
    p = paired(method + rnd + [rnd[2]])[0]                   # a repeated row counts once
    assert p["seeds"] == [1, 2] and p["no_result"] == [0] and p["d_test"] == [10.0, 9.0]
    assert abs(p["d_ratio_mean"] - 0.02) < 1e-12
    fm = [{**_row(s, 0.55, kind="control", entry="flops-matched"), "ref": "l1l2", "status": "matched",
           "test_accuracy": 70.0, "val_accuracy": 70.0, **({"interp_test_accuracy": 79.0,
                                                            "interp_val_accuracy": 78.0} if s else {})}
          for s in (0, 1, 2)]
    q = paired(method + fm)[0]
    assert q["interp"] == [1, 2] and q["d_test"] == [10.0, 1.0, 1.0] and q["d_val"] == [10.0, 2.0, 2.0]
    assert abs(q["d_ratio"][0] - 0.05) < 1e-12 and q["d_ratio"][1:] == [0.0, 0.0]   # seed 0: its own run's latency
    tie = [{**_row(s, 0.5, kind="control", entry="uniform"), "ref": "l1l2", "status": "matched",
            "test_accuracy": 80.0, "val_accuracy": 80.0} for s in (0, 1)]
    assert paired(method + tie)[0]["ahead"] == "level, inside the spread"
    text = "\n".join(_paired_lines(method + rnd + fm))
    assert "no control result at seeds 0" in text and "interpolated at seeds 1,2 only" in text
