"""Optuna studies on Optuna's own storage: samplers, pruners, exact trial counts, workers, crash recovery.

A study is created once (``hwloop search optuna``) with its :class:`StudySettings` stored in the
study's user attributes, so any worker that can reach the storage rebuilds the same objective
(``hwloop search worker --study NAME --storage URL``). Storage URLs:

* ``sqlite:///FILE`` (the default, ``sqlite:///hwloop-optuna.db``) — Optuna's ``RDBStorage``;
* ``journal:FILE`` (or a path ending in ``.journal``/``.log``) — ``JournalStorage`` over a
  ``JournalFileBackend``, for several processes on one machine;
* ``postgresql://USER[:PASS]@HOST[:PORT]/DB`` — ``RDBStorage`` through psycopg 3, for workers on
  many machines.

Exact trial counts: creating a study enqueues ``n_trials`` *slots* (``WAITING`` trials with no
fixed parameters; the sampler still chooses every value). Workers only ever claim waiting slots,
with the storage's atomic ``WAITING → RUNNING`` transition, so N requested trials give exactly N
finished trials however many workers race. Crash recovery: on RDB storages each running trial
sends Optuna heartbeats; a trial whose heartbeat went stale is failed and re-enqueued with the same
parameters (``RetryHeartbeatStaleTrialCallback``). Journal files have no heartbeats, so a running
trial whose worker process (same host, recorded pid) is gone is failed and re-enqueued the same way.
The files can be opened by ``optuna-dashboard sqlite:///hwloop-optuna.db``.

Example:
    >>> from hwloop.search.optuna_search import StudySettings, create_study, run_worker
    >>> settings = StudySettings(sampler="random", n_trials=3, directions=("minimize",), seed=0,
    ...                          objective={"name": "python", "params": {}})
    >>> study = create_study("doc", "sqlite:///:memory:", settings)
    >>> study.study_name, [d.name for d in study.directions], study.user_attrs["hwloop_settings"]["n_trials"]
    ('doc', ['MINIMIZE'], 3)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwloop.errors import ConfigError, SearchError
from hwloop.search.accounting import ComputeLedger
from hwloop.search.optuna_storage import (
    DEFAULT_STORAGE,
    claim_lock_path,
    file_lock,
    mask_url,
    open_storage,
    parse_storage_url,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = [
    "DEFAULT_STORAGE",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "ObjectiveFn",
    "StudySettings",
    "StudyStatus",
    "WorkerReport",
    "create_study",
    "load_study",
    "make_pruner",
    "make_sampler",
    "mask_url",
    "open_storage",
    "parse_storage_url",
    "recover_stale_trials",
    "run_worker",
    "study_status",
    "trial_rows",
]

SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("none", "median", "halving", "hyperband")
#: objective name -> "module:factory"; a factory takes the objective params and returns an ObjectiveFn.
OBJECTIVES: Mapping[str, str] = {"compression": "hwloop.search.baselines:compression_objective"}
SETTINGS_KEY = "hwloop_settings"
WORKER_KEY = "hwloop_worker"
SETTINGS_VERSION = 1

#: ``objective(trial, ledger) -> objective values``; raise ``optuna.TrialPruned`` to prune.
ObjectiveFn = Callable[["optuna.Trial", ComputeLedger], Sequence[float]]


# ---------------------------------------------------------------------------------------- samplers/pruners
def make_sampler(name: str, *, seed: int | None = None, n_startup_trials: int = 10, population_size: int = 20
                 ) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by name: ``tpe`` (MOTPE when multi-objective), ``nsga2`` or ``random``.

    Constraints use Optuna's constraints API: the objective calls ``trial.set_constraint(name, value)``
    (``value <= 0`` is feasible) and TPE / NSGA-II take them into account; the random sampler
    ignores them by construction (its infeasible trials are still marked so in the study).

    Example:
        >>> type(make_sampler("nsga2", seed=0)).__name__
        'NSGAIISampler'
    """
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")


def make_pruner(name: str, *, n_startup_trials: int = 3, n_warmup_steps: int = 1) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name (``none``, ``median``, ``halving``, ``hyperband``).

    Optuna's pruners act on a single objective's intermediate values, so they apply to studies with
    one direction (accuracy under a latency constraint); multi-objective studies are not pruned.

    Example:
        >>> type(make_pruner("median")).__name__
        'MedianPruner'
    """
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise ConfigError(f"pruner {name!r} is unknown; allowed: {', '.join(PRUNERS)}")


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class StudySettings:
    """Everything a worker needs to join a study; stored (JSON) in the study's user attributes.

    Attributes:
        sampler: one of :data:`SAMPLERS`.
        n_trials: trials the study must finish (exactly; crashed attempts are re-run).
        directions: per objective value, ``maximize`` or ``minimize``.
        objective: ``{"name": NAME, "params": {...}}``; NAME is a key of :data:`OBJECTIVES` (or
            ``module:factory`` when the worker allows imports).
        seed: base seed; each worker derives its own from it and its worker id.
        pruner: one of :data:`PRUNERS` (single-objective studies only).
        n_startup_trials: random trials before TPE models the space.
        population_size: NSGA-II population.
    """

    sampler: str
    n_trials: int
    directions: tuple[str, ...]
    objective: Mapping[str, Any]
    seed: int = 0
    pruner: str = "none"
    n_startup_trials: int = 10
    population_size: int = 20

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler {self.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner {self.pruner!r} is unknown; allowed: {', '.join(PRUNERS)}")
        object.__setattr__(self, "directions", tuple(self.directions))
        if not self.directions or any(d not in ("maximize", "minimize") for d in self.directions):
            raise ConfigError(f"directions {list(self.directions)} must be a non-empty list of maximize/minimize")
        if self.pruner != "none" and len(self.directions) > 1:
            raise ConfigError(f"pruner {self.pruner!r} needs a single-objective study; Optuna's pruners do not "
                              "support multi-objective studies (use pruner 'none')")
        if self.sampler == "nsga2" and len(self.directions) < 2:
            raise ConfigError("sampler 'nsga2' is multi-objective; give two directions (accuracy, latency)")
        for n in ("n_trials", "n_startup_trials", "population_size"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < (2 if n == "population_size" else 1):
                raise ConfigError(f"{n}={v!r} must be a positive integer")
        obj = self.objective
        if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or set(obj) - {"name", "params"}:
            raise ConfigError(f"objective {obj!r} must be a table with 'name' and optional 'params'")
        object.__setattr__(self, "objective", {"name": obj["name"], "params": dict(obj.get("params", {}))})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["directions"] = list(self.directions)
        d["version"] = SETTINGS_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudySettings:
        d = dict(d)
        if d.pop("version", None) != SETTINGS_VERSION:
            raise SearchError(f"study settings version is not {SETTINGS_VERSION}; this hwloop cannot join it")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise SearchError(f"study settings have unknown field(s) {sorted(set(d) - known)}")
        return cls(**d)

    def sampler_for(self, worker_id: str) -> optuna.samplers.BaseSampler:
        """This worker's sampler (seeded from the base seed and the worker id)."""
        digest = hashlib.sha256(f"{self.seed}:{worker_id}".encode()).digest()
        return make_sampler(self.sampler, seed=int.from_bytes(digest[:4], "little"),
                            n_startup_trials=self.n_startup_trials, population_size=self.population_size)


# ----------------------------------------------------------------------------------------------- studies
def create_study(name: str, storage_url: str | None, settings: StudySettings, *, heartbeat_interval_s: int = 10
                 ) -> optuna.Study:
    """Create a study (or extend one made with the same settings) and enqueue its trial slots.

    Re-running with the same name resumes: only the missing slots are enqueued, so a larger
    ``n_trials`` extends the study. Different sampler/objective/directions for an existing name
    raise :class:`SearchError`.
    """
    import optuna

    _check_name(name)
    storage = open_storage(storage_url, heartbeat_interval_s=heartbeat_interval_s)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        old = _settings_of(study, storage_url)
        same = {k: v for k, v in old.to_dict().items() if k != "n_trials"} == \
            {k: v for k, v in settings.to_dict().items() if k != "n_trials"}
        if not same:
            raise SearchError(f"study {name!r} already exists with other settings (sampler {old.sampler!r}, "
                              f"objective {old.objective['name']!r}); pick a new --study name")
        if settings.n_trials < old.n_trials:
            raise SearchError(f"study {name!r} already asks for {old.n_trials} trials; n_trials="
                              f"{settings.n_trials} cannot shrink it")
    else:
        study = optuna.create_study(study_name=name, storage=storage, directions=[optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                                                else optuna.study.StudyDirection.MINIMIZE
                                                for d in settings.directions],
                                    load_if_exists=False)
    study.set_user_attr(SETTINGS_KEY, settings.to_dict())
    status = study_status(study)
    for _ in range(settings.n_trials - status.n_live):
        study.enqueue_trial({}, skip_if_exists=False)
    return study


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", name):
        raise ConfigError(f"study name {name!r} must be 1-128 characters of letters, digits, '_', '.', ':', '-'")


def _settings_of(study: optuna.Study, storage_url: str | None) -> StudySettings:
    raw = study.user_attrs.get(SETTINGS_KEY)
    if raw is None:
        raise SearchError(f"study {study.study_name!r} in {mask_url(storage_url or DEFAULT_STORAGE)!r} was not "
                          "created by hwloop (no settings); create it with 'hwloop search optuna'")
    return StudySettings.from_dict(raw)


def load_study(name: str, storage_url: str | None, *, worker_id: str | None = None, heartbeat_interval_s: int = 10
               ) -> tuple[optuna.Study, StudySettings]:
    """Open an existing hwloop study with this worker's sampler and the study's pruner."""
    import optuna

    _check_name(name)
    storage = open_storage(storage_url, heartbeat_interval_s=heartbeat_interval_s)
    try:
        plain = optuna.load_study(study_name=name, storage=storage)
    except KeyError as e:
        raise SearchError(f"study {name!r} does not exist in {mask_url(storage_url or DEFAULT_STORAGE)!r}; "
                          "create it with 'hwloop search optuna'") from e
    settings = _settings_of(plain, storage_url)
    wid = worker_id or _default_worker_id()
    study = optuna.load_study(study_name=name, storage=storage, sampler=settings.sampler_for(wid),
                              pruner=make_pruner(settings.pruner))
    return study, settings


@dataclass(frozen=True)
class StudyStatus:
    """Trial bookkeeping of a study.

    Attributes:
        n_requested: the study's ``n_trials``.
        counts: number of trials per state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``).
        retried: numbers of attempts lost to a crash and re-enqueued (not counted as live).
        n_live: trials that count towards ``n_requested`` (everything but retried attempts).
        n_finished: live trials in a final state (``COMPLETE``/``PRUNED``/``FAIL``).
    """

    n_requested: int
    counts: Mapping[str, int] = field(default_factory=dict)
    retried: tuple[int, ...] = ()
    n_live: int = 0
    n_finished: int = 0

    @property
    def done(self) -> bool:
        return self.n_finished >= self.n_requested


def study_status(study: optuna.Study) -> StudyStatus:
    """Count a study's trials, telling crashed-and-retried attempts apart from live trials."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = sorted({int(n) for t in trials for n in t.system_attrs.get("retry_history", [])})
    rset = set(retried)
    live = [t for t in trials if t.number not in rset]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in live)
    raw = study.user_attrs.get(SETTINGS_KEY, {})
    return StudyStatus(n_requested=int(raw.get("n_trials", len(live))), counts=counts, retried=tuple(retried),
                       n_live=len(live), n_finished=finished)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study, *, orphan_grace_s: float = 60.0) -> list[int]:
    """Fail and re-enqueue running trials whose worker is gone; returns the failed trial numbers.

    Three rules, each re-enqueueing the trial with its parameters (``RetryHeartbeatStaleTrialCallback``):

    * RDB storages: Optuna's heartbeats (``fail_stale_trials``) catch workers on any machine;
    * any storage: a trial whose recorded worker process on this host no longer exists (journal
      files have no heartbeats; on RDB this is just faster than waiting for the grace period);
    * a running trial that never recorded its worker for ``orphan_grace_s`` seconds (the worker died
      between claiming it and starting it).
    """
    import optuna
    from optuna.trial import TrialState

    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    storage = study._storage  # the study's own (cached) storage object
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval() is not None:
            optuna.storages.fail_stale_trials(study)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    host = socket.gethostname()
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(WORKER_KEY)
        if isinstance(owner, Mapping):
            dead = owner.get("host") == host and not _pid_alive(int(owner.get("pid", 0)))
        else:
            dead = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > orphan_grace_s
        if not dead:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                retry(study, storage.get_trial(t._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(after - before)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_waiting(study: optuna.Study, lock_path: Path | None = None) -> int | None:
    """Move one WAITING trial to RUNNING, atomically across processes; its id, or None when none is left.

    On PostgreSQL Optuna's ``WAITING -> RUNNING`` update holds a row lock; SQLite ignores row locks
    (two processes could both claim a trial), so file storages claim under an exclusive file lock.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    with file_lock(lock_path):
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return int(t._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


class _Heartbeat:
    """Records Optuna heartbeats for one running trial from a daemon thread."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._interval = interval
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self._interval is not None:
            self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._storage.record_heartbeat(self._trial_id)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _resolve_objective(spec: Mapping[str, Any], allow_import: bool) -> ObjectiveFn:
    """The objective a study's settings name: a built-in, or a ``module:factory`` under :mod:`hwloop.trust`."""
    from hwloop.trust import resolve

    name = str(spec["name"])
    factory = resolve(name, what="objective", builtins=OBJECTIVES, allow_import=allow_import)
    fn: ObjectiveFn = factory(dict(spec.get("params", {})))
    return fn


@dataclass(frozen=True)
class WorkerReport:
    """What one worker did: the trial numbers it finished and their states."""

    worker_id: str
    trials: tuple[int, ...] = ()
    states: tuple[str, ...] = ()
    recovered: tuple[int, ...] = ()


def run_worker(study_name: str, storage_url: str | None, *, objective: ObjectiveFn | None = None,
               worker_id: str | None = None, max_trials: int | None = None, wait_for_running: bool = True,
               poll_s: float = 1.0, heartbeat_interval_s: int = 10, allow_import: bool = False,
               progress: bool = True) -> WorkerReport:
    """Join a study and run its waiting trial slots until none are left.

    Args:
        study_name / storage_url: the study to join (created by :func:`create_study`).
        objective: the objective to run; None rebuilds it from the study's settings.
        worker_id: name recorded on each trial (default ``host:pid``); also seeds the sampler.
        max_trials: stop after this many trials (None: until the study is done).
        wait_for_running: when no slot is waiting but trials are running elsewhere, wait for
            them (and re-run any that go stale) instead of returning.
        poll_s: sleep between checks while waiting.
        heartbeat_interval_s: RDB heartbeat period of this worker's trials.
        allow_import: allow ``module:factory`` objectives from the storage (code from the database!).
        progress: show a progress bar.

    Returns:
        A :class:`WorkerReport`.

    Example:
        >>> run_worker("s", "sqlite:///x.db", objective=lambda trial, ledger: [0.0])  # doctest: +SKIP
    """
    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    wid = worker_id or _default_worker_id()
    study, settings = load_study(study_name, storage_url, worker_id=wid, heartbeat_interval_s=heartbeat_interval_s)
    fn = objective if objective is not None else _resolve_objective(settings.objective, allow_import)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lock_path = claim_lock_path(storage_url)
    done: list[int] = []
    states: list[str] = []
    recovered = list(recover_stale_trials(study))
    status = study_status(study)
    bar = tqdm(total=max(0, status.n_requested - status.n_finished), desc=f"{study_name} [{wid}]",
               disable=not progress, unit="trial")
    try:
        while max_trials is None or len(done) < max_trials:
            tid = _claim_waiting(study, lock_path)
            if tid is None:
                recovered += recover_stale_trials(study)
                if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    continue
                if not wait_for_running or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    break
                time.sleep(poll_s)
                continue
            number, state = _run_one(study, tid, fn, wid)
            done.append(number)
            states.append(state)
            bar.update(1)
    finally:
        bar.close()
    return WorkerReport(worker_id=wid, trials=tuple(done), states=tuple(states), recovered=tuple(recovered))


def _run_one(study: optuna.Study, trial_id: int, fn: ObjectiveFn, worker_id: str) -> tuple[int, str]:
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    values: Sequence[float] | None = None
    state: TrialState | None = None
    error: str | None = None
    ledger = ComputeLedger()
    with _Heartbeat(storage, trial_id):  # first heartbeat right after the claim
        storage.set_trial_system_attr(trial_id, WORKER_KEY, {"host": socket.gethostname(), "pid": os.getpid(),
                                                             "worker": worker_id})
        trial = optuna.Trial(study, trial_id)
        t0 = time.perf_counter()
        try:
            values = [float(v) for v in fn(trial, ledger)]
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as e:  # noqa: BLE001 - a failed trial is data, not a crash of the worker
            state = TrialState.FAIL
            error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        wall = time.perf_counter() - t0
    accounted = ledger.total().wall_s
    if wall > accounted:
        ledger.add("other", trial=trial.number, wall_s=wall - accounted)
    trial.set_user_attr("compute", ledger.to_dict())
    if error is not None:
        trial.set_user_attr("error", error)
    if state is None:
        frozen = study.tell(trial, values)
    else:
        frozen = study.tell(trial, state=state)
    return trial.number, frozen.state.name


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain dict per finished live trial (number, state, values, params, user attrs, times).

    Ordered by completion time, the order in which a search obtained its candidates.
    """
    from optuna.trial import TrialState

    status = study_status(study)
    retried = set(status.retried)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.number in retried or t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        rows.append({"number": t.number, "state": t.state.name, "values": list(t.values or []),
                     "params": dict(t.params), "user_attrs": dict(t.user_attrs),
                     "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                     "duration_s": t.duration.total_seconds() if t.duration else None})
    rows.sort(key=lambda r: (r["datetime_complete"] or "", r["number"]))
    return rows
