"""Sweeps: a TOML spec describes what to measure; :func:`run_sweep` measures it, resumably.

A spec is either a **layer space** (lists or ranges per dimension, sampled by ``grid``,
``random`` or ``sobol``) or a **list of models** (explicit ones plus random-width variants
of a built-in family). See ``docs/store.md`` for the full schema. Example::

    name = "conv-space"
    kind = "layers"
    sampling = "sobol"
    n = 64
    seed = 0
    [space]
    op = ["conv2d"]
    in_channels = {min = 8, max = 256, log = true}
    out_channels = {min = 8, max = 256, log = true}
    kernel = [1, 3, 5]
    resolution = [8, 16, 32]

:func:`run_sweep` asks the store what is missing for the device's fingerprint and timing,
claims it in batches (a lease in the store, :mod:`hwloop.store._claims`, so several processes
or hosts running the same spec into one store measure each key once), measures each batch (or
streams with ``device.measure_iter`` when the device has it) and commits every result the
moment it arrives, so a killed sweep loses nothing it reported and a re-run measures only the
rest. :func:`run_farm` does the same on several devices at once, one thread per device;
devices with the same fingerprint share one claim queue.

Example:
    >>> from hwloop.sweep import SweepSpec
    >>> spec = SweepSpec.from_dict({"name": "tiny", "kind": "layers", "sampling": "grid",
    ...                             "space": {"op": ["linear"], "in_channels": [8, 16], "out_channels": [4]}})
    >>> [r.layer.in_channels for r in spec.requests()]
    [8, 16]
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwloop._sweep_worker import Worker
from hwloop._toml import read_toml
from hwloop.devices.base import Device, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import ConfigError, WorkloadError

if TYPE_CHECKING:
    from hwloop.models import ModelRef
    from hwloop.store import MeasurementStore
    from hwloop.workload import LayerSpec

__all__ = ["SweepSpec", "SweepSummary", "run_sweep", "run_farm", "SPACE_DEFAULTS", "LAYER_OPS", "ResultCallback"]

logger = logging.getLogger("hwloop.sweep")

#: the most requests one spec may ask for (``n`` and ``random_widths.n``): a day of layers at ~10 per second
MAX_SWEEP_N = 1_000_000

#: ``on_result(request, result, stored)`` is called after each result is committed (``stored`` is
#: False when the key already held an ok row written meanwhile by someone else).
ResultCallback = Callable[[MeasureRequest, MeasureResult, bool], None]

LAYER_OPS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add")
#: Every layer-space dimension and its default (a one-value list).
SPACE_DEFAULTS: dict[str, list[Any]] = {
    "op": ["conv2d"], "in_channels": [16], "out_channels": [16], "kernel": [3], "stride": [1],
    "padding": ["same"], "resolution": [32], "groups": [1], "batch": [1], "dtype": ["float32"], "tokens": [1],
    "variant": [""], "bias": [False], "rank": [0], "w_bits": [0], "a_bits": [0],
}
_INT_DIMS = ("in_channels", "out_channels", "kernel", "stride", "resolution", "batch", "tokens", "rank", "w_bits",
             "a_bits", "padding", "groups")
_MIN = {"rank": 0, "w_bits": 0, "a_bits": 0, "padding": 0}
_TOP_KEYS = {"name", "kind", "sampling", "n", "seed", "space", "timing", "models", "random_widths", "per_layer",
             "description"}
SAMPLINGS = ("grid", "random", "sobol")


@dataclass(frozen=True)
class _Dim:
    """One dimension: explicit ``values`` or an integer range ``lo..hi`` (``step``, or log-uniform)."""

    values: tuple[Any, ...] = ()
    lo: int = 0
    hi: int = 0
    step: int = 0
    log: bool = False

    @property
    def size(self) -> int:
        return len(self.values) if self.values else (self.hi - self.lo) // max(1, self.step) + 1

    def grid(self) -> tuple[Any, ...]:
        return self.values or tuple(range(self.lo, self.hi + 1, self.step))

    def at(self, u: float) -> Any:
        """The value at quantile ``u`` in [0, 1)."""
        if self.values:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.log:
            v = int(math.exp(math.log(self.lo) + u * (math.log(self.hi + 1) - math.log(self.lo))))
            return min(max(v, self.lo), self.hi)
        return self.lo + min(int(u * self.size), self.size - 1) * max(1, self.step)


def _parse_dim(name: str, raw: Any, where: str) -> _Dim:
    def check(v: Any) -> Any:
        if name == "op":
            if v not in LAYER_OPS:
                raise ConfigError(f"{where}: space.op value {v!r} is unknown; allowed: {', '.join(LAYER_OPS)}")
        elif name == "dtype":
            from hwloop.workload import DTYPES

            if v not in DTYPES:
                raise ConfigError(f"{where}: space.dtype value {v!r} is unknown; allowed: {', '.join(DTYPES)}")
        elif name == "variant":
            if not isinstance(v, str):
                raise ConfigError(f"{where}: space.variant value {v!r} must be a string (e.g. 'relu', 'max')")
        elif name == "bias":
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: space.bias value {v!r} must be true or false")
        elif name == "padding" and v == "same" or name == "groups" and v == "depthwise":
            pass
        elif not isinstance(v, int) or isinstance(v, bool) or v < _MIN.get(name, 1):
            extra = " or 'same'" if name == "padding" else " or 'depthwise'" if name == "groups" else ""
            raise ConfigError(f"{where}: space.{name} value {v!r} must be an integer >= {_MIN.get(name, 1)}{extra}")
        return v

    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: space.{name} is an empty list; give at least one value")
        return _Dim(values=tuple(check(v) for v in raw))
    if isinstance(raw, Mapping):
        if name not in _INT_DIMS or name in ("padding", "groups"):
            raise ConfigError(f"{where}: space.{name} must be a list (ranges are for integer sizes)")
        extra = set(raw) - {"min", "max", "step", "log"}
        if extra or "min" not in raw or "max" not in raw:
            raise ConfigError(f"{where}: space.{name} range must be {{min, max[, step][, log]}}, got {dict(raw)!r}")
        lo, hi, step, log = check(raw["min"]), check(raw["max"]), raw.get("step", 1), raw.get("log", False)
        if hi < lo or not isinstance(step, int) or isinstance(step, bool) or step < 1 or not isinstance(log, bool):
            raise ConfigError(f"{where}: space.{name} range {dict(raw)!r} needs min <= max, integer step >= 1, "
                              "boolean log")
        if log and ("step" in raw or lo < 1):
            raise ConfigError(f"{where}: space.{name} log range needs min >= 1 and no step")
        return _Dim(lo=lo, hi=hi, step=step, log=log)
    return _Dim(values=(check(raw),))


def _make_layer(p: Mapping[str, Any]) -> LayerSpec:
    """The LayerSpec of one point of the space (raises WorkloadError for impossible combinations)."""
    from hwloop.workload import LayerSpec

    op, b, dt = p["op"], p["batch"], p["dtype"]
    cin, cout, r, k, s, t = p["in_channels"], p["out_channels"], p["resolution"], p["kernel"], p["stride"], p["tokens"]
    pad = k // 2 if p["padding"] == "same" else p["padding"]
    q = {"w_bits": p["w_bits"] or None, "a_bits": p["a_bits"] or None, "dtype": dt}
    if op == "conv2d":
        g = p["groups"]
        if g == "depthwise":
            g, cout = cin, cin
        else:  # round channel counts up to multiples of the group count
            cin, cout = -(-cin // g) * g, -(-cout // g) * g
        rank = p["rank"] or None
        if rank is not None and g > 1:
            raise WorkloadError("low-rank conv2d is dense (groups=1)")
        return LayerSpec("conv2d", (b, cin, r, r), out_channels=cout, kernel=k, stride=s, padding=pad, groups=g,
                         bias=p["bias"], rank=rank, **q)
    if op == "linear":
        shape = (b, cin) if t == 1 else (b, t, cin)
        return LayerSpec("linear", shape, out_channels=cout, bias=p["bias"], rank=p["rank"] or None, **q)
    if op == "matmul":
        return LayerSpec("matmul", (b, t, cin), out_channels=cout, **q)
    if op == "pooling":
        variant = p["variant"] or "max"
        if variant == "adaptive_avg":
            return LayerSpec("pooling", (b, cin, r, r), out_shape=(b, cin, 1, 1), variant=variant, **q)
        if 2 * pad > k:
            raise WorkloadError(f"pooling padding {pad} must be at most half the kernel {k}")
        o = (r + 2 * pad - k) // s + 1
        if o < 1:
            raise WorkloadError(f"pooling output empty for resolution {r} kernel {k}")
        return LayerSpec("pooling", (b, cin, r, r), out_shape=(b, cin, o, o), kernel=k, stride=s, padding=pad,
                         variant=variant, **q)
    variant = p["variant"] or ("relu" if op == "activation" else "")
    return LayerSpec(op, (b, cin, r, r), variant=variant, **q)


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep measures. Build with :meth:`from_toml` or :meth:`from_dict` (validated).

    Attributes:
        name: a label for the sweep.
        kind: ``layers`` (sample :attr:`space`) or ``models`` (:attr:`models` + :attr:`random_widths`).
        sampling: ``grid``, ``random`` or ``sobol`` (layers only).
        n: number of distinct layers (random/sobol: required; grid: optional subsample).
        seed: seed of the sampler (the same seed gives the same requests).
        space: dimension name → values (see :data:`SPACE_DEFAULTS` for names and defaults).
        models: explicit models.
        random_widths: ``{family, n, seed, batch, dtype, input_shape, kwargs}`` tables of random-width variants.
        per_layer: for models, time every layer in context too (``model_layers`` requests).
        timing: overrides applied to the device's timing (e.g. ``{"repeats": 10}``).
    """

    name: str
    kind: str = "layers"
    sampling: str = "random"
    n: int | None = None
    seed: int = 0
    space: Mapping[str, _Dim] = field(default_factory=dict)
    models: tuple[ModelRef, ...] = ()
    random_widths: tuple[Mapping[str, Any], ...] = ()
    per_layer: bool = False
    timing: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = f"sweep spec {self.path}" if self.path else f"sweep spec {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"{where}: 'name' must be a non-empty string")
        if self.kind not in ("layers", "models"):
            raise ConfigError(f"{where}: kind {self.kind!r} is unknown; allowed: layers, models")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"{where}: sampling {self.sampling!r} is unknown; allowed: {', '.join(SAMPLINGS)}")
        if self.n is not None and (not isinstance(self.n, int) or isinstance(self.n, bool)
                                   or not 1 <= self.n <= MAX_SWEEP_N):
            raise ConfigError(f"{where}: n={self.n!r} must be a positive integer <= {MAX_SWEEP_N}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"{where}: seed={self.seed!r} must be an integer >= 0")
        if self.kind == "layers":
            if self.sampling in ("random", "sobol") and self.n is None:
                raise ConfigError(f"{where}: sampling {self.sampling!r} needs n (how many layers)")
            if self.sampling == "grid":
                bad = [k for k, d in self.space.items() if not d.values and d.log]
                if bad:
                    raise ConfigError(f"{where}: grid sampling cannot use log ranges ({', '.join(bad)}); "
                                      "give lists or {min, max, step}")
            if self.models or self.random_widths:
                raise ConfigError(f"{where}: kind 'layers' takes [space], not models/random_widths")
        else:
            if not self.models and not self.random_widths:
                raise ConfigError(f"{where}: kind 'models' needs [[models]] or random_widths")
            if self.space:
                raise ConfigError(f"{where}: kind 'models' takes [[models]]/random_widths, not [space]")
        try:
            TimingConfig.from_dict({**TimingConfig().to_dict(), **dict(self.timing)})
        except ConfigError as e:
            raise ConfigError(f"{where}: [timing] {e}") from e
        object.__setattr__(self, "timing", dict(self.timing))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "random_widths", tuple(dict(r) for r in self.random_widths))

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> SweepSpec:
        """Validate a parsed TOML table (see the module docstring for the schema)."""
        from hwloop.models import ModelRef

        where = f"sweep spec {path}" if path else "sweep spec"
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a table, got {type(d).__name__}")
        extra = set(d) - _TOP_KEYS
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(_TOP_KEYS)}")
        if "name" not in d:
            raise ConfigError(f"{where}: missing required key 'name'")
        for k in ("space", "timing"):
            if k in d and not isinstance(d[k], Mapping):
                raise ConfigError(f"{where}: [{k}] must be a table")
        raw_space = dict(d.get("space", {}))
        unknown = set(raw_space) - set(SPACE_DEFAULTS)
        if unknown:
            raise ConfigError(f"{where}: unknown space dimension(s) {sorted(unknown)}; "
                              f"allowed: {', '.join(SPACE_DEFAULTS)}")
        space = {k: _parse_dim(k, v, where) for k, v in raw_space.items()}
        models = d.get("models", [])
        rws = d.get("random_widths", [])
        rws = [rws] if isinstance(rws, Mapping) else rws
        if not isinstance(models, list) or not isinstance(rws, list):
            raise ConfigError(f"{where}: models must be [[models]] tables and random_widths a table or tables")
        try:
            refs = tuple(ModelRef.from_dict(m).require_trust() for m in models)  # module:factory needs the opt-in
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: [[models]]: {e}") from e
        rw_keys = {"family", "n", "seed", "batch", "dtype", "input_shape", "kwargs"}
        for rw in rws:
            if not isinstance(rw, Mapping) or "family" not in rw or "n" not in rw or set(rw) - rw_keys:
                raise ConfigError(f"{where}: random_widths needs family and n, and only {sorted(rw_keys)}; got {rw!r}")
            if not isinstance(rw["n"], int) or isinstance(rw["n"], bool) or not 1 <= rw["n"] <= MAX_SWEEP_N:
                raise ConfigError(f"{where}: random_widths n={rw['n']!r} must be a positive integer <= {MAX_SWEEP_N}")
            for k, lo in (("seed", 0), ("batch", 1)):
                v = rw.get(k, lo)
                if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                    raise ConfigError(f"{where}: random_widths {k}={v!r} must be an integer >= {lo}")
            if not isinstance(rw.get("kwargs", {}), Mapping):
                raise ConfigError(f"{where}: random_widths kwargs={rw['kwargs']!r} must be a table")
        per_layer = d.get("per_layer", False)
        if not isinstance(per_layer, bool):
            raise ConfigError(f"{where}: per_layer={per_layer!r} must be true or false")
        spec = cls(name=d["name"], kind=d.get("kind", "layers"), sampling=d.get("sampling", "random"),
                   n=d.get("n"), seed=d.get("seed", 0), space=space, models=refs, random_widths=tuple(rws),
                   per_layer=per_layer, timing=dict(d.get("timing", {})), path=path)
        if spec.kind == "models":
            try:
                spec._model_refs()  # validates families/kwargs now rather than mid-sweep
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: random_widths: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return spec

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepSpec:
        """Read and validate a TOML sweep spec.

        Raises:
            ConfigError: the file is missing, not TOML, or not a valid spec (one-line message).
        """
        p = Path(path)
        return cls.from_dict(read_toml(p, "sweep spec"), path=p)

    def timing_for(self, base: TimingConfig) -> TimingConfig:
        """``base`` (the device's timing) with this spec's ``[timing]`` overrides applied."""
        return TimingConfig.from_dict({**base.to_dict(), **dict(self.timing)}) if self.timing else base

    # ----------------------------------------------------------------- requests
    def _dims(self) -> dict[str, _Dim]:
        return {k: self.space.get(k, _Dim(values=tuple(v))) for k, v in SPACE_DEFAULTS.items()}

    def layers(self) -> list[LayerSpec]:
        """The distinct layer specs of the space, in sampling order (deterministic for a seed)."""
        import numpy as np

        dims = self._dims()
        names = list(dims)
        found: dict[str, LayerSpec] = {}

        def take(point: Mapping[str, Any]) -> None:
            try:
                spec = _make_layer(point)
            except WorkloadError:
                return  # impossible combination (e.g. kernel larger than the padded input)
            found.setdefault(spec.key, spec)

        if self.sampling == "grid":
            for combo in itertools.product(*(dims[k].grid() for k in names)):
                take(dict(zip(names, combo)))
            specs = list(found.values())
            if self.n is not None and len(specs) > self.n:
                idx = np.sort(np.random.default_rng(self.seed).choice(len(specs), self.n, replace=False))
                specs = [specs[i] for i in idx]
            return specs
        assert self.n is not None
        varying = [k for k in names if dims[k].size > 1]
        fixed = {k: dims[k].at(0.0) for k in names if dims[k].size <= 1}
        m = max(4, math.ceil(math.log2(self.n * 2)))
        while True:
            found.clear()
            if not varying:
                u = np.zeros((1, 0))
            elif self.sampling == "sobol":
                from scipy.stats import qmc

                u = qmc.Sobol(d=len(varying), scramble=True, seed=self.seed).random_base2(m)
            else:
                u = np.random.default_rng(self.seed).random((2 ** m, len(varying)))
            for row in u:
                take({**fixed, **{k: dims[k].at(float(x)) for k, x in zip(varying, row)}})
                if len(found) == self.n:
                    return list(found.values())
            if not varying or m >= 20:
                break
            m += 2
        warnings.warn(f"sweep spec {self.name!r}: the space holds only {len(found)} distinct valid layers, "
                      f"fewer than n={self.n}", stacklevel=2)
        return list(found.values())

    def _model_refs(self) -> list[ModelRef]:
        import numpy as np

        from hwloop.models import ModelRef, random_width_kwargs

        refs = list(self.models)
        for rw in self.random_widths:
            rng = np.random.default_rng(int(rw.get("seed", 0)))
            for _ in range(int(rw["n"])):
                kw = {**dict(rw.get("kwargs", {})), **random_width_kwargs(str(rw["family"]), rng)}
                refs.append(ModelRef(str(rw["family"]), kw, tuple(rw.get("input_shape", ())),
                                     batch=int(rw.get("batch", 1)), dtype=str(rw.get("dtype", "float32"))))
        return refs

    def requests(self) -> list[MeasureRequest]:
        """The measure requests of this sweep (deterministic for a given seed; duplicates removed)."""
        if self.kind == "layers":
            return [MeasureRequest.for_layer(s) for s in self.layers()]
        out: dict[str, MeasureRequest] = {}
        for ref in self._model_refs():
            req = MeasureRequest.for_model(ref, per_layer=self.per_layer)
            out.setdefault(req.key, req)
        return list(out.values())


@dataclass
class SweepSummary:
    """What a sweep did (``measured + skipped + others + failed`` = distinct requests, when all finished).

    Attributes:
        measured: ok results stored here. skipped: requests already in the store at the start.
        others: requests other workers (processes, hosts) stored meanwhile. failed: error results stored here.
        taken_over: unfinished requests whose claim by a dead worker expired and was taken over here.
        per_device: device name → the same counts + ``wall_s`` + ``error``. wall_s: elapsed seconds.
    """

    measured: int = 0
    skipped: int = 0
    failed: int = 0
    others: int = 0
    taken_over: int = 0
    per_device: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def errors(self) -> dict[str, str]:
        """Device name → the error that stopped it (empty when every device finished)."""
        return {k: v["error"] for k, v in self.per_device.items() if v.get("error")}


def _run(requests: Sequence[MeasureRequest], devices: Sequence[Device], store: MeasurementStore,
         timings: Sequence[TimingConfig], *, progress: bool, batch_size: int, retry_failed: bool,
         on_result: ResultCallback | None, threaded: bool, lease_s: float | None
         ) -> tuple[SweepSummary, list[Worker]]:
    from tqdm.auto import tqdm

    from hwloop.store._claims import DEFAULT_LEASE_S, ClaimQueue, check_lease, worker_id

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    lease_s = check_lease(DEFAULT_LEASE_S if lease_s is None else lease_s)
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"device names must be distinct, got {names}")
    t0 = time.perf_counter()
    summary = SweepSummary()
    groups: dict[tuple[str, str], list[int]] = {}
    fps = [d.fingerprint() for d in devices]
    for i, (fp, t) in enumerate(zip(fps, timings)):
        groups.setdefault((fp.key, t.key), []).append(i)
    workers: list[Worker] = []
    bars, queues = [], []
    lock, stop = threading.Lock(), threading.Event()
    by_key = {r.key: r for r in reversed(requests)}  # the first request of each key
    for pos, members in enumerate(groups.values()):
        first, label = members[0], "+".join(names[i] for i in members)
        claims = ClaimQueue(store, fps[first], timings[first], [r.key for r in requests], retry_failed=retry_failed,
                            lease_s=lease_s, worker=worker_id(label))
        queues.append((claims, first))
        # A streaming device (measure_iter, e.g. a remote agent) stores each result on arrival: bigger batches
        # save round trips; claims stay <= 64 (unless batch_size asks for more) so other workers get work too.
        streaming = all(callable(getattr(devices[i], "measure_iter", None)) for i in members)
        n_todo = len(claims.todo)
        bs = max(batch_size, min(64, n_todo // (2 * len(members)))) if streaming else batch_size
        bar = tqdm(total=n_todo, desc=label, unit="meas", position=pos, disable=not progress, leave=True)
        claims.on_resolved = bar.update
        bars.append(bar)
        for j, i in enumerate(members):
            stats = {"measured": 0, "skipped": claims.already if j == 0 else 0, "others": 0, "failed": 0,
                     "taken_over": 0, "wall_s": 0.0, "error": None}
            summary.per_device[names[i]] = stats
            workers.append(Worker(devices[i], fps[i], timings[i], store, claims, by_key, bs, stats, bar, on_result,
                                   lock, stop))
    try:
        if threaded and len(workers) > 1:
            threads = [threading.Thread(target=w.run, name=f"hwloop-sweep-{w.device.name}") for w in workers]
            for th in threads:
                th.start()
            try:
                for th in threads:
                    while th.is_alive():
                        th.join(0.2)
            except KeyboardInterrupt:
                stop.set()
                for th in threads:
                    th.join()
                raise
        else:
            for w in workers:
                w.run()
    finally:
        for claims, _ in queues:
            claims.close()
        for bar in bars:
            bar.close()
    for claims, first in queues:  # counted once per group, on its first device (like skipped)
        summary.per_device[names[first]].update(others=summary.per_device[names[first]]["others"] + claims.by_others,
                                                taken_over=claims.taken_over)
    for st in summary.per_device.values():
        for k in ("measured", "skipped", "others", "failed", "taken_over"):
            setattr(summary, k, getattr(summary, k) + st[k])
    summary.wall_s = round(time.perf_counter() - t0, 3)
    return summary, workers


def _device_timing(device: Device, timing: TimingConfig | None) -> TimingConfig:
    if timing is not None:
        return timing
    t = getattr(device, "timing", None)
    return t if isinstance(t, TimingConfig) else TimingConfig()


def run_sweep(requests: Sequence[MeasureRequest], device: Device, store: MeasurementStore,
              timing: TimingConfig | None = None, *, progress: bool = True, batch_size: int = 8,
              retry_failed: bool = True, on_result: ResultCallback | None = None,
              lease_s: float | None = None) -> SweepSummary:
    """Measure what ``store`` lacks of ``requests`` on ``device``; each result is committed as it arrives.

    Work is claimed in the store: sweeps of the same requests into one store (other processes, hosts)
    split it, each key measured once; this returns when every key is stored, here or by others (a dead
    worker's keys are taken over when its lease expires).

    Args:
        requests: what to measure (duplicates are measured once).
        device: any :class:`~hwloop.devices.Device`; its ``measure_iter`` is used when present.
        store: where results go (and what is already measured).
        timing: timing to use; default the device's own (its profile's).
        progress: show a tqdm progress bar.
        batch_size: requests per ``device.measure`` call.
        retry_failed: re-measure requests whose stored row is a failure.
        on_result: called as ``on_result(request, result, stored)`` after each commit.
        lease_s: seconds a claim lives without a heartbeat (default 60; renewed every third of it).

    Raises:
        HwloopError: the device failed as a whole (every result reported before that is stored).

    Example:
        >>> from hwloop.devices.cpu import CpuDevice  # doctest: +SKIP
        >>> s = run_sweep(spec.requests(), CpuDevice(threads=1), MeasurementStore("m.db"))  # doctest: +SKIP
        >>> s.measured, s.skipped  # doctest: +SKIP
        (64, 0)
    """
    summary, workers = _run(requests, [device], store, [_device_timing(device, timing)], progress=progress,
                            batch_size=batch_size, retry_failed=retry_failed, on_result=on_result, threaded=False,
                            lease_s=lease_s)
    if workers[0].exc is not None:
        raise workers[0].exc
    return summary


def run_farm(requests: Sequence[MeasureRequest], devices: Sequence[Device], store: MeasurementStore,
             timing: TimingConfig | None = None, *, progress: bool = True, batch_size: int = 8,
             retry_failed: bool = True, on_result: ResultCallback | None = None,
             timings: Mapping[str, TimingConfig] | None = None, lease_s: float | None = None) -> SweepSummary:
    """Measure ``requests`` on every device in parallel (one thread each), all writing to ``store``.

    Each device measures the whole sweep under its own fingerprint; devices with the same
    fingerprint and timing (identical boards) share one claim queue and split the work. A device
    that fails as a whole stops alone: see :attr:`SweepSummary.errors`.

    Args:
        timing: timing for every device (default: each device's own).
        timings: device name → timing, overriding ``timing`` per device.
        (other arguments as :func:`run_sweep`)

    Example:
        >>> s = run_farm(reqs, [create_device("a"), create_device("b")], store)  # doctest: +SKIP
        >>> sorted(s.per_device)  # doctest: +SKIP
        ['a', 'b']
    """
    if not devices:
        raise ConfigError("run_farm needs at least one device")
    ts = [(timings or {}).get(d.name) or _device_timing(d, timing) for d in devices]
    summary, _ = _run(requests, devices, store, ts, progress=progress, batch_size=batch_size,
                      retry_failed=retry_failed, on_result=on_result, threaded=True, lease_s=lease_s)
    return summary
