"""Optuna storage handling: URL forms, exact trial counts with racing worker processes, crash recovery,
and a real PostgreSQL server on loopback (tests/pg.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwloop.errors import ConfigError, SearchError, StoreError
from hwloop.search.optuna_search import (
    StudySettings,
    create_study,
    load_study,
    mask_url,
    open_storage,
    parse_storage_url,
    run_worker,
    study_status,
    trial_rows,
)

REPO = Path(__file__).resolve().parents[1]

# A worker process with a cheap two-objective function; the machinery under test (claiming slots,
# heartbeats, recovery, storage) is the real one.
WORKER = """
import sys, time
from hwloop.search.optuna_search import run_worker
def obj(trial, ledger):
    x = trial.suggest_float('x', 0.0, 1.0)
    y = trial.suggest_int('y', 1, 8)
    with ledger.phase('train', trial=trial.number) as p:
        p.train_images += 10
        time.sleep(float(sys.argv[3]))
    trial.set_constraint('y', y - 6)
    return [x, y * (1.0 - x)]
r = run_worker(sys.argv[1], sys.argv[2], objective=obj, heartbeat_interval_s=1, poll_s=0.2, progress=False,
               worker_id=sys.argv[4])
print('TRIALS', ','.join(map(str, r.trials)), 'RECOVERED', ','.join(map(str, r.recovered)), flush=True)
"""


def _settings(sampler: str = "tpe", n: int = 6) -> StudySettings:
    return StudySettings(sampler=sampler, n_trials=n, directions=("maximize", "minimize"), seed=1,
                         objective={"name": "python-test"}, n_startup_trials=2, population_size=4)


def _spawn(name: str, url: str, sleep_s: float, wid: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, name, url, str(sleep_s), wid], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials_of(out: str) -> list[int]:
    line = next(ln for ln in out.splitlines() if ln.startswith("TRIALS"))
    field = line.split()[1] if len(line.split()) > 2 and line.split()[1] != "RECOVERED" else ""
    return [int(x) for x in field.split(",") if x]


def _check_exact(study, n: int, *, distinct_params: bool = True) -> None:  # type: ignore[no-untyped-def]
    st = study_status(study)
    assert st.n_requested == n and st.n_finished == n and st.done
    assert st.counts.get("WAITING", 0) == 0 and st.counts.get("RUNNING", 0) == 0
    rows = trial_rows(study)
    assert len(rows) == n and all(r["state"] == "COMPLETE" for r in rows)
    assert len({r["number"] for r in rows}) == n
    if distinct_params:  # (NSGA-II's crossover may legitimately repeat a value)
        assert len({r["params"]["x"] for r in rows}) == n
    for r in rows:
        assert r["user_attrs"]["compute"]["records"][0]["train_images"] == 10


@pytest.mark.parametrize("url, kind", [
    (None, "sqlite"), ("sqlite:///a/b.db", "sqlite"), ("runs.db", "sqlite"), ("journal:x/y.journal", "journal"),
    ("journal:///tmp/y.log", "journal"), ("s.journal", "journal"), ("postgresql://u@h:5/d", "postgresql"),
    ("postgres://u:pw@h/d", "postgresql"), ("postgresql+psycopg://u@h/d", "postgresql")])
def test_parse_storage_url(url: str | None, kind: str) -> None:
    k, target = parse_storage_url(url)
    assert k == kind
    if kind == "postgresql":
        assert target.startswith("postgresql+psycopg://")


@pytest.mark.parametrize("url", ["mysql://u@h/d", "redis://h", "sqlite:///", "journal:", "postgresql://u@h",
                                 "studies.txt", "http://example/x"])
def test_bad_storage_url_is_one_line_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_storage_url(url)
    msg = str(ei.value)
    assert "\n" not in msg and ("sqlite:///FILE" in msg or "names no file" in msg or "needs a host" in msg)


def test_unreachable_postgres_is_store_error_without_password() -> None:
    with pytest.raises(StoreError) as ei:
        open_storage("postgresql://bob:hunter2@127.0.0.1:1/nodb")
    assert "hunter2" not in str(ei.value) and "\n" not in str(ei.value)
    assert mask_url("postgresql://bob:hunter2@h/d") == "postgresql://bob:***@h/d"


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="sampler 'cmaes' is unknown; allowed: tpe, nsga2, random"):
        _settings("cmaes")
    with pytest.raises(ConfigError, match="multi-objective"):
        StudySettings("tpe", 3, ("maximize", "minimize"), {"name": "x"}, pruner="median")
    with pytest.raises(ConfigError, match="nsga2"):
        StudySettings("nsga2", 3, ("maximize",), {"name": "x"})
    with pytest.raises(ConfigError, match="n_trials"):
        StudySettings("tpe", 0, ("maximize",), {"name": "x"})
    s = _settings()
    assert StudySettings.from_dict(s.to_dict()) == s


def test_study_create_resume_extend_and_conflicts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = create_study("ext", url, _settings(n=3))
    assert study_status(study).counts == {"WAITING": 3}
    again = create_study("ext", url, _settings(n=5))  # resume with a larger count: 2 more slots
    assert study_status(again).counts == {"WAITING": 5}
    with pytest.raises(SearchError, match="cannot shrink"):
        create_study("ext", url, _settings(n=2))
    with pytest.raises(SearchError, match="other settings"):
        create_study("ext", url, _settings("random", n=5))
    with pytest.raises(SearchError, match="does not exist"):
        load_study("nope", url)
    with pytest.raises(ConfigError, match="study name"):
        create_study("bad name!", url, _settings())


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_in_process_worker_runs_exact_count_and_records_constraints(tmp_path: Path, sampler: str) -> None:
    url = f"journal:{tmp_path}/s.journal"
    study = create_study("inproc", url, _settings(sampler, n=5))

    def obj(trial, ledger):  # type: ignore[no-untyped-def]
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_int("y", 1, 8)
        with ledger.phase("train", trial=trial.number) as p:
            p.train_images += 10
        trial.set_constraint("y", y - 6)
        if trial.number == 4:
            raise RuntimeError("diverged\nsecond line")
        return [x, y * (1.0 - x)]

    rep = run_worker("inproc", url, objective=obj, progress=False, max_trials=None)
    assert rep.trials == (0, 1, 2, 3, 4)
    assert rep.states == ("COMPLETE",) * 4 + ("FAIL",)
    failed = study.trials[4]
    assert failed.user_attrs["error"] == "RuntimeError: diverged"
    for t in study.trials[:4]:
        assert set(t.constraints) == {"y"} and t.constraints["y"] == t.params["y"] - 6
    st = study_status(study)
    assert st.n_finished == 5 and st.done


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_worker_processes_share_exact_count(tmp_path: Path, storage: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else f"journal:{tmp_path}/s.journal"
    n = 8
    create_study("pair", url, _settings("tpe", n=n))
    procs = [_spawn("pair", url, 0.05, f"w{i}", tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    per_worker = [_trials_of(out) for out, _ in outs]
    assert not set(per_worker[0]) & set(per_worker[1])
    assert sorted(per_worker[0] + per_worker[1]) == list(range(n))
    study, _ = load_study("pair", url)
    _check_exact(study, n)
    workers = {t.system_attrs["hwloop_worker"]["worker"] for t in study.trials}
    assert workers <= {"w0", "w1"}


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_killed_worker_mid_trial_is_recovered_and_study_completes(tmp_path: Path, storage: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else f"journal:{tmp_path}/s.journal"
    n = 4
    create_study("crash", url, _settings("random", n=n))
    victim = _spawn("crash", url, 30.0, "victim", tmp_path)  # each trial would take 30 s
    study, _ = load_study("crash", url)
    deadline = time.monotonic() + 60
    running: list = []
    while time.monotonic() < deadline and not running:  # wait until a trial's objective is running
        running = [t for t in study.get_trials(deepcopy=True) if t.state.name == "RUNNING"
                   and "hwloop_worker" in t.system_attrs and "x" in t.params]
        time.sleep(0.1)
    assert len(running) == 1, study_status(study)
    lost = running[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    # restart: the new worker must detect the dead trial, re-run it with the same parameters, and finish
    rescuer = _spawn("crash", url, 0.01, "rescuer", tmp_path)
    try:
        out, err = rescuer.communicate(timeout=120)  # start-up + the 20 s grace period, on a busy CI machine
    except subprocess.TimeoutExpired:
        rescuer.kill()
        out, err = rescuer.communicate()
        raise AssertionError(f"rescuer hung: {study_status(study)} {out} {err[-3000:]}")
    assert rescuer.returncode == 0, err[-2000:]
    study, _ = load_study("crash", url)
    st = study_status(study)
    assert st.retried == (lost.number,)
    assert st.counts == {"COMPLETE": n, "FAIL": 1}
    assert st.n_finished == n and st.done
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.state.name == "COMPLETE" and retry.params == lost.params
    assert "RECOVERED " + str(lost.number) in out


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_postgresql_two_workers_no_trial_lost_or_duplicated(postgres_url: str, tmp_path: Path) -> None:
    url = sys.modules["pg"].create_database(postgres_url, "optuna")  # tests/pg.py, loaded by the fixture
    n = 10
    create_study("pg-pair", url, _settings("nsga2", n=n))
    procs = [_spawn("pg-pair", url, 0.05, f"pg{i}", tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    per_worker = [_trials_of(out) for out, _ in outs]
    assert sorted(per_worker[0] + per_worker[1]) == list(range(n))
    assert per_worker[0] and per_worker[1], "both workers should have taken trials"
    study, _ = load_study("pg-pair", url)
    _check_exact(study, n, distinct_params=False)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_optuna_dashboard_opens_the_study(tmp_path: Path, storage: str) -> None:
    """optuna-dashboard (optional package) serves hwloop's studies straight from the storage."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard")
    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else f"journal:{tmp_path}/s.journal"
    create_study("dash", url, _settings("random", n=3))
    run_worker("dash", url, objective=lambda trial, ledger: [trial.suggest_float("x", 0, 1), 1.0], progress=False)
    app = dashboard.wsgi(open_storage(url))

    def get(path: str) -> dict:  # type: ignore[type-arg]
        env: dict = {}
        setup_testing_defaults(env)
        env.update({"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()})
        status: list[str] = []
        body = b"".join(app(env, lambda s, h, *a: status.append(s)))
        assert status and status[0].startswith("200"), (path, status)
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 3 and {t["state"] for t in detail["trials"]} == {"Complete"}
