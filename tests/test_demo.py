"""``hwloop demo`` runs the whole loop; ``profile``/``demo`` say when measurements cannot be trusted
(issue 13 items 2 and 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hwloop.cli import main
from hwloop.devices import MeasureRequest, TimingConfig
from hwloop.devices.base import machine_load
from hwloop.models import ModelRef
from hwloop.profiling import timing_warnings
from hwloop.store import MeasurementStore

LINE = re.compile(r"compressed model: (\d+\.\d\d)× measured latency \(predicted (\d+\.\d\d)×\), "
                  r"accuracy (\d+\.\d)% → (\d+\.\d)%")


def test_demo_runs_the_whole_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, db = tmp_path / "demo", tmp_path / "m.db"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--store", str(db)]) == 0
    text = capsys.readouterr().out.replace("\n", " ")
    m = LINE.search(re.sub(r"\s+", " ", text))
    assert m, text[-2000:]
    measured, predicted = float(m.group(1)), float(m.group(2))
    assert 0 < measured < 1.5 and 0 < predicted < 1.0
    png = out / "demo.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in re.sub(r"\s+", "", text)  # says where it was written
    for f in ("predictor.json", "run/plan.json", "run/weights.safetensors", "run/metrics.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["measure_method"] == "model" and metrics["measure_interleaved"] is True
    lo, hi = metrics["measured_ratio_ci"]
    assert lo <= metrics["measured_ratio"] <= hi
    assert f"{metrics['measured_ratio']:.2f}" == m.group(1) and f"{metrics['predicted_ratio']:.2f}" == m.group(2)
    assert metrics["params"] < metrics["original_params"]  # a real, smaller model was extracted and measured
    with MeasurementStore(db) as st:  # the profile and the predictor's measurements are in the store
        assert st.count() > 40 and {d.name for d in st.devices()} == {"local-cpu"}


def test_demo_bad_target_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--target", "1.5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--target 1.5" in err and "(0, 1)" in err and len(err.splitlines()) == 1


def _profile(tmp_path: Path, max_cv: float) -> Path:
    p = tmp_path / f"cpu-{max_cv}.toml"
    p.write_text(f'name = "cpu-{max_cv}"\nbackend = "cpu"\n[options]\nthreads = 1\n'
                 f'[timing]\nwarmup = 1\nrepeats = 3\nmin_repeat_ms = 0.2\nmax_cv = {max_cv}\nmax_retries = 0\n',
                 encoding="utf-8")
    return p


def _keys(db: Path) -> tuple[int, list[tuple[str, str, str]]]:
    with MeasurementStore(db) as st:
        df = st.to_dataframe()
        return st.count(), list(zip(df["device_key"], df["workload_key"], df["timing_key"]))


def test_remeasure_replaces_rows_and_keeps_the_old_ones_as_history(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db, dev = tmp_path / "m.db", str(_profile(tmp_path, 10.0))  # max_cv 10: never unstable
    args = ["profile", "small_cnn", "--device", dev, "--store", str(db)]
    assert main(args) == 0
    n, keys = _keys(db)
    assert main(args) == 0
    assert re.search(r"measured 0 jobs, reused \d+ from the store", re.sub(r"\s+", " ", capsys.readouterr().out))
    with MeasurementStore(db) as st:
        before = {k: st.get(*k) for k in keys}
    assert main([*args, "--remeasure"]) == 0
    assert f"measured {n} jobs, reused 0" in re.sub(r"\s+", " ", capsys.readouterr().out)
    with MeasurementStore(db) as st:
        assert st.count() == n  # the newest row is the one used ...
        for k, old in before.items():
            hist = st.history(*k)
            assert len(hist) == 1 and hist[0].samples_ms == old.samples_ms  # ... the old one is history
            assert st.get(*k).samples_ms != old.samples_ms


def test_unstable_rows_are_marked_and_measured_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, dev = tmp_path / "m.db", str(_profile(tmp_path, 0.0))  # max_cv 0: every row is unstable
    args = ["profile", "small_cnn", "--device", dev, "--store", str(db), "--all"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert " *" in cap.out
    assert "unstable (spread above max_cv 0% after the retries, marked *)" in re.sub(r"\s+", " ", cap.err)
    n, keys = _keys(db)
    assert main(args) == 0  # not silently reused: measured again, the old rows kept as history
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert f"measured {n} jobs, reused 0" in out and f"measured again {n} unstable stored rows" in out
    with MeasurementStore(db) as st:
        assert st.count() == n and all(len(st.history(*k)) == 1 for k in keys)


def test_loaded_machine_warning_names_the_remedy() -> None:
    loaded = {"load1": 9.5, "cores": 2, "loaded": True}
    (w,) = timing_warnings(loaded, 0)
    assert "load average 9.5 on 2 cores" in w and "--remeasure" in w and "local-cpu-threadclock" in w
    assert timing_warnings({"load1": 0.2, "cores": 2, "loaded": False}, 0) == []
    assert len(timing_warnings(loaded, 3, TimingConfig(max_cv=0.05))) == 2
    here = machine_load()
    assert here["loaded"] == (here["load1"] > here["cores"])


def test_profile_report_records_load_and_unstable_rows() -> None:
    from hwloop.devices.cpu import CpuDevice
    from hwloop.profiling import profile_model

    t = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_cv=0.0, max_retries=0)
    rep = profile_model(ModelRef("small_cnn"), CpuDevice(threads=1), None, t, progress=False)
    assert rep.load["cores"] >= 1 and "load1" in rep.load
    assert rep.model_unstable and rep.unstable_count == sum(r.unstable for r in rep.rows) + 1
    assert rep.unstable_count > 1 and "unstable" in rep.to_dataframe().columns
    assert MeasureRequest.for_model(ModelRef("small_cnn")).kind == "model"


def test_stale_warning_flags_a_device_whose_speed_moved() -> None:
    from hwloop.profiling import stale_warning

    assert stale_warning(1.0, 1.15) is None and stale_warning(1.0, 0.85) is None
    w = stale_warning(0.40, 0.68)
    assert w is not None and "1.70x" in w and "--remeasure" in w and "\n" not in w
    assert stale_warning(1.0, 0.5) is not None
    assert stale_warning(float("nan"), 1.0) is None and stale_warning(0.0, 1.0) is None
