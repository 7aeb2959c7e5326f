"""Device profiles: discovery, validation errors, backend construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwloop.devices import TimingConfig, create_device, list_profiles, load_profile
from hwloop.devices.profiles import DeviceProfile
from hwloop.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_profile_is_valid() -> None:
    files = sorted((REPO / "devices").glob("*.toml"))
    assert files, "devices/ ships profiles"
    names = [load_profile(p).name for p in files]
    assert len(names) == len(set(names)), "profile names are unique"
    for p in files:
        assert load_profile(p).name == p.stem, f"{p.name}: file name and profile name must match"
    assert "local-cpu" in [p.name for p in list_profiles()]


def test_local_cpu_is_builtin_even_without_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWLOOP_DEVICES_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    prof = load_profile("local-cpu")
    assert prof.backend == "cpu"
    dev = create_device(prof)
    assert dev.fingerprint().backend == "cpu"


@pytest.mark.parametrize("text, fragment", [
    ('name = "x"\nbackend = "quantum"\n', "backend 'quantum' is unknown"),
    ('backend = "cpu"\n', "missing required key 'name'"),
    ('name = "x"\nbackend = "cpu"\ncolour = 1\n', "unknown key(s) ['colour']"),
    ('name = "x"\nbackend = "cpu"\n[timing]\nrepeats = -1\n', "repeats=-1 must be an integer >= 1"),
    ('name = "x"\nbackend = "cpu"\n[timing]\nmode = "warp"\n', "mode 'warp' is unknown"),
    ('name = "x"\nbackend = "cpu"\ntiming = 3\n', "[timing] must be a table"),
    ('name = "x"\nbackend = = "cpu"\n', "not valid TOML"),
])
def test_bad_profiles_give_one_line_errors(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "x.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_profile(p)
    msg = str(ei.value)
    assert fragment in msg
    assert "\n" not in msg


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known devices: .*local-cpu"):
        load_profile("no-such-device")


def test_bad_backend_options_are_config_errors() -> None:
    prof = DeviceProfile.from_dict({"name": "c", "backend": "cpu", "options": {"threads": 0}})
    with pytest.raises(ConfigError, match="threads"):
        create_device(prof)


def test_profile_timing_reaches_the_device() -> None:
    prof = DeviceProfile.from_dict({"name": "c", "backend": "cpu", "options": {"threads": 1},
                                    "timing": {"repeats": 7, "warmup": 0}})
    dev = create_device(prof)
    assert dev.timing == TimingConfig(repeats=7, warmup=0)  # type: ignore[attr-defined]
    assert dev.fingerprint().identity["threads"] == 1


def test_read_toml_errors_name_the_file_and_the_kind(tmp_path) -> None:
    from hwloop._toml import read_toml
    from hwloop.errors import SearchError

    bad = tmp_path / "bad.toml"
    bad.write_text("x = [", encoding="utf-8")
    (tmp_path / "good.toml").write_text("a = 1\n", encoding="utf-8")
    assert read_toml(tmp_path / "good.toml", "sweep spec") == {"a": 1}
    with pytest.raises(ConfigError, match=r"^device profile .*missing.toml does not exist$"):
        read_toml(tmp_path / "missing.toml", "device profile")
    with pytest.raises(ConfigError, match="is a folder, not a TOML file"):
        read_toml(tmp_path, "compare spec")
    with pytest.raises(SearchError, match="search spec .*bad.toml is not valid TOML"):
        read_toml(bad, "search spec", SearchError)
