"""Sweep specs, run_sweep / run_farm on the real CPU backend, and the sweep/data CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hwloop.cli import main
from hwloop.devices.base import MeasureRequest, MeasureResult, TimingConfig
from hwloop.devices.cpu import CpuDevice
from hwloop.errors import ConfigError, DeviceError
from hwloop.store import MeasurementStore
from hwloop.sweep import SweepSpec, run_farm, run_sweep

REPO = Path(__file__).resolve().parents[1]
T = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.2, max_retries=0)


def layer_spec(**kw: object) -> SweepSpec:
    d: dict[str, object] = {"name": "t", "kind": "layers", "sampling": "random", "n": 6, "seed": 0,
                            "space": {"op": ["conv2d", "linear"], "in_channels": {"min": 4, "max": 32},
                                      "out_channels": {"min": 4, "max": 32}, "kernel": [1, 3],
                                      "resolution": [4, 8]}}
    d.update(kw)
    return SweepSpec.from_dict(d)


# --------------------------------------------------------------------------- specs
@pytest.mark.parametrize("path", sorted((REPO / "measurements" / "specs").glob("*.toml")), ids=lambda p: p.stem)
def test_example_specs_parse_and_are_deterministic(path: Path) -> None:
    spec = SweepSpec.from_toml(path)
    a, b = spec.requests(), spec.requests()
    assert a and [r.key for r in a] == [r.key for r in b] and len({r.key for r in a}) == len(a)
    if spec.kind == "layers" and spec.n:
        assert len(a) == spec.n


@pytest.mark.parametrize("sampling", ["random", "sobol"])
def test_seed_changes_the_sample_and_n_is_respected(sampling: str) -> None:
    a = layer_spec(sampling=sampling, n=16).requests()
    b = layer_spec(sampling=sampling, n=16, seed=1).requests()
    assert len(a) == len(b) == 16 and [r.key for r in a] != [r.key for r in b]
    ins = [r.layer.in_channels for r in a]  # type: ignore[union-attr]
    assert min(ins) >= 4 and max(ins) <= 32 and len(set(ins)) > 3


def test_grid_is_the_full_product_and_n_subsamples_it() -> None:
    space = {"op": ["conv2d"], "in_channels": {"min": 8, "max": 24, "step": 8}, "out_channels": [8, 16],
             "kernel": [1, 3], "stride": [1, 2]}
    full = SweepSpec.from_dict({"name": "g", "sampling": "grid", "space": space}).requests()
    assert len(full) == 3 * 2 * 2 * 2
    assert {(r.layer.in_channels, r.layer.kernel[0]) for r in full} == {  # type: ignore[union-attr]
        (c, k) for c in (8, 16, 24) for k in (1, 3)}
    sub = SweepSpec.from_dict({"name": "g", "sampling": "grid", "n": 5, "space": space}).requests()
    assert len(sub) == 5 and {r.key for r in sub} <= {r.key for r in full}


def test_depthwise_groups_and_group_rounding() -> None:
    dw = SweepSpec.from_dict({"name": "d", "sampling": "grid", "space": {
        "in_channels": [6, 10], "groups": ["depthwise", 4]}}).requests()
    specs = [r.layer for r in dw]
    assert any(s.groups == s.in_channels == s.out_channels for s in specs)  # type: ignore[union-attr]
    g4 = [s for s in specs if s.groups == 4]  # type: ignore[union-attr]
    assert g4 and all(s.in_channels % 4 == 0 and s.out_channels % 4 == 0 for s in g4)  # type: ignore[union-attr]


def test_other_ops_build_valid_layers() -> None:
    reqs = SweepSpec.from_dict({"name": "o", "sampling": "grid", "space": {
        "op": ["pooling", "activation", "batchnorm", "add", "matmul"], "variant": ["", "avg"], "kernel": [2],
        "stride": [2], "padding": [0], "tokens": [4]}}).requests()
    ops = {r.layer.op for r in reqs}  # type: ignore[union-attr]
    assert ops == {"pooling", "activation", "batchnorm", "add", "matmul"}
    pool = [r.layer for r in reqs if r.layer.op == "pooling"]  # type: ignore[union-attr]
    assert all(p.out_shape[2] == 16 for p in pool)  # type: ignore[union-attr]  # 32 / stride 2


def test_models_spec_random_widths_and_per_layer(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text('name = "m"\nkind = "models"\nper_layer = true\n[[models]]\nname = "small_cnn"\n'
                 '[random_widths]\nfamily = "small_cnn"\nn = 4\nseed = 1\n[timing]\nrepeats = 4\n')
    spec = SweepSpec.from_toml(p)
    reqs = spec.requests()
    assert len(reqs) == 5 and {r.kind for r in reqs} == {"model_layers"}
    assert len({json.dumps(r.model.kwargs, sort_keys=True) for r in reqs}) == 5  # type: ignore[union-attr]
    assert spec.timing_for(T).repeats == 4 and spec.timing_for(T).warmup == 1


@pytest.mark.parametrize("bad, match", [
    ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
    ({"sampling": "lhs"}, "sampling 'lhs' is unknown; allowed: grid, random, sobol"),
    ({"n": None}, "sampling 'random' needs n"),
    ({"n": 0}, "n=0 must be a positive integer"),
    ({"space": {"op": ["conv3d"]}}, "space.op value 'conv3d' is unknown"),
    ({"space": {"kernel": {"min": 5, "max": 3}}}, "needs min <= max"),
    ({"space": {"kernal": [3]}}, r"unknown space dimension\(s\) \['kernal'\]"),
    ({"space": {"in_channels": [0]}}, "space.in_channels value 0 must be an integer >= 1"),
    ({"timing": {"repeats": 0}}, r"\[timing\] timing repeats=0 must be an integer >= 1"),
    ({"kind": "models"}, "kind 'models' needs"),
    ({"kind": "models", "space": {}, "models": [{"name": "nope"}]}, "model 'nope' is unknown"),
])
def test_bad_specs_give_one_line_config_errors(bad: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"name": "b", "sampling": "random", "n": 3}
    base.update(bad)
    if base.get("n") is None:
        base.pop("n")
    with pytest.raises(ConfigError, match=match) as ei:
        SweepSpec.from_dict(base)
    assert "\n" not in str(ei.value)


def test_from_toml_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SweepSpec.from_toml(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        SweepSpec.from_toml(tmp_path / "bad.toml")


# --------------------------------------------------------------------------- running
def test_run_sweep_stores_everything_then_skips_and_resumes(tmp_path: Path) -> None:
    reqs = layer_spec(n=8).requests()
    dev = CpuDevice(threads=1)
    seen: list[tuple[str, bool]] = []
    with MeasurementStore(tmp_path / "m.db") as st:
        s1 = run_sweep(reqs[:5], dev, st, T, progress=False, batch_size=2,
                       on_result=lambda q, r, stored: seen.append((q.key, stored)))
        assert (s1.measured, s1.skipped, s1.failed) == (5, 0, 0)
        assert seen == [(r.key, True) for r in reqs[:5]]
        s2 = run_sweep(reqs, dev, st, T, progress=False)
        assert (s2.measured, s2.skipped) == (3, 5) and st.count() == 8
        s3 = run_sweep(reqs, dev, st, T, progress=False)
        assert (s3.measured, s3.skipped) == (0, 8)
        df = st.to_dataframe()
        assert (df["latency_ms"] > 0).all() and (df["timing_key"] == T.key).all()
        assert s2.per_device["local-cpu"]["measured"] == 3


class StreamingCpu(CpuDevice):
    """The CPU backend plus measure_iter; checks that each result was committed before the next is made."""

    def __init__(self, store: MeasurementStore, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.store, self.checked = store, 0

    def measure_iter(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None
                     ) -> Iterator[tuple[MeasureRequest, MeasureResult]]:
        for req in requests:
            n0 = self.store.count()
            yield req, self.measure([req], timing)[0]
            assert self.store.count() == n0 + 1  # stored before the generator resumed
            self.checked += 1


def test_measure_iter_results_are_committed_as_they_arrive(tmp_path: Path) -> None:
    reqs = layer_spec(n=5).requests()
    with MeasurementStore(tmp_path / "m.db") as st:
        dev = StreamingCpu(st, threads=1)
        s = run_sweep(reqs, dev, st, T, progress=False, batch_size=10)
        assert s.measured == 5 and dev.checked == 5 and st.count() == 5


class DroppingCpu(CpuDevice):
    """A CPU device whose link drops after ``ok_batches`` batches (like a remote board going away)."""

    def __init__(self, ok_batches: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.left = ok_batches

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        if self.left == 0:
            raise DeviceError(f"device {self.name!r}: connection lost")
        self.left -= 1
        return super().measure(requests, timing)


def test_device_failure_keeps_what_was_stored(tmp_path: Path) -> None:
    reqs = layer_spec(n=6).requests()
    with MeasurementStore(tmp_path / "m.db") as st:
        with pytest.raises(DeviceError, match="connection lost"):
            run_sweep(reqs, DroppingCpu(1, threads=1), st, T, progress=False, batch_size=2)
        assert st.count() == 2
        s = run_sweep(reqs, CpuDevice(threads=1), st, T, progress=False)
        assert (s.measured, s.skipped) == (4, 2)


def test_failed_requests_are_stored_and_retried() -> None:
    from hwloop.workload import LayerSpec

    huge = MeasureRequest.for_layer(LayerSpec("linear", (1, 8), out_channels=8))
    t = TimingConfig(warmup=0, repeats=1, number=1, timeout_s=1e-9)  # every request times out
    with MeasurementStore("sqlite://") as st:
        s = run_sweep([huge], CpuDevice(threads=1), st, t, progress=False)
        assert (s.measured, s.failed) == (0, 1) and st.count(ok_only=True) == 0
        assert run_sweep([huge], CpuDevice(threads=1), st, t, progress=False, retry_failed=False).skipped == 1


def test_farm_measures_every_device_in_parallel_into_one_store(tmp_path: Path) -> None:
    reqs = layer_spec(n=6).requests()
    devs = [CpuDevice("cpu-t1", threads=1), CpuDevice("cpu-t2", threads=2), DroppingCpu(0, name="gone", threads=3)]
    with MeasurementStore(tmp_path / "m.db") as st:
        s = run_farm(reqs, devs, st, T, progress=False, batch_size=2)
        assert s.per_device["cpu-t1"]["measured"] == 6 and s.per_device["cpu-t2"]["measured"] == 6
        assert s.errors == {"gone": "device 'gone': connection lost"} and s.measured == 12
        assert st.count() == 12 and {d.name for d in st.devices()} == {"cpu-t1", "cpu-t2"}


def test_farm_devices_with_the_same_fingerprint_share_one_queue(tmp_path: Path) -> None:
    reqs = layer_spec(n=8).requests()
    devs = [CpuDevice("board-1", threads=1), CpuDevice("board-2", threads=1)]
    assert devs[0].fingerprint().key == devs[1].fingerprint().key
    with MeasurementStore(tmp_path / "m.db") as st:
        s = run_farm(reqs, devs, st, T, progress=False, batch_size=1)
        assert s.measured == 8 and st.count() == 8
        assert sum(v["measured"] for v in s.per_device.values()) == 8


# --------------------------------------------------------------------------- CLI
def _profile(tmp_path: Path, name: str, threads: int) -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'name = "{name}"\nbackend = "cpu"\n[options]\nthreads = {threads}\n'
                 "[timing]\nwarmup = 1\nrepeats = 3\nmin_repeat_ms = 0.2\nmax_retries = 0\n")
    return str(p)


def test_cli_sweep_farm_then_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = REPO / "measurements" / "specs" / "grid-small.toml"
    db = str(tmp_path / "m.db")
    a, b = _profile(tmp_path, "cpu-a", 1), _profile(tmp_path, "cpu-b", 2)
    assert main(["sweep", str(spec), "--device", a, "--device", b, "--store", db, "--limit", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cpu-a" in out and "cpu-b" in out and "total" in out
    assert main(["data", "list", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "cpu-a" in out and "6 rows, 2 devices" in out
    assert main(["data", "show", "--store", db, "--device", "cpu-b", "-n", "2"]) == 0
    assert "conv2d" in capsys.readouterr().out
    assert main(["data", "export", str(tmp_path / "e.csv"), "--store", db]) == 0
    assert main(["data", "import", str(tmp_path / "e.csv"), "--store", str(tmp_path / "copy.db")]) == 0
    assert "imported 6 rows" in capsys.readouterr().out
    with MeasurementStore(tmp_path / "copy.db") as st:
        assert st.count() == 6 and not math.isnan(st.to_dataframe()["latency_ms"].iloc[0])


@pytest.mark.parametrize("argv, msg", [
    (["sweep", "nope.toml"], "sweep spec nope.toml does not exist"),
    (["sweep", "{spec}", "--device", "no-such-device"], "device 'no-such-device' is unknown"),
    (["sweep", "{spec}", "--store", "foo://x"], "unknown scheme 'foo'"),
    (["sweep", "{spec}", "--adaptive"], "--adaptive needs --budget"),
    (["sweep", "{spec}", "--limit", "0"], "--limit 0 must be >= 1"),
    (["data", "list", "--store", "foo://"], "unknown scheme 'foo'"),
    (["data", "show", "--device", "ghost"], "measurements.db does not exist"),  # read-only: no store invented
    (["data", "import", "missing.parquet"], "does not exist"),
    (["data", "export", "out.txt"], "must end in .parquet or .csv"),
])
def test_cli_errors_are_one_line_exit_2(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(REPO / "measurements" / "specs" / "grid-small.toml")
    assert main([a.replace("{spec}", spec) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1 and "Traceback" not in err
