"""Anchored latency (hwloop.devices.anchor): the reference is stored once and reused; results scale consistently."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwloop.devices import MeasureRequest, create_device
from hwloop.devices.anchor import Anchor, calibrate_anchor, drift, measure_anchored
from hwloop.errors import ConfigError
from hwloop.models import ModelRef
from hwloop.store import MeasurementStore
from hwloop.workload import LayerSpec

FAST = {"warmup": 1, "repeats": 5, "min_repeat_ms": 0.5, "max_retries": 0}


def _dev():  # type: ignore[no-untyped-def]
    from hwloop.devices import TimingConfig

    dev = create_device("local-cpu")
    return dev, TimingConfig(**FAST)


def test_anchor_reference_is_stored_once_and_reused(tmp_path: Path) -> None:
    dev, t = _dev()
    req = MeasureRequest.for_model(ModelRef("small_cnn"))
    with MeasurementStore(tmp_path / "a.db") as st:
        first = calibrate_anchor(dev, req, t, store=st, rounds=1)
        assert first.source == "measured" and first.ms > 0
        # a re-measurement replacing the row must not move the reference: the oldest ok row wins
        (again,) = dev.measure([req], t)
        st.add(dev.fingerprint(), req, again, replace=True)
        second = calibrate_anchor(dev, req, t, store=st)
    assert second.source == "store"
    assert second.ms == pytest.approx(first.ms)


def test_measure_anchored_scales_samples_to_ratio_times_reference() -> None:
    dev, t = _dev()
    anchor = Anchor(MeasureRequest.for_model(ModelRef("small_cnn")), ms=2.0)  # a made-up unit: 2 ms
    reqs = [MeasureRequest.for_model(ModelRef("small_cnn", {"width_mult": 0.25})),
            MeasureRequest.for_model(ModelRef("small_cnn"))]
    narrow, same = measure_anchored(dev, reqs, anchor, t)
    for res in (narrow, same):
        a = res.extra["anchor"]
        assert res.latency_ms == pytest.approx(a["ratio"] * 2.0)
        assert sorted(res.samples_ms)[len(res.samples_ms) // 2] == pytest.approx(res.latency_ms, rel=0.35)
        assert res.min_ms <= res.latency_ms <= res.max_ms
        assert a["raw_ms"] > 0 and a["now_ms"] > 0
    assert narrow.extra["anchor"]["ratio"] < same.extra["anchor"]["ratio"]
    assert 0.6 < same.extra["anchor"]["ratio"] < 1.6  # the anchor against itself
    d = drift([narrow, same])
    assert d is not None and d > 0


def test_bad_anchor_inputs() -> None:
    dev, t = _dev()
    layer = MeasureRequest.for_layer(LayerSpec("conv2d", (1, 3, 8, 8), out_channels=4, kernel=3, padding=1))
    with pytest.raises(ConfigError, match="whole-model"):
        calibrate_anchor(dev, layer, t)
    with pytest.raises(ConfigError, match="rounds=0"):
        calibrate_anchor(dev, MeasureRequest.for_model(ModelRef("small_cnn")), t, rounds=0)
    with pytest.raises(ConfigError, match="must be a positive"):
        Anchor(MeasureRequest.for_model(ModelRef("small_cnn")), ms=0.0)


def test_a_failing_request_comes_back_as_a_failure() -> None:
    dev, t = _dev()
    anchor = Anchor(MeasureRequest.for_model(ModelRef("small_cnn")), ms=1.0)
    bad = MeasureRequest.for_model(ModelRef("small_cnn", input_shape=(3, 2, 2)))  # builds, then fails to run
    (res,) = measure_anchored(dev, [bad], anchor, t)
    assert not res.ok and "channels" in (res.error or "")


def test_cli_profile_anchor_reuses_the_stored_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwloop.cli import main

    db = str(tmp_path / "m.db")
    args = ["profile", "small_cnn", "--kwargs", '{"width_mult": 0.5}', "--anchor", "small_cnn", "--repeats", "5",
            "--store", db]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "anchored whole model" in first and "(measured)" in first
    assert main(args) == 0
    assert "(store)" in capsys.readouterr().out
    assert main(["profile", "small_cnn", "--anchor", "nosuchnet", "--store", db]) == 2
    err = capsys.readouterr().err
    assert "nosuchnet" in err and "allowed" in err
