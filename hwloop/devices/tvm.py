"""``tvm`` backend: TVM-compiled code, timed by TVM's own ``time_evaluator`` and optionally tuned.

A layer or a model goes ``torch.export`` → ``tvm.relax.frontend.torch.from_exported_program`` →
build for a TVM target (``llvm`` for this CPU, ``cuda`` where a GPU exists) → ``relax.VirtualMachine``,
and is timed with ``vm.time_evaluator`` under the :class:`TimingConfig` semantics the torch
backends use: ``warmup`` untimed runs, ``repeats`` samples of ``number`` runs each (``number = 0``
picks it so a sample lasts ``min_repeat_ms``), retried while the CV exceeds ``max_cv``.

Untuned TVM on a CPU runs unscheduled loops and is far slower than PyTorch, so the device can tune:
with ``tune_trials > 0`` every fused TIR function of the workload is tuned by MetaSchedule
(``tvm.s_tir.meta_schedule``, evolutionary search, XGBoost cost model, builds and runs in killable
worker processes) for that many trials, and the records go to a ``JSONDatabase`` in ``work_dir``
(default ``$HWLOOP_HOME/tvm/<target hash>``). A function whose records are already there is not
tuned again, in this process or any later one. The trial budget, the target string and the TVM
version are part of the fingerprint identity, so tuned and untuned timings never share a store key;
each result's ``extra`` says whether it was tuned, with which budget, and what tuning cost.

``model_layers`` requests are timed end to end like ``model``: the fused TVM executable has no
per-module boundaries, so ``per_layer_ms`` stays empty and ``extra["per_layer"]`` says so
(measure the layers as ``layer`` requests instead).

Example:
    >>> from hwloop.devices.tvm import TvmDevice  # doctest: +SKIP
    >>> from hwloop.devices.base import MeasureRequest, TimingConfig
    >>> from hwloop.workload import LayerSpec
    >>> dev = TvmDevice(target="llvm", tune_trials=0)  # doctest: +SKIP
    >>> spec = LayerSpec("conv2d", (1, 8, 16, 16), out_channels=8, kernel=3, padding=1)
    >>> r, = dev.measure([MeasureRequest.for_layer(spec)], TimingConfig(repeats=3))  # doctest: +SKIP
    >>> (r.ok, r.timing.mode, r.extra["tuned"])  # doctest: +SKIP
    (True, 'tvm', False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwloop.devices._timing import retry_until_stable
from hwloop.devices._tvm_import import (
    build_without_intrinsics,
    fuse_for_tuning,
    hwloop_home,
    import_tensor_intrin,
    make_target,
    require_tvm,
    target_string,
    torch_to_relax,
)
from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import ConfigError, DeviceUnavailableError, HwloopError

__all__ = ["TuneStats", "TvmDevice"]

_ACCEPTED_MODES = ("eager", "tvm")


@dataclasses.dataclass(frozen=True)
class TuneStats:
    """What tuning one workload did.

    Attributes:
        tasks: fused TIR functions in the workload.
        tuned_tasks: functions tuned now (the others were found in the database).
        new_trials: MetaSchedule trials run now (0 when everything was reused).
        db_records: tuning records in the database afterwards.
        tune_s: wall-clock seconds spent tuning now.
    """

    tasks: int
    tuned_tasks: int
    new_trials: int
    db_records: int
    tune_s: float

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"TuneStats.{f.name}={getattr(self, f.name)!r} must be >= 0")

    @property
    def reused(self) -> bool:
        """True when no new trial was needed: every function was already tuned."""
        return self.new_trials == 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reused": self.reused}


@dataclasses.dataclass
class _Compiled:
    """A built request: the VM and its input tensors, plus the torch module/inputs it was built from."""

    vm: Any
    args: list[Any]
    module: Any
    inputs: tuple[Any, ...]
    tuned: bool
    build_s: float
    tune: TuneStats | None


class TvmDevice:
    """TVM-compiled layers and models on a TVM target, timed with ``time_evaluator``.

    Args:
        name: the device's name (its profile's name).
        timing: default :class:`TimingConfig` (its ``mode`` may be ``eager`` or ``tvm``; results record ``tvm``).
        target: ``"llvm"``, ``"cuda"``, a JSON object string or a table such as
            ``{kind = "llvm", mcpu = "native"}`` (``native`` is resolved to the host CPU's name).
        tune_trials: MetaSchedule trials per fused function; 0 builds untuned.
        work_dir: folder of the tuning database (JSON); default ``$HWLOOP_HOME/tvm/<target hash>``.
        opt_level: Relax/TIR ``PassContext`` optimisation level (0-3).
        threads: TVM runtime threads (llvm; also the target's ``num-cores`` for tuning).
        tune_population: evolutionary-search population per tuning round (TVM's default is 512; smaller
            is faster on small machines).
        build_timeout_s: MetaSchedule's per-candidate build time limit (a killed build is a failed trial).
    """

    backend = "tvm"

    def __init__(self, name: str = "tvm-llvm", timing: TimingConfig | None = None, target: Any = "llvm",
                 tune_trials: int = 0, work_dir: str | os.PathLike[str] | None = None, opt_level: int = 3,
                 threads: int = 1, tune_population: int = 128, build_timeout_s: float = 300.0,
                 **_ignored: Any) -> None:
        for n, v, lo in (("tune_trials", tune_trials, 0), ("threads", threads, 1), ("tune_population", tune_population, 2)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"tvm device {name!r}: {n}={v!r} must be an integer >= {lo}")
        if not isinstance(opt_level, int) or isinstance(opt_level, bool) or not 0 <= opt_level <= 3:
            raise ConfigError(f"tvm device {name!r}: opt_level={opt_level!r} must be an integer in 0..3")
        if not isinstance(build_timeout_s, (int, float)) or build_timeout_s <= 0:
            raise ConfigError(f"tvm device {name!r}: build_timeout_s={build_timeout_s!r} must be a number > 0")
        if not isinstance(target, (str, dict)) and not hasattr(target, "items"):
            raise ConfigError(f"tvm device {name!r}: target {target!r} must be a string or a table")
        self.name = name
        self.timing = timing or TimingConfig(mode="tvm")
        self._check_mode(self.timing)
        self.tune_trials = tune_trials
        self.opt_level = opt_level
        self.threads = threads
        self.tune_population = tune_population
        self.build_timeout_s = float(build_timeout_s)
        self._target_spec = target if isinstance(target, str) else dict(target)
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self._target: Any = None
        self._compiled: dict[str, _Compiled] = {}
        self._builder: Any = None
        self._runner: Any = None
        require_tvm()

    # ------------------------------------------------------------------ identity
    @property
    def target(self) -> Any:
        """The resolved ``tvm.target.Target``."""
        if self._target is None:
            self._target = make_target(self._target_spec, threads=self.threads)
        return self._target

    @property
    def target_str(self) -> str:
        return target_string(self.target)

    @property
    def work_dir(self) -> Path:
        """Folder of the MetaSchedule JSON database (``database_workload.json``, ``database_tuning_record.json``)."""
        if self._work_dir is not None:
            return self._work_dir
        h = hashlib.sha256(self.target_str.encode()).hexdigest()[:12]
        return hwloop_home() / "tvm" / h

    def _is_cuda(self) -> bool:
        return str(self.target.kind.name) == "cuda"

    def _dev(self) -> Any:
        tvm = require_tvm()
        if self._is_cuda():
            dev = tvm.cuda(0)
            if not dev.exist:
                raise DeviceUnavailableError(f"tvm device {self.name!r}: target cuda needs an NVIDIA GPU; none found")
            return dev
        if str(self.target.kind.name) != "llvm":
            raise ConfigError(f"tvm device {self.name!r}: target kind {self.target.kind.name!r} is not supported; "
                              "allowed: llvm, cuda")
        return tvm.cpu(0)

    def fingerprint(self) -> DeviceFingerprint:
        """Identity: target string, TVM version, tuning budget (+ population), opt level, threads, hardware."""
        tvm = require_tvm()
        from hwloop.devices.cpu import cpu_model_name

        ident: dict[str, Any] = {"target": self.target_str, "tvm": str(tvm.__version__),
                                 "tune_trials": self.tune_trials, "opt_level": self.opt_level}
        if self.tune_trials:
            ident["tune_population"] = self.tune_population
        if self._is_cuda():
            dev = self._dev()
            ident["gpu"] = str(dev.device_name)
        else:
            ident.update({"cpu": cpu_model_name(), "machine": platform.machine(), "threads": self.threads,
                          "cores": os.cpu_count()})
        info = {"hostname": platform.node(), "python": platform.python_version(), "os": platform.platform(),
                "work_dir": str(self.work_dir)}
        return DeviceFingerprint(name=self.name, backend=self.backend, identity=ident, info=info)

    # ------------------------------------------------------------------ build / tune
    def _threadpool(self) -> None:
        if self._is_cuda():
            return
        tvm = require_tvm()
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        # mode -3: ``threads`` workers sharing the allowed cores (works above TVM's default count, too)
        tvm.get_global_func("runtime.config_threadpool")(-3, self.threads, [str(c) for c in cpus])

    def _tuning_tools(self) -> tuple[Any, Any]:
        import tvm.s_tir.meta_schedule as ms

        if self._builder is None:
            self._builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=self.build_timeout_s,
                                                    f_build=build_without_intrinsics)
        if self._runner is None:
            cfg = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=10, enable_cpu_cache_flush=False)
            self._runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=cfg)
        return self._builder, self._runner

    def tune(self, mod: Any) -> TuneStats:
        """Tune every fused function of a Relax module not yet in the database; reuse the rest.

        A function counts as tuned once the database holds ``tune_trials`` records for it, failed
        trials included (they spent budget); fewer records, e.g. from a smaller budget, are topped up.
        """
        require_tvm()
        import tvm.s_tir.meta_schedule as ms
        from tvm.s_tir.meta_schedule import relax_integration as ri

        import_tensor_intrin()   # before TuneContext imports it the slow way
        t0 = time.perf_counter()
        wd = self.work_dir
        wd.mkdir(parents=True, exist_ok=True)
        db = ms.database.JSONDatabase(work_dir=str(wd))
        tasks = ri.extract_tasks(fuse_for_tuning(mod, self.target), self.target)
        todo: list[tuple[Any, int]] = []
        for task in tasks:
            if _trivial(task):
                continue
            have = _n_records(db, task.dispatched[0]) if db.has_workload(task.dispatched[0]) else 0
            if have < self.tune_trials:
                todo.append((task, self.tune_trials - have))
        new_trials = 0
        if todo:
            lg = logging.getLogger("tvm.s_tir.meta_schedule")
            builder, runner = self._tuning_tools()
            old_env = os.environ.get("TVM_NUM_THREADS")
            os.environ["TVM_NUM_THREADS"] = str(self.threads)  # read by the runner's worker processes
            try:
                from tqdm.auto import tqdm

                for task, budget in tqdm(todo, desc=f"tvm tune ({self.tune_trials} trials/fn)", unit="fn",
                                         leave=False, disable=len(todo) < 2):
                    strategy = ms.search_strategy.EvolutionarySearch(
                        population_size=self.tune_population, init_min_unmeasured=min(50, self.tune_population // 2),
                        genetic_num_iters=2)
                    # MetaSchedule sizes its console handler from this level (and resets it to DEBUG when it
                    # configures logging), so quiet it before every call; work_dir/logs keeps the full log
                    lg.setLevel(logging.WARNING)
                    ctxs, weights = ri.extracted_tasks_to_tune_contexts([task], str(wd), strategy=strategy)
                    before = _n_records(db, task.dispatched[0])
                    ms.tune_tasks(tasks=ctxs, task_weights=weights, work_dir=str(wd), max_trials_global=budget,
                                  max_trials_per_task=budget, num_trials_per_iter=min(budget, 64), builder=builder,
                                  runner=runner, database=db, cost_model="xgb")
                    new_trials += _n_records(db, task.dispatched[0]) - before
            finally:
                if old_env is None:
                    os.environ.pop("TVM_NUM_THREADS", None)
                else:
                    os.environ["TVM_NUM_THREADS"] = old_env
        return TuneStats(tasks=len(tasks), tuned_tasks=len(todo), new_trials=max(0, new_trials),
                         db_records=len(db.get_all_tuning_records()), tune_s=time.perf_counter() - t0)

    def _build(self, req: MeasureRequest) -> _Compiled:
        tvm = require_tvm()
        from tvm import relax

        from hwloop.devices.cpu import prepare_request

        module, inputs = prepare_request(req)
        mod = torch_to_relax(module, inputs)
        dev = self._dev()
        t0 = time.perf_counter()
        stats: TuneStats | None = None
        if self.tune_trials > 0:
            import tvm.s_tir.meta_schedule as ms
            from tvm.s_tir.meta_schedule import relax_integration as ri

            stats = self.tune(mod)
            db = ms.database.JSONDatabase(work_dir=str(self.work_dir))
            ex = ri.compile_relax(db, mod, self.target, None)
        else:
            with tvm.transform.PassContext(opt_level=self.opt_level):
                ex = tvm.compile(mod, target=self.target)
        build_s = time.perf_counter() - t0 - (stats.tune_s if stats else 0.0)
        vm = relax.VirtualMachine(ex, dev)
        args = [tvm.runtime.tensor(x.detach().numpy(), dev) for x in inputs]
        return _Compiled(vm=vm, args=args, module=module, inputs=tuple(inputs), tuned=self.tune_trials > 0, build_s=build_s, tune=stats)

    def compiled(self, req: MeasureRequest) -> _Compiled:
        """The compiled executable of a request (built, and tuned if asked, once per process)."""
        c = self._compiled.get(req.key)
        if c is None:
            c = self._compiled[req.key] = self._build(req)
        return c

    # ------------------------------------------------------------------ timing
    def _time(self, c: _Compiled, timing: TimingConfig, request_key: str, extra: dict[str, Any]) -> MeasureResult:
        dev = self._dev()
        start = time.monotonic()
        f = c.vm["main"]
        for _ in range(timing.warmup):
            f(*c.args)
        one = c.vm.time_evaluator("main", dev, number=1, repeat=1)(*c.args).mean * 1e3
        number = timing.number or max(1, min(100_000, int(timing.min_repeat_ms / max(one, 1e-4)) + 1))
        def take() -> list[float]:
            if timing.timeout_s:
                left = timing.timeout_s - (time.monotonic() - start)
                if one * number * timing.repeats / 1e3 > left:
                    raise _Timeout(f"timed out: {timing.repeats} samples of {number} runs × {one:.3g} ms "
                                   f"exceed the {timing.timeout_s:g} s limit")
            ev = c.vm.time_evaluator("main", dev, number=number, repeat=timing.repeats, min_repeat_ms=0)
            return [float(s) * 1e3 for s in ev(*c.args).results]

        return retry_until_stable(take, timing, request_key=request_key, extra={"number": number, **extra})

    @staticmethod
    def _check_mode(timing: TimingConfig) -> None:
        if timing.mode not in _ACCEPTED_MODES:
            raise ConfigError(f"the tvm backend accepts timing mode 'eager' or 'tvm' (results record 'tvm'), "
                              f"not {timing.mode!r}")

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        """Build (tune) and time each request; one result per request, failures as ``MeasureResult.error``.

        Raises:
            ConfigError: ``timing.mode`` is not ``eager``/``tvm``.
            DeviceUnavailableError: TVM is missing or the target's hardware is absent.
        """
        t = timing or self.timing
        self._check_mode(t)
        t = dataclasses.replace(t, mode="tvm")
        self._dev()  # a missing GPU is the device's problem, not one request's
        self._threadpool()
        base = {"tuned": self.tune_trials > 0, "tune_trials": self.tune_trials, "target": self.target_str,
                "tvm": str(require_tvm().__version__), "clock": "tvm.time_evaluator"}
        out: list[MeasureResult] = []
        for req in requests:
            try:
                c = self.compiled(req)
            except DeviceUnavailableError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed import/build/tune is data (TVM raises many types)
                out.append(MeasureResult.failure(req.key, t, f"build failed: {_first_line(e)}", **base))
                continue
            extra: dict[str, Any] = {**base, "build_s": round(c.build_s, 3)}
            if c.tune is not None:
                extra["tune"] = c.tune.to_dict()
            if req.kind == "model_layers":
                extra["per_layer"] = "not available: the TVM executable is fused end to end; time layers separately"
            try:
                out.append(self._time(c, t, req.key, extra))
            except _Timeout as e:
                out.append(MeasureResult.failure(req.key, t, str(e), **base))
            except (HwloopError, RuntimeError, ValueError, TypeError, MemoryError) as e:
                out.append(MeasureResult.failure(req.key, t, f"run failed: {_first_line(e)}", **base))
        return out

    def close(self) -> None:
        """Drop compiled executables and stop MetaSchedule's runner workers."""
        self._compiled.clear()
        pool = getattr(self._runner, "pool", None)
        if pool is not None:
            pool.shutdown()
        self._runner = None
        self._builder = None


class _Timeout(Exception):
    pass


def _n_records(db: Any, mod: Any) -> int:
    """Tuning records (successful or failed) of one function; ``get_top_k`` would skip the failed ones."""
    w = db.commit_workload(mod)
    return sum(1 for r in db.get_all_tuning_records() if r.workload.same_as(w))


def _trivial(task: Any) -> bool:
    """Tasks with no arithmetic worth tuning (pure data movement) are left to the default schedule."""
    return bool(task.task_name.startswith(("reshape", "transpose", "squeeze", "expand_dims")))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if not ln.startswith(("File ", "Traceback", "^"))), "")
    if len(lines) > 1 and any("Error" in ln for ln in lines):
        msg = next((ln for ln in reversed(lines) if "Error" in ln), msg)
    return f"{type(e).__name__}: {msg[:300]}" if msg else type(e).__name__

