"""ComputeLedger: per-trial / per-phase compute records shared by both searches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwloop.errors import ConfigError
from hwloop.search.accounting import COMPUTE_UNITS, ComputeLedger, ComputeRecord


class FakeClock:
    """A deterministic seconds clock (the ledger's clock is injectable, like time.perf_counter)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_phase_times_wall_clock_and_counts() -> None:
    clock = FakeClock()
    led = ComputeLedger(clock=clock)
    with led.phase("train", trial=3) as p:
        p.train_images += 640
        p.epochs += 2
        clock.t += 1.5
    with led.phase("measure", trial=3) as p:
        p.device_s += 0.2
        p.device_measurements += 4
        clock.t += 0.25
    led.add("search", wall_s=7.0)
    assert len(led) == 3
    t3 = led.total(trial=3)
    assert (t3.wall_s, t3.train_images, t3.epochs, t3.device_measurements) == (1.75, 640, 2.0, 4)
    assert t3.device_s == pytest.approx(0.2)
    assert led.total().wall_s == pytest.approx(8.75)
    assert led.total(phase="train").train_images == 640
    assert led.total(phase="measure").train_images == 0
    per_trial = led.by_trial()
    assert list(per_trial) == [3, None]
    assert per_trial[None].wall_s == 7.0 and per_trial[3].wall_s == pytest.approx(1.75)
    assert list(led.by_phase()) == ["train", "measure", "search"]


def test_phase_records_even_when_block_raises() -> None:
    clock = FakeClock()
    led = ComputeLedger(clock=clock)
    with pytest.raises(RuntimeError), led.phase("train", trial=0) as p:
        p.train_images += 10
        clock.t += 2
        raise RuntimeError("diverged")
    assert led.total().train_images == 10 and led.total().wall_s == 2.0


def test_round_trip_json(tmp_path: Path) -> None:
    led = ComputeLedger([ComputeRecord("train", 0, wall_s=1.0, train_images=5, epochs=0.5)])
    led.add("measure", trial=0, device_s=0.1, device_measurements=1)
    path = led.save(tmp_path / "ledger.json")
    again = ComputeLedger.load(path)
    assert again.records == led.records
    assert json.loads(path.read_text())["version"] == 1
    for unit in COMPUTE_UNITS:
        assert again.total().value(unit) == led.total().value(unit)


@pytest.mark.parametrize("kwargs, match", [
    ({"phase": ""}, "phase"),
    ({"phase": "x", "trial": -1}, "trial"),
    ({"phase": "x", "wall_s": -1.0}, "wall_s"),
    ({"phase": "x", "wall_s": float("nan")}, "wall_s"),
    ({"phase": "x", "train_images": 1.5}, "train_images"),
    ({"phase": "x", "device_measurements": -2}, "device_measurements"),
])
def test_bad_records_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ComputeRecord(**kwargs)


def test_bad_unit_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compute unit 'flops'"):
        ComputeRecord("x").value("flops")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ComputeLedger.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        ComputeLedger.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="version"):
        ComputeLedger.from_dict({"version": 99, "records": []})
    with pytest.raises(ConfigError, match="unknown compute record field"):
        ComputeRecord.from_dict({"phase": "x", "flops": 3})
