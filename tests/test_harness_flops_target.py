"""The flops-matched control's target search with scripted (FLOPs target -> measured ratio) responses: no training.

The scripted "recorded" response replays session 6's seed-0 cell of the v4 harness (FLOPs targets 0.600, 0.459,
0.395 measured 0.784, 0.660, 0.632 for l1l2's 0.600: three runs, never bracketed) and flattens below it, the way a
FLOPs-only search meets the latency floor of a tiled accelerator.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from hwloop.cli import main
from hwloop.errors import SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.harness import Cell, Harness
from hwloop.search.harness_flops import bracket, interpolate, match_flops_target, next_flops_target
from hwloop.search.harness_spec import HarnessSpec
from tests.test_harness import spec_dict

GOAL = 0.5995707600325548    # l1l2-floor-mag's measured ratio in that cell
REC = [(0.6, 0.7838225051649655), (0.45895908021143184, 0.6599868723783884), (0.3951855655646261, 0.631844166718838)]


def recorded(t: float) -> float:
    """Log-linear through the recorded runs; below the last one the slope drops to 0.15 (a flattening response)."""
    pts = sorted(REC)
    if t <= pts[0][0]:
        return pts[0][1] * (t / pts[0][0]) ** 0.15
    for (ta, ma), (tb, mb) in zip(pts, pts[1:]):
        if t <= tb:
            w = math.log(t / ta) / math.log(tb / ta)
            return math.exp(math.log(ma) + w * math.log(mb / ma))
    return pts[-1][1] * (t / pts[-1][0]) ** 0.6


def test_the_recorded_stall_is_reproduced_then_bracketed_within_the_cap() -> None:
    old = match_flops_target(recorded, 0.6, GOAL, tolerance=0.03, max_runs=3)
    # session 6's three targets, and no bracket: what the recorded cell shows
    assert [t for t, _ in old.tried] == pytest.approx([t for t, _ in REC], rel=1e-9)
    assert old.stop == "cap" and old.bracket is None and not old.within
    new = match_flops_target(recorded, 0.6, GOAL, tolerance=0.03, max_runs=6)
    assert new.stop in ("bracketed", "within") and len(new.tried) <= 6
    assert new.tried[:3] == old.tried          # the same first three runs, then a doubled step past the stall
    assert new.bracket is not None
    under, over = (new.tried[i][1] for i in new.bracket)
    assert under <= GOAL < over
    assert len(new.tried) == 4                 # one extra run settles it


def test_a_bracket_takes_a_safeguarded_false_position_in_log_space() -> None:
    tried = [(0.5, 0.7), (0.2, 0.5), (0.3, 0.58), (0.4, 0.65)]
    assert bracket(tried, 0.6) == (2, 3)       # the nearest under (0.58) and over (0.65)
    w = math.log(0.6 / 0.58) / math.log(0.65 / 0.58)
    assert next_flops_target(tried, 0.6) == pytest.approx(math.exp(math.log(0.3) + w * math.log(0.4 / 0.3)))
    # a goal next to one end: kept 10% inside the log-target interval (no stall at the end)
    assert next_flops_target(tried, 0.5801) == pytest.approx(math.exp(math.log(0.3) + 0.1 * math.log(0.4 / 0.3)))
    assert bracket(tried, 0.45) is None and bracket(tried, 0.5) == (1, 2)   # "at" the goal counts as under


SEED1 = [(0.6, 0.8040184999686969), (0.39446636045890293, 0.6562792485757215),
         (0.25229920643637765, 0.5621500931259), (0.17684996072295872, 0.4066365898704063)]
GOAL1 = 0.5285970857071307


def test_a_wide_bracket_is_narrowed_before_interpolating() -> None:
    """Session 7's seed 1: the doubled step overshot to 0.407 for l1l2's 0.529 (a bracket 23% wide)."""
    def seed1(t: float) -> float:
        pts = sorted(SEED1)
        for (ta, ma), (tb, mb) in zip(pts, pts[1:]):
            if ta * (1 - 1e-9) <= t <= tb * (1 + 1e-9):
                w = math.log(t / ta) / math.log(tb / ta)
                return math.exp(math.log(ma) + w * math.log(mb / ma))
        raise AssertionError(t)

    r = match_flops_target(seed1, 0.6, GOAL1, tolerance=0.03, max_runs=6)
    assert [t for t, _ in r.tried[:4]] == pytest.approx([t for t, _ in SEED1], rel=1e-9)   # the recorded runs
    assert len(r.tried) == 5 and r.stop == "within"       # not stopped at the wide bracket: one more run inside it
    assert SEED1[3][0] < r.tried[4][0] < SEED1[2][0]
    narrow = match_flops_target(seed1, 0.6, GOAL1, tolerance=0.03, max_runs=4)
    assert narrow.stop == "cap" and narrow.bracket == (3, 2)   # with 4 runs: the wide bracket, reported as such


def test_interpolated_accuracy_is_linear_in_measured_latency_between_the_nearest_bracket() -> None:
    pts = [(0.5, 0.70, 85.0), (0.4, 0.62, 80.0), (0.3, 0.56, 77.0), (0.2, 0.45, 60.0)]
    assert interpolate(pts, 0.6) == pytest.approx(77.0 + (0.6 - 0.56) / (0.62 - 0.56) * 3.0)   # 79.0
    assert interpolate(pts, 0.4) is None       # every run above 0.4: no bracket
    assert interpolate([(0.4, 0.62, None), (0.3, 0.56, 77.0)], 0.6) is None


def test_the_cap_and_the_bound_stop_an_unreachable_goal() -> None:
    calls: list[float] = []

    def floor(t: float) -> float:             # never below 0.7: the goal 0.6 is out of reach
        calls.append(t)
        return 0.7 + 0.1 * t

    r = match_flops_target(floor, 0.6, 0.6, tolerance=0.03, max_runs=3)
    assert r.stop == "cap" and len(calls) == 3 and r.bracket is None
    calls.clear()
    r = match_flops_target(floor, 0.6, 0.6, tolerance=0.03, max_runs=20, lo=0.05)
    assert r.stop == "bound" and len(calls) < 20 and r.tried[-1][0] == pytest.approx(0.05)
    assert len(set(calls)) == len(calls)       # no target run twice


def test_within_tolerance_stops_at_once() -> None:
    r = match_flops_target(lambda t: 0.61, 0.6, 0.6, tolerance=0.03, max_runs=6)
    assert r.stop == "within" and len(r.tried) == 1 and r.within


class Scripted(Harness):
    """The harness with each method run replaced by a scripted (target -> measured, accuracies, images) response."""

    def __init__(self, spec: HarnessSpec, out: Path) -> None:
        super().__init__(spec, out, progress=False)
        self.calls: list[float] = []

    def _method_row(self, entry: Any, cell: Cell, ledger: ComputeLedger, objective: str | None = None
                    ) -> dict[str, Any]:
        assert objective == "flops"
        self.calls.append(cell.target)
        m = recorded(cell.target)
        ledger.add("search", train_images=100, epochs=1.0, wall_s=0.25)
        return {"measured_ratio": m, "val_accuracy": 70 + 20 * m, "test_accuracy": 69 + 20 * m, "status": "met",
                "status_reason": "budget met", "setting": f"target={cell.target}"}


def _harness(tmp: Path, runs: int = 6) -> Scripted:
    d = spec_dict(name="fm-scripted")
    d["controls"] = {**d["controls"], "run": ["flops-matched"], "flops_runs": runs}
    h = Scripted(HarnessSpec.from_dict(d), tmp)
    h.claim_folder()
    return h


def test_the_row_keeps_every_run_interpolates_and_resumes(tmp_path: Path) -> None:
    cell = Cell("flops-matched", "control", "l1l2", "asic-tpu32", 0.6, 0)
    h, ledger = _harness(tmp_path), ComputeLedger()
    row = h._flops_matched_row(cell, {"measured_ratio": 0.6}, ledger)
    runs = row["flops_runs"]
    assert len(runs) == len(h.calls) == 4 and row["flops_max_runs"] == 6
    assert row["flops_stop"] in ("within", "bracketed") and row["flops_bracket"] is not None
    assert all(r["val_accuracy"] is not None and r["test_accuracy"] is not None and r["train_images"] == 100
               for r in runs)
    assert ledger.total().train_images == 400            # every run's images counted
    # accuracies are linear in the measured ratio here, so the interpolation is exact at the goal
    assert row["interp_test_accuracy"] == pytest.approx(69 + 20 * 0.6)
    assert row["interp_val_accuracy"] == pytest.approx(70 + 20 * 0.6)
    nearest = min(runs, key=lambda r: abs(math.log(r["measured_ratio"] / 0.6)))
    assert row["measured_ratio"] == nearest["measured_ratio"] and row["test_accuracy"] == nearest["test_accuracy"]
    assert "interpolated" in row["status_reason"] and "stopped at" in row["status_reason"]
    # a restart reuses the logged runs (no method run) and counts their compute again in the new ledger
    h2, ledger2 = _harness(tmp_path), ComputeLedger()
    row2 = h2._flops_matched_row(cell, {"measured_ratio": 0.6}, ledger2)
    assert h2.calls == [] and ledger2.total().train_images == 400
    assert row["reused_wall_s"] == 0.0 and row2["reused_wall_s"] == pytest.approx(4 * 0.25)   # added to cell_wall_s
    assert row2["interp_test_accuracy"] == row["interp_test_accuracy"]
    # another goal (the method cell was rerun) does not reuse them
    h3 = _harness(tmp_path, runs=2)
    row3 = h3._flops_matched_row(cell, {"measured_ratio": 0.59}, ComputeLedger())
    assert len(h3.calls) == 2 and row3["flops_stop"] == "cap" and row3["interp_test_accuracy"] is None


@pytest.mark.parametrize("bad", [0, 21, 2.5, "6"])
def test_a_bad_run_cap_is_one_line(bad: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = spec_dict()
    d["controls"] = {**d["controls"], "flops_runs": bad}
    with pytest.raises(SearchError) as e:
        HarnessSpec.from_dict(d, "bad.toml")
    assert "flops_runs" in str(e.value) and repr(bad) in str(e.value) and "\n" not in str(e.value)
    if bad == 0:                               # and on the CLI: exit 2, one line, nothing written
        from tests.test_harness import to_toml

        p = tmp_path / "bad.toml"
        p.write_text(to_toml(d), encoding="utf-8")
        assert main(["bench", "methods", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "flops_runs=0 must be an integer in [1, 20]" in err[0]
        assert not (tmp_path / "o").exists()


def test_the_table_shows_interpolated_accuracy_only_where_rows_have_it(tmp_path: Path) -> None:
    from hwloop.search.harness_report import write_table

    spec = HarnessSpec.from_dict(spec_dict(seeds=[0, 1]))
    base = {"device": "asic-tpu32", "target": 0.5, "measured_ratio": 0.5, "val_accuracy": 80.0, "train_images": 10,
            "cell_wall_s": 1.0, "measure_s": 0.1, "status": "matched"}
    rows = [{**base, "entry": "l1l2", "kind": "method", "seed": s, "test_accuracy": 79.0} for s in (0, 1)]
    md = write_table(tmp_path, rows, {}, spec).read_text()
    assert "interpolated" not in md and "interp" not in (tmp_path / "results.csv").read_text()
    rows += [{**base, "entry": "flops-matched", "kind": "control", "seed": 0, "test_accuracy": 75.0,
              "interp_test_accuracy": 76.0, "interp_val_accuracy": 77.0},
             {**base, "entry": "flops-matched", "kind": "control", "seed": 1, "test_accuracy": 74.0,
              "interp_test_accuracy": None, "interp_val_accuracy": None}]
    md = write_table(tmp_path, rows, {}, spec).read_text()
    line = next(x for x in md.splitlines() if x.startswith("| flops-matched |"))
    assert "| 76.00 (1/2) | 77.00 (1/2) |" in line     # one of two seeds bracketed: said so
    header = next(x for x in md.splitlines() if x.startswith("| entry |"))
    assert header.count("|") == line.count("|") and "interpolated test acc %" in header
    assert "interp_test_accuracy_mean" in (tmp_path / "results.csv").read_text()


def test_a_run_reused_from_an_older_cell_is_marked(tmp_path: Path) -> None:
    import json

    cell = Cell("flops-matched", "control", "l1l2", "asic-tpu32", 0.6, 0)
    h = _harness(tmp_path)
    rec = {"fingerprint": h.spec.fingerprint(), "goal": GOAL, "target": "0.6",
           "row": {"measured_ratio": recorded(0.6), "val_accuracy": 84.9, "test_accuracy": None,
                   "reused_from": "cells/old/x.json", "run_train_images": 100},
           "ledger": [{"phase": "search", "trial": None, "wall_s": 1.0, "device_s": 0.0, "train_images": 100,
                       "epochs": 1.0, "device_measurements": 0}]}
    (h.cells_dir / f"{cell.key}.runs.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    ledger = ComputeLedger()
    row = h._flops_matched_row(cell, {"measured_ratio": GOAL}, ledger)
    assert 0.6 not in h.calls and len(h.calls) == len(row["flops_runs"]) - 1
    first = row["flops_runs"][0]
    assert first["reused_from"] == "cells/old/x.json" and first["test_accuracy"] is None
    assert "1 run(s) reused from cells/old/x.json" in row["status_reason"]
    assert ledger.total().train_images == 100 * len(row["flops_runs"])
    assert row["interp_test_accuracy"] == pytest.approx(69 + 20 * GOAL)   # the bracketing runs have test accuracy


def test_the_run_log_reuses_only_measured_runs_of_this_spec_and_goal(tmp_path: Path) -> None:
    """A run without a measured ratio (a device failure) is not reused: the next attempt runs it again instead of
    failing the cell on every restart; a torn last line (a kill mid-write), another spec or another goal is skipped."""
    import json

    from hwloop.search.harness import _load_flops_runs

    good = {"fingerprint": "f", "goal": 0.6, "target": "0.5", "row": {"measured_ratio": 0.62}, "ledger": []}
    lines = [good, {**good, "target": "0.4", "row": {"measured_ratio": None}},
             {**good, "target": "0.3", "fingerprint": "other"}, {**good, "target": "0.2", "goal": 0.7}]
    p = tmp_path / "cell.runs.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"fingerprint": "f", "go')
    assert list(_load_flops_runs(p, "f", 0.6)) == ["0.5"]
