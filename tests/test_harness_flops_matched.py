"""The ``flops-matched`` control: the method with the FLOPs cost source, its FLOPs target moved until its MEASURED
latency matches the method's (issue 16: "the method with FLOPs instead of latency" at the same measured latency)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from hwloop.search.harness import next_flops_target, run_harness
from hwloop.search.harness_spec import HarnessSpec
from tests.test_harness import spec_dict


def test_one_run_moves_the_target_in_proportion() -> None:
    # FLOPs target 0.5 measured 0.75 for a goal of 0.5: in proportion, 0.5 * 0.5 / 0.75
    assert next_flops_target([(0.5, 0.75, None)], 0.5) == pytest.approx(1 / 3)
    # faster than the goal: the target goes up, clipped at 1
    assert next_flops_target([(0.9, 0.5, None)], 0.7) == pytest.approx(1.0)


def test_two_runs_take_the_secant_in_log_space() -> None:
    # measured = target ** 0.5 exactly: the secant through two points lands on the goal in one step
    tried = [(t, t ** 0.5, None) for t in (0.5, 0.3)]
    assert next_flops_target(tried, 0.45) == pytest.approx(0.45 ** 2)
    # a flat (or inverted) response does not send the target to the clip: the slope is kept >= 0.2
    flat = [(0.5, 0.70, None), (0.3, 0.70 * 0.999, None)]
    assert next_flops_target(flat, 0.6) == pytest.approx(0.3 * math.exp(math.log(0.6 / (0.70 * 0.999)) / 0.2))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("harness-fm")
    d = spec_dict(name="harness-fm")
    d["controls"] = {**d["controls"], "run": ["flops", "flops-matched"]}
    summary = run_harness(HarnessSpec.from_dict(d), out, progress=False)
    assert summary["failed"] == []
    return {json.loads(p.read_text())["entry"]: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def test_flops_matched_lands_nearer_the_methods_measured_latency_and_counts_every_run(rows: Any) -> None:
    goal = rows["l1l2"]["measured_ratio"]
    plain, fm = rows["flops"], rows["flops-matched"]
    runs = fm["flops_runs"]
    assert 1 <= len(runs) <= 3 and runs[0]["flops_target"] == pytest.approx(0.5)
    # its first run is the plain flops control's configuration at the same FLOPs target
    assert runs[0]["measured_ratio"] == pytest.approx(plain["measured_ratio"], rel=0.02)
    err = lambda m: abs(math.log(m / goal))  # noqa: E731
    assert err(fm["measured_ratio"]) <= err(runs[0]["measured_ratio"]) + 1e-12
    assert fm["measured_ratio"] == pytest.approx(min((r["measured_ratio"] for r in runs), key=err))
    if len(runs) > 1:          # it moved because the first run was off by more than the tolerance
        assert err(runs[0]["measured_ratio"]) > math.log(1.03) - 1e-9
    assert fm["status"] == ("matched" if abs(fm["measured_ratio"] / goal - 1) <= 0.03 else "off-target")
    # every run's training is counted: more images than one run of the method when it took more than one run
    assert fm["train_images"] >= len(runs) * 0.9 * rows["l1l2"]["train_images"]
    assert "FLOPs target" in fm["status_reason"]
    # every run keeps its validation and test accuracy; the interpolation exists exactly when the runs bracket
    assert fm["flops_max_runs"] == 3 and fm["flops_stop"] in ("within", "bracketed", "cap", "bound")
    assert all(r["val_accuracy"] is not None and r["test_accuracy"] is not None for r in runs)
    under = [r for r in runs if r["measured_ratio"] <= goal]
    over = [r for r in runs if r["measured_ratio"] > goal]
    assert (fm["interp_test_accuracy"] is not None) == bool(under and over)
    if under and over:
        lo, hi = sorted((max(under, key=lambda r: r["measured_ratio"])["test_accuracy"],
                         min(over, key=lambda r: r["measured_ratio"])["test_accuracy"]))
        assert lo - 1e-9 <= fm["interp_test_accuracy"] <= hi + 1e-9
