"""hwloop.search.studies and hwloop.search.evidence: the logic the result scripts and bench_search call.

The recorded CIFAR-10 ResNet-20 schedule runs (search/results/*/report.json) must give back the committed
front.md table digit for digit; no training, no device work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwloop.errors import ConfigError
from hwloop.search.evidence import bench_markdown, load_state_file, write_keeping_note
from hwloop.search.studies import schedule_markdown, schedule_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "search" / "results"
FRONT = RESULTS / "cifar10_resnet20_asic-tpu32_ckpt_schedule" / "front.md"


def test_schedule_table_reproduces_the_committed_front() -> None:
    table = [line for line in FRONT.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    runs = {line.split("`")[1]: line.split(" | ")[1] for line in table}
    assert len(runs) == 8
    got = schedule_markdown(schedule_rows(RESULTS, runs)).splitlines()
    assert got[2:] == table


def _report(measured: float, **run: object) -> dict:
    x = {"target": 0.5, "measured_ms": measured, "prediction_error": 0.01, "accuracy": 80.0,
         "accuracy_extracted": 70.0, "accuracy_drop": 3.0, "macs": 50, "original_macs": 100, "mean_w_bits": 6.0,
         "cost_ratio": 0.9, "seconds": {"total": 100.0}, **run}
    return {"baseline": {"measured_ms": 0.2, "accuracy": 83.0, "seconds": 110.0}, "runs": {"predictor": x}}


def test_schedule_rows_skip_missing_runs_and_state_unknown_search_ends(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(_report(0.1, soft_final_ratio=0.45,
                                                                    hard_search_ratio=0.52)), encoding="utf-8")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "report.json").write_text(json.dumps(_report(0.12)), encoding="utf-8")
    rows = schedule_rows(tmp_path, {"a": "s1", "b": "s2", "gone": "s3"})
    assert [r["folder"] for r in rows] == ["a", "b"] and "skipping gone: no report.json" in capsys.readouterr().err
    md = schedule_markdown(rows)
    assert "| `a` | s1 | 0.50 | 0.450 / 0.520 | 0.500 | +1.0% |" in md
    assert "| `b` | s2 | 0.50 | nan / nan | 0.600 |" in md        # no search end recorded: said, not invented


def test_bench_markdown_states_the_budget_verdict() -> None:
    rep = {"args": {"model": "small_cnn", "task": "digits", "train_limit": 0, "val_limit": 0, "device": "asic-tpu32",
                    "epochs": "1,1,1"},
           "predictor": {"layers": 10, "holdout_mape": 0.05, "holdout_within_10pct": 0.9},
           "baseline": {"accuracy": 97.0, "measured_ms": 0.2, "predicted_ms": 0.21, "seconds": 10.0},
           "runs": {"predictor": {"target": 0.5, "accuracy": 37.5, "accuracy_drop": 59.5, "measured_ms": 0.1,
                                  "measured_reduction": 0.5, "predicted_ms": 0.1, "prediction_error": 0.0,
                                  "macs": 1, "original_macs": 2, "params": 5, "seconds": {"total": 9.0},
                                  "cost_ratio": 0.9, "accuracy_extracted": 30.0, "budget_status": "missed",
                                  "budget_reason": "met only by repair"}}}
    md = bench_markdown(rep)
    assert "| predictor-driven search (target 0.50) | 37.50 | -59.50 | 0.1000 | -50.0% |" in md
    assert "  budget: missed (met only by repair)" in md


def test_load_state_file_rejects_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--checkpoint .*nope.safetensors: no such file"):
        load_state_file(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_state_file(str(bad), "--init")


def test_a_regenerated_report_keeps_the_note_added_after_the_run(tmp_path: Path) -> None:
    md = tmp_path / "fronts.md"
    md.write_text("> **Superseded.** old device.\n\n| old | table |\n", encoding="utf-8")
    write_keeping_note(md, "| new | table |\n")
    assert md.read_text(encoding="utf-8") == "> **Superseded.** old device.\n\n| new | table |\n"
    plain = tmp_path / "plain.md"
    write_keeping_note(plain, "| t |\n")                      # no old file, no note
    write_keeping_note(plain, "| u |\n")
    assert plain.read_text(encoding="utf-8") == "| u |\n"
