"""Data files never run code: a ``module:factory`` name planted in any file kind is refused without the opt-in.

Each test plants the name of a module that writes a marker file when it is imported and another
when its factory/class/objective is called, in one kind of file; it asserts that hwloop refuses it
(exit 2, one ``error:`` line saying how to opt in) and that neither marker exists; then, as a positive
control, that the same file with the opt-in (``hwloop --allow-import``, ``HWLOOP_ALLOW_IMPORT=1`` or
``allow_import=True``) does import and call it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hwloop.cli import main
from hwloop.errors import ConfigError, HwloopError
from hwloop.trust import ENV_VAR, allowing_imports, import_allowed

EVIL = '''
import pathlib
_M = pathlib.Path({marker!r})
_M.with_name(_M.name + ".imported").write_text("imported")


def _ran(what):
    _M.with_name(_M.name + ".called").write_text(what)


def make(**kwargs):
    _ran("factory")
    from hwloop.errors import ConfigError
    raise ConfigError("evil factory ran")


def objective(params):
    _ran("objective")
    from hwloop.errors import ConfigError
    raise ConfigError("evil objective ran")


from hwloop.predict.surrogate import SurrogatePredictor


class EvilPredictor(SurrogatePredictor):
    kind = "evil"

    def __init__(self, *args, **kwargs):
        _ran("predictor class")
        from hwloop.errors import ConfigError
        raise ConfigError("evil predictor class ran")
'''


class Evil:
    """A planted module: ``name`` is importable; ``imported``/``called`` tell whether its code ran."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.marker = root / f"{name}.marker"
        (root / f"{name}.py").write_text(EVIL.format(marker=str(self.marker)), encoding="utf-8")

    @property
    def imported(self) -> bool:
        return self.marker.with_name(self.marker.name + ".imported").exists()

    @property
    def called(self) -> bool:
        return self.marker.with_name(self.marker.name + ".called").exists()

    def ran(self) -> bool:
        return self.imported or self.called

    def ref(self, attr: str = "make") -> str:
        return f"{self.name}:{attr}"


@pytest.fixture
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    root = tmp_path / "planted"
    root.mkdir()
    name = "evil_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:60]
    e = Evil(root, name)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.delenv(ENV_VAR, raising=False)
    yield e
    sys.modules.pop(name, None)


def refused(rc: int, err: str, evil: Evil) -> None:
    """Exit 2, the last stderr line is one error naming the opt-in, no traceback, and no code ran."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert lines and lines[-1].startswith("error: ") and "--allow-import" in lines[-1] and ENV_VAR in lines[-1], err
    assert evil.name in lines[-1] and "Traceback" not in err
    assert not evil.ran(), "planted code ran without the opt-in"


def ran_with_opt_in(rc: int, err: str, evil: Evil, fragment: str = "evil factory ran") -> None:
    assert evil.imported and evil.called, err
    assert rc == 2 and fragment in err  # the planted factory raised a ConfigError after writing its marker


# ----------------------------------------------------------------------------- policy
def test_policy_defaults_to_off_and_python_opt_in_works(evil: Evil) -> None:
    from hwloop.models import ModelRef

    assert not import_allowed()
    ref = ModelRef(evil.ref(), input_shape=(1, 8, 8))  # a description: constructing it imports nothing
    assert not evil.ran()
    with pytest.raises(ConfigError, match="--allow-import"):
        ref.build()
    with pytest.raises(ConfigError, match="allow_import=True"):
        ModelRef.from_dict(ref.to_dict()).build()
    assert not evil.ran()
    assert ModelRef.from_dict(ref.to_dict()) == ref and "allow_import" not in ref.to_dict()
    with pytest.raises(ConfigError, match="evil factory ran"):
        ModelRef(evil.ref(), input_shape=(1, 8, 8), allow_import=True).build()
    assert evil.called


def test_builtins_and_hwloop_factories_need_no_opt_in() -> None:
    from hwloop.compress import CompressionPlan
    from hwloop.models import ModelRef

    plan = CompressionPlan(base={"name": "small_cnn"}, widths={"features.0": 8})
    net = ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict()}, input_shape=(1, 8, 8)).build()
    assert net.features[0].out_channels == 8
    with pytest.raises(ConfigError, match="would import"):  # any other hwloop function is not a model
        ModelRef("hwloop.predict.io:_atomic_write", input_shape=(1, 8, 8)).build()


def test_env_var_and_context_manager_opt_in(evil: Evil, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwloop.models import ModelRef

    ref = ModelRef(evil.ref(), input_shape=(1, 8, 8))
    monkeypatch.setenv(ENV_VAR, "1")
    with pytest.raises(ConfigError, match="evil factory ran"):
        ref.build()
    monkeypatch.setenv(ENV_VAR, "0")
    with pytest.raises(ConfigError, match="would import"):
        ref.build()
    with allowing_imports(), pytest.raises(ConfigError, match="evil factory ran"):
        ref.build()
    assert not import_allowed()


def test_cli_flag_lasts_one_command(evil: Evil, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--allow-import", "env", "--json"]) == 0
    assert not import_allowed()  # main() restores the policy after the command


# ----------------------------------------------------------------------------- plan.json of a run folder
def test_plan_json_of_a_run_folder(evil: Evil, tmp_path: Path) -> None:
    from hwloop.compress import CompressionPlan, load_compressed
    from hwloop.models import ModelRef

    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"type": "hwloop.CompressionPlan", "version": 1, "base": {
        "name": evil.ref(), "input_shape": [1, 8, 8]}, "widths": {}, "lowrank": {}, "w_bits": {}}))
    plan = CompressionPlan.from_json((run / "plan.json").read_text())  # parsing the plan runs nothing
    with pytest.raises(ConfigError, match="--allow-import") as ei:
        load_compressed(run)
    assert "\n" not in str(ei.value) and not evil.ran()
    wrapped = ModelRef("hwloop.compress:from_plan", {"plan": plan.to_dict()}, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="--allow-import"):  # nested: the plan's base inside a built-in factory
        wrapped.build()
    assert not evil.ran()
    with allowing_imports(), pytest.raises(ConfigError, match="evil factory ran"):
        load_compressed(run)
    assert evil.imported and evil.called


# ----------------------------------------------------------------------------- store rows / data import
def _store_with_planted_model(path: Path, evil: Evil) -> None:
    from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig
    from hwloop.models import ModelRef
    from hwloop.store import MeasurementStore

    fp = DeviceFingerprint("local-cpu", "cpu", {"cpu": "test"})
    req = MeasureRequest.for_model(ModelRef(evil.ref(), input_shape=(1, 8, 8)))
    res = MeasureResult(req.key, TimingConfig(), latency_ms=1.0, min_ms=0.9, max_ms=1.1, iqr_ms=0.1, cv=0.01,
                        samples_ms=(0.9, 1.0, 1.1))
    with MeasurementStore(f"sqlite:///{path}") as st:
        st.add(fp, req, res)


def test_store_rows_and_data_import(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst, export = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "rows.parquet"
    _store_with_planted_model(src, evil)
    assert main(["data", "export", str(export), "--store", str(src)]) == 0
    assert main(["data", "import", str(export), "--store", str(dst)]) == 0  # rows are data: importing runs nothing
    assert main(["data", "list", "--store", str(dst)]) == 0
    capsys.readouterr()
    assert not evil.ran()
    out = tmp_path / "p.json"
    rc = main(["predictor", "fit", "--device", "local-cpu", "--store", str(dst), "--out", str(out), "--no-eval"])
    refused(rc, capsys.readouterr().err, evil)
    rc = main(["--allow-import", "predictor", "fit", "--device", "local-cpu", "--store", str(dst), "--out", str(out),
               "--no-eval"])
    ran_with_opt_in(rc, capsys.readouterr().err, evil)


# ----------------------------------------------------------------------------- sweep spec
def test_sweep_spec(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwloop.sweep import SweepSpec

    spec = tmp_path / "sweep.toml"
    spec.write_text(f'name = "planted"\nkind = "models"\n\n[[models]]\nname = "{evil.ref()}"\n'
                    'input_shape = [1, 8, 8]\n\n[timing]\nrepeats = 3\nwarmup = 1\n', encoding="utf-8")
    store = tmp_path / "s.db"
    rc = main(["sweep", str(spec), "--store", str(store), "--no-progress"])
    refused(rc, capsys.readouterr().err, evil)  # refused when the spec is read, before anything is measured
    with pytest.raises(ConfigError, match="--allow-import"):
        SweepSpec.from_toml(spec)
    assert not evil.ran()
    with allowing_imports():
        sp = SweepSpec.from_toml(spec)  # with the opt-in the spec is accepted and its model runs the code
        with pytest.raises(ConfigError, match="evil factory ran"):
            sp.models[0].build()
    assert evil.imported and evil.called


# ----------------------------------------------------------------------------- predictor metadata
def _planted_predictor(tmp_path: Path, evil: Evil) -> Path:
    from hwloop.predict import SurrogatePredictor
    from hwloop.predict.io import metadata_hash

    path = SurrogatePredictor().save(tmp_path / "pred" / "p.json")
    meta = json.loads(path.read_text())
    meta["predictor"] = evil.ref("EvilPredictor")
    meta["metadata_sha256"] = metadata_hash(meta)
    path.write_text(json.dumps(meta))
    return path


def test_predictor_metadata_class_name(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwloop.predict import load_predictor

    path = _planted_predictor(tmp_path, evil)
    args = ["predict", "small_cnn", "--predictor", str(path)]
    refused(main(args), capsys.readouterr().err, evil)
    with pytest.raises(HwloopError, match="--allow-import"):
        load_predictor(path)
    assert not evil.ran()
    ran_with_opt_in(main(["--allow-import", *args]), capsys.readouterr().err, evil, "evil predictor class ran")


def test_predictor_metadata_class_name_python_opt_in(evil: Evil, tmp_path: Path) -> None:
    from hwloop.predict import load_predictor

    path = _planted_predictor(tmp_path, evil)
    with pytest.raises(HwloopError, match="evil predictor class ran"):
        load_predictor(path, allow_import=True)
    assert evil.imported and evil.called


def test_predictor_metadata_class_must_be_a_predictor(evil: Evil, tmp_path: Path) -> None:
    from hwloop.predict import load_predictor
    from hwloop.predict.io import metadata_hash

    path = _planted_predictor(tmp_path, evil)
    meta = json.loads(path.read_text())
    meta["predictor"] = "os:system"
    meta["metadata_sha256"] = metadata_hash(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(HwloopError, match="not a hwloop BasePredictor subclass"):
        load_predictor(path, allow_import=True)


# ----------------------------------------------------------------------------- search and compare specs
_SCHEDULE = 'schedule = {{ pretrain_epochs = 0, search_epochs = 1, finetune_epochs = 1 }}\n'


def test_search_spec(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the model: search runs only its tasks' built-in models, opt-in or not
    spec = tmp_path / "search.toml"
    spec.write_text(f'name = "planted"\nmodel = {{ name = "{evil.ref()}" }}\ndata = {{ task = "digits" }}\n'
                    'device = { measure = false }\n' + _SCHEDULE.format(), encoding="utf-8")
    for pre in ([], ["--allow-import"]):
        rc = main([*pre, "search", "run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"])
        assert rc == 2 and "is not available for task" in capsys.readouterr().err and not evil.ran()
    # the predictor file it names: a planted predictor class
    pred = _planted_predictor(tmp_path, evil)
    spec.write_text(f'name = "planted"\nmodel = {{ name = "small_cnn" }}\n'
                    'data = { task = "digits", val_limit = 50 }\ndevice = { measure = false }\n'
                    f'predictor = {{ path = "{pred}", objective = "learned" }}\n' + _SCHEDULE.format(),
                    encoding="utf-8")
    args = ["search", "run", str(spec), "--out", str(tmp_path / "run2"), "--no-progress"]
    refused(main(args), capsys.readouterr().err, evil)
    ran_with_opt_in(main(["--allow-import", *args]), capsys.readouterr().err, evil, "evil predictor class ran")


def test_compare_spec(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _planted_predictor(tmp_path, evil)
    spec = tmp_path / "compare.toml"
    body = ('[search]\nmodel = {{ name = "{model}" }}\ndata = {{ task = "digits", val_limit = 50 }}\n'
            'device = {{ name = "local-cpu" }}\npredictor = {{ path = "{pred}", objective = "learned" }}\n'
            + _SCHEDULE + '\n[differentiable]\ntargets = [0.5]\n\n[optuna]\nsamplers = ["random"]\nn_trials = 2\n'
            '\n[report]\nbaseline = "random"\n')
    spec.write_text('name = "planted"\nseed = 0\n\n' + body.format(model=evil.ref(), pred=pred), encoding="utf-8")
    args = ["compare", str(spec), "--out", str(tmp_path / "cmp"), "--no-progress"]
    for pre in ([], ["--allow-import"]):  # the model: refused opt-in or not (built-in tasks only)
        assert main([*pre, *args]) == 2 and "is not available for task" in capsys.readouterr().err
    assert not evil.ran()
    spec.write_text('name = "planted"\nseed = 0\n\n' + body.format(model="small_cnn", pred=pred), encoding="utf-8")
    refused(main(args), capsys.readouterr().err, evil)
    ran_with_opt_in(main(["--allow-import", *args]), capsys.readouterr().err, evil, "evil predictor class ran")


def test_search_spec_method_class(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwloop.errors import SearchError
    from hwloop.methods import method_class

    spec = tmp_path / "search.toml"
    spec.write_text(f'name = "planted"\nmodel = {{ name = "small_cnn" }}\ndata = {{ task = "digits" }}\n'
                    f'device = {{ measure = false }}\n\n[method]\nname = "{evil.ref("EvilPredictor")}"\n',
                    encoding="utf-8")
    refused(main(["search", "run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"]),
            capsys.readouterr().err, evil)
    with pytest.raises(SearchError, match="--allow-import"):
        method_class(evil.ref("EvilPredictor"))
    assert not evil.ran()
    with pytest.raises(SearchError, match="not a hwloop.methods.CompressionMethod subclass"):
        method_class(evil.ref("EvilPredictor"), allow_import=True)  # imported (marker), then refused by type
    assert evil.imported


def test_search_run_warns_for_a_predictor_of_another_device() -> None:
    from hwloop.models import ModelRef
    from hwloop.predict import PredictorWarning
    from hwloop.search.latency import select_latency_model
    from hwloop.search.space import SearchSpace

    space = SearchSpace.from_ref(ModelRef("small_cnn"))
    pred = Path(__file__).resolve().parents[1] / "measurements" / "asic-tpu32" / "predictor.json"
    with pytest.warns(PredictorWarning, match="fitted on device 'asic-tpu32'.*'local-cpu'"):
        select_latency_model(space, predictor_path=str(pred), device="local-cpu", progress=False,
                             max_grid_points=64)


# ----------------------------------------------------------------------------- Optuna storage objective
def test_optuna_storage_objective(evil: Evil, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hwloop.search.optuna_search import StudySettings, create_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_study("planted", url, StudySettings(sampler="random", n_trials=1, directions=("maximize",),
                                               objective={"name": evil.ref("objective"), "params": {}}))
    args = ["search", "worker", "--study", "planted", "--storage", url, "--no-progress", "--no-wait"]
    refused(main(args), capsys.readouterr().err, evil)
    rc = main(["--allow-import", *args])
    err = capsys.readouterr().err
    assert evil.imported and evil.called, err
    del rc  # the planted objective raises inside a trial; the worker records the failed trial
