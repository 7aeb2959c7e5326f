"""Jetson fingerprint parsing against realistic fixtures of the files and commands a board has."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwloop.devices.jetson import (
    facts_from_text,
    jetpack_for_l4t,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_tegra_release,
)

FIX = Path(__file__).parent / "fixtures" / "jetson"


def board(name: str, *, clocks: bool = True):  # type: ignore[no-untyped-def]
    d = FIX / name
    return facts_from_text((d / "model").read_text(), (d / "nv_tegra_release").read_text(),
                           (d / "nvpmodel_q.txt").read_text(),
                           (d / "jetson_clocks_show.txt").read_text() if clocks else None)


@pytest.mark.parametrize("name,model,l4t,jetpack,mode,mode_id,locked", [
    ("agx-orin-jp512", "NVIDIA Jetson AGX Orin Developer Kit", "35.4.1", "5.1.2", "MAXN", 0, True),
    ("orin-nano-jp60", "NVIDIA Jetson Orin Nano Developer Kit", "36.3.0", "6.0", "15W", 0, False),
    ("xavier-nx-jp461", "NVIDIA Jetson Xavier NX Developer Kit", "32.7.1", "4.6.1", "MODE_20W_6CORE", 8, True),
])
def test_fixture_boards(name: str, model: str, l4t: str, jetpack: str, mode: str, mode_id: int,
                        locked: bool) -> None:
    f = board(name)
    assert (f.model, f.l4t, f.jetpack, f.nvpmodel, f.nvpmodel_id) == (model, l4t, jetpack, mode, mode_id)
    assert f.clocks_locked is locked
    assert f.identity() == {"jetson_model": model, "l4t": l4t, "jetpack": jetpack, "nvpmodel": mode}
    assert ("clocks are not locked" in " ".join(f.warnings())) is (not locked)


def test_clock_values_are_parsed_in_hz_and_reported_in_mhz() -> None:
    txt = (FIX / "orin-nano-jp60" / "jetson_clocks_show.txt").read_text()
    c = parse_jetson_clocks(txt)
    assert c["soc"] == "tegra234" and len(c["cpu"]) == 6
    assert (c["gpu"].min_hz, c["gpu"].max_hz, c["gpu"].current_hz) == (306_000_000, 624_750_000, 306_000_000)
    assert c["cpu"][0].max_hz == 1_510_400_000  # kHz in the file
    assert c["emc_override"] is False and c["nvpmodel"] == "15W"
    info = board("orin-nano-jp60").info()
    assert info["gpu_mhz"] == 306.0 and info["gpu_max_mhz"] == 624.8 and info["jetson_clocks"] is False
    assert "GPU at 306 of 625 MHz" in board("orin-nano-jp60").warnings()[0]


def test_locked_gpu_but_one_slow_cpu_is_not_locked() -> None:
    txt = (FIX / "agx-orin-jp512" / "jetson_clocks_show.txt").read_text()
    txt = txt.replace("cpu3: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600",
                      "cpu3: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600")
    d = FIX / "agx-orin-jp512"
    f = facts_from_text((d / "model").read_text(), (d / "nv_tegra_release").read_text(), None, txt)
    assert f.clocks_locked is False
    assert f.nvpmodel == "MAXN"  # falls back to the power mode printed by jetson_clocks


def test_without_root_clock_state_is_unknown_and_warned() -> None:
    f = board("agx-orin-jp512", clocks=False)
    assert f.clocks_locked is None and "unknown" in f.warnings()[0]
    assert f.info()["jetson_clocks"] is None


def test_parsers_reject_unrelated_text() -> None:
    assert parse_tegra_release("Ubuntu 22.04.3 LTS") is None
    assert parse_tegra_release("# R35 (release), REVISION: 5.0, GCID: 35550185") == "35.5.0"
    assert jetpack_for_l4t("99.0.0") is None and jetpack_for_l4t(None) is None
    assert parse_nvpmodel("") == (None, None)
    c = parse_jetson_clocks("nothing here")
    assert c["gpu"] is None and c["cpu"] == []
    assert facts_from_text(None, None, None, None).clocks_locked is None
