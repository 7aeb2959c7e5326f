"""The device contract: records every backend shares and the :class:`Device` protocol.

A backend turns a batch of :class:`MeasureRequest` into the same number of
:class:`MeasureResult` (Build → Run → Record, as in TVM MetaSchedule). A failure is
data: the result carries ``error`` and the sweep goes on. Every result records the
:class:`TimingConfig` it was measured under.

Example:
    >>> from hwloop.devices.base import TimingConfig, summarize
    >>> r = summarize([1.0, 1.1, 0.9], TimingConfig(), request_key="k")
    >>> round(r.latency_ms, 3)
    1.0
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hwloop.errors import ConfigError

if TYPE_CHECKING:  # both import torch; a DeviceFingerprint (loaded with every predictor) needs neither
    from hwloop.models import ModelRef
    from hwloop.workload import LayerSpec

__all__ = ["TimingConfig", "DeviceFingerprint", "MeasureRequest", "MeasureResult", "Device", "summarize",
           "Comparison", "compare", "machine_load", "median_ci", "ratio_stats", "RATIO_TOLERANCE", "EXEC_MODES", "REQUEST_KINDS"]

EXEC_MODES = ("eager", "cuda_graph", "tvm", "asic")
REQUEST_KINDS = ("layer", "model", "model_layers")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TimingConfig:
    """How to time: one value object shared by every backend.

    Attributes:
        warmup: untimed runs before timing.
        repeats: timed samples (each sample = ``number`` back-to-back runs, averaged).
        number: inner iterations per sample; 0 picks it so a sample lasts ``min_repeat_ms``.
        min_repeat_ms: minimum duration of one sample when ``number`` is 0.
        mode: execution mode: ``eager``, ``cuda_graph`` (CUDA only), ``tvm`` or ``asic``.
        max_cv: a result whose coefficient of variation exceeds this is flagged ``unstable``...
        max_retries: ...and re-measured up to this many more times (the steadiest attempt is kept).
        timeout_s: per-request wall-clock limit; 0 for none.
    """

    warmup: int = 5
    repeats: int = 20
    number: int = 0
    min_repeat_ms: float = 1.0
    mode: str = "eager"
    max_cv: float = 0.05
    max_retries: int = 2
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for n in ("warmup", "number", "max_retries"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"timing {n}={v!r} must be an integer >= 0")
        if not isinstance(self.repeats, int) or isinstance(self.repeats, bool) or self.repeats < 1:
            raise ConfigError(f"timing repeats={self.repeats!r} must be an integer >= 1")
        for n in ("min_repeat_ms", "max_cv", "timeout_s"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"timing {n}={v!r} must be a number >= 0")
            object.__setattr__(self, n, float(v))
        if self.mode not in EXEC_MODES:
            raise ConfigError(f"timing mode {self.mode!r} is unknown; allowed: {', '.join(EXEC_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TimingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown timing field(s) {sorted(extra)}; allowed: {sorted(known)}")
        return cls(**dict(d))

    @property
    def key(self) -> str:
        """Hash of what changes the measured value (warm-up/repeats/mode...), not of timeouts."""
        d = self.to_dict()
        for k in ("timeout_s", "max_retries", "max_cv"):
            d.pop(k)
        return _hash(d)


@dataclass(frozen=True)
class DeviceFingerprint:
    """What identifies the hardware + software a number was measured on.

    ``identity`` holds the fields that define the device (CPU model, thread count, GPU name,
    library versions...) and enter :attr:`key`; ``info`` holds context that may drift
    (clocks, temperature) and is stored but not hashed.
    """

    name: str
    backend: str
    identity: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.backend:
            raise ConfigError("a device fingerprint needs a name and a backend")
        object.__setattr__(self, "identity", dict(self.identity))
        object.__setattr__(self, "info", dict(self.info))

    @property
    def key(self) -> str:
        return _hash({"backend": self.backend, **self.identity})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "identity": dict(self.identity),
                "info": dict(self.info), "key": self.key}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceFingerprint:
        return cls(name=d["name"], backend=d["backend"], identity=d.get("identity", {}), info=d.get("info", {}))


@dataclass(frozen=True)
class MeasureRequest:
    """One thing to time.

    ``kind`` is ``layer`` (``layer`` timed in isolation), ``model`` (``model`` end to end) or
    ``model_layers`` (``model`` end to end with every conv/linear... timed in context in the
    same run; the result's ``per_layer_ms`` lists them).
    """

    kind: str
    layer: LayerSpec | None = None
    model: ModelRef | None = None

    def __post_init__(self) -> None:
        if self.kind not in REQUEST_KINDS:
            raise ConfigError(f"request kind {self.kind!r} is unknown; allowed: {', '.join(REQUEST_KINDS)}")
        if self.kind == "layer" and (self.layer is None or self.model is not None):
            raise ConfigError("a 'layer' request needs exactly a layer spec")
        if self.kind != "layer" and (self.model is None or self.layer is not None):
            raise ConfigError(f"a {self.kind!r} request needs exactly a model reference")

    @classmethod
    def for_layer(cls, spec: LayerSpec) -> MeasureRequest:
        return cls("layer", layer=spec)

    @classmethod
    def for_model(cls, ref: ModelRef, *, per_layer: bool = False) -> MeasureRequest:
        return cls("model_layers" if per_layer else "model", model=ref)

    @property
    def key(self) -> str:
        """The workload hash: the layer spec's key, or the model ref's key prefixed by kind."""
        if self.layer is not None:
            return self.layer.key
        assert self.model is not None
        return _hash({"kind": self.kind, "model": self.model.to_dict()})

    @property
    def op(self) -> str:
        return self.layer.op if self.layer is not None else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer.to_dict() if self.layer else None,
                "model": self.model.to_dict() if self.model else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeasureRequest:
        if not isinstance(d, Mapping) or "kind" not in d:
            raise ConfigError(f"a measure request needs a 'kind', got {d!r}")
        from hwloop.models import ModelRef
        from hwloop.workload import LayerSpec

        layer = LayerSpec.from_dict(d["layer"]) if d.get("layer") else None
        model = ModelRef.from_dict(d["model"]) if d.get("model") else None
        return cls(str(d["kind"]), layer=layer, model=model)


@dataclass(frozen=True)
class MeasureResult:
    """The outcome of one request: statistics in milliseconds, or an ``error``.

    ``latency_ms`` is the median of ``samples_ms``. ``unstable`` is True when the CV stayed
    above ``timing.max_cv`` after all retries. ``per_layer_ms`` maps layer name → median ms
    for ``model_layers`` requests. ``extra`` carries backend-specific facts (e.g. tuned,
    cycles, dram_bytes).
    """

    request_key: str
    timing: TimingConfig
    latency_ms: float = float("nan")
    min_ms: float = float("nan")
    max_ms: float = float("nan")
    iqr_ms: float = float("nan")
    cv: float = float("nan")
    samples_ms: tuple[float, ...] = ()
    unstable: bool = False
    attempts: int = 1
    error: str | None = None
    per_layer_ms: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "samples_ms", tuple(float(x) for x in self.samples_ms))
        object.__setattr__(self, "per_layer_ms", dict(self.per_layer_ms))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.error is None and not self.samples_ms:
            raise ConfigError("a successful MeasureResult needs samples")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, request_key: str, timing: TimingConfig, error: str, **extra: Any) -> MeasureResult:
        return cls(request_key=request_key, timing=timing, error=error, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["timing"] = self.timing.to_dict()
        d["samples_ms"] = list(self.samples_ms)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeasureResult:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown result field(s) {sorted(extra)}")
        kw = dict(d)
        kw["timing"] = TimingConfig.from_dict(kw["timing"])
        for k in ("latency_ms", "min_ms", "max_ms", "iqr_ms", "cv"):
            if kw.get(k) is None:
                kw[k] = float("nan")
        return cls(**kw)


def summarize(samples_ms: Sequence[float], timing: TimingConfig, *, request_key: str, attempts: int = 1,
              per_layer_ms: Mapping[str, float] | None = None, extra: Mapping[str, Any] | None = None
              ) -> MeasureResult:
    """Statistics of timed samples as a :class:`MeasureResult`."""
    xs = sorted(float(x) for x in samples_ms)
    if not xs:
        raise ConfigError("summarize needs at least one sample")
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = xs[-1] - xs[0]
    cv = statistics.pstdev(xs) / statistics.fmean(xs) if statistics.fmean(xs) > 0 else 0.0
    return MeasureResult(request_key=request_key, timing=timing, latency_ms=med, min_ms=xs[0], max_ms=xs[-1],
                         iqr_ms=iqr, cv=cv, samples_ms=tuple(samples_ms), unstable=cv > timing.max_cv,
                         attempts=attempts, per_layer_ms=per_layer_ms or {}, extra=extra or {})


@runtime_checkable
class Device(Protocol):
    """What every backend provides.

    ``measure`` must return exactly one result per request, in order, and never raise for
    a single request's failure (return ``MeasureResult.failure`` instead).
    """

    name: str

    def fingerprint(self) -> DeviceFingerprint: ...

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None
                ) -> list[MeasureResult]: ...

    def close(self) -> None: ...


def machine_load() -> dict[str, Any]:
    """The machine's 1-minute load average and core count, as every CPU result records it.

    ``loaded`` is True when the load average exceeds the cores this process may run on: other
    processes then compete for the cores being measured (wall-clock timings stretch, the
    thread clock does not count the wait).

    Example:
        >>> sorted(machine_load())
        ['cores', 'load1', 'loaded']
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load1 = float(os.getloadavg()[0])
    except (AttributeError, OSError):
        load1 = float("nan")
    return {"load1": round(load1, 2), "cores": cores, "loaded": bool(load1 > cores)}


def median_ci(xs: Sequence[float], conf: float = 0.95) -> tuple[float, float, float]:
    """The median of ``xs`` and a distribution-free confidence interval for it (order statistics).

    The interval is ``[x_(k), x_(n-k+1)]`` of the sorted values with ``k`` from the normal
    approximation of the binomial (``k = floor(n/2 - z*sqrt(n)/2)``), so it holds whatever the
    shape of the distribution (a preempted sample is one outlier, not a shift). Fewer than 6 values
    give the full range.

    Example:
        >>> median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
        (6.0, 2.0, 10.0)
    """
    v = sorted(float(x) for x in xs)
    if not v:
        raise ConfigError("median_ci needs at least one value")
    n = len(v)
    med = statistics.median(v)
    if n < 6:
        return med, v[0], v[-1]
    z = statistics.NormalDist().inv_cdf(0.5 + conf / 2)
    k = max(1, int(math.floor(n / 2 - z * math.sqrt(n) / 2)))
    return med, v[k - 1], v[n - k]


@dataclass(frozen=True)
class Comparison:
    """Requests measured against each other (interleaved on the CPU backend), with their latency ratios.

    ``results[i]`` is request ``i``'s own result (its median over every round); ``ratios[i]`` is
    the median over rounds of ``sample_i / sample_0`` taken in the same round (so drift between
    rounds cancels), ``ratio_ci[i]`` its 95% confidence interval (:func:`median_ci`). Rounds are
    added while an interval is wider than ``± max_cv / 2`` (:data:`RATIO_TOLERANCE`); ``unstable``
    is True when some ratio's interval is still wider than ``± max_cv`` of the ratio after every retry (``rounds`` is the number of rounds taken). ``load`` is :func:`machine_load` when
    the comparison started and ``load_end`` when it ended.
    """

    results: tuple[MeasureResult, ...]
    ratios: tuple[float, ...]
    ratio_ci: tuple[tuple[float, float], ...]
    rounds: int
    unstable: bool
    interleaved: bool
    load: Mapping[str, Any] = field(default_factory=dict)
    load_end: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def ratio_halfwidth(self) -> tuple[float, ...]:
        """Half the width of each ratio's interval, relative to the ratio (0 for the reference)."""
        return tuple((hi - lo) / (2 * r) if r > 0 and math.isfinite(r) else float("inf")
                     for r, (lo, hi) in zip(self.ratios, self.ratio_ci))

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results], "ratios": list(self.ratios),
                "ratio_ci": [list(c) for c in self.ratio_ci], "rounds": self.rounds, "unstable": self.unstable,
                "interleaved": self.interleaved, "load": dict(self.load), "load_end": dict(self.load_end)}


#: interleaved rounds are added while a ratio's 95% interval is wider than ± this fraction of ``max_cv``
#: (the ratio is what searches and reports quote, so sampling aims at half the spread allowed for one
#: sample set); the comparison is *unstable* when the interval is still wider than ``± max_cv``
RATIO_TOLERANCE = 0.5


def ratio_stats(samples: Sequence[Sequence[float]], timing: TimingConfig, *, tolerance: float = 1.0
                ) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...], bool]:
    """Per-round ratios ``samples[i][r] / samples[0][r]``: their medians, 95% intervals, and whether any
    interval is wider than ``± tolerance * timing.max_cv`` of its ratio."""
    ratios: list[float] = []
    cis: list[tuple[float, float]] = []
    wide = False
    for i, xs in enumerate(samples):
        if i == 0:
            ratios.append(1.0)
            cis.append((1.0, 1.0))
            continue
        per = [b / a for a, b in zip(samples[0], xs) if a > 0]
        if not per:
            ratios.append(float("nan"))
            cis.append((float("nan"), float("nan")))
            wide = True
            continue
        med, lo, hi = median_ci(per)
        ratios.append(med)
        cis.append((lo, hi))
        if med <= 0 or (hi - lo) / (2 * med) > timing.max_cv * tolerance:
            wide = True
    return tuple(ratios), tuple(cis), wide


def compare(device: Device, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None, *,
            rounds: int = 3) -> Comparison:
    """Measure ``requests`` against each other on ``device``; ratios are relative to ``requests[0]``.

    A device with ``measure_interleaved`` (the CPU backend) interleaves single samples of every
    request (A, B, B, A, …) so that load drifting over the measurement cancels in the ratios.
    Any other device gets ``rounds`` alternating batches (forward, then reversed order); each
    request's result is its batch with the median latency, and the per-round ratios of the batch
    latencies give the ratios (a deterministic device, e.g. the simulated ASIC, has one exact
    ratio).
    """
    if not requests:
        raise ConfigError("compare needs at least one request")
    if rounds < 1:
        raise ConfigError(f"compare rounds={rounds!r} must be >= 1")
    interleaved = getattr(device, "measure_interleaved", None)
    if callable(interleaved):
        out: Comparison = interleaved(list(requests), timing)
        return out
    t = timing or getattr(device, "timing", None) or TimingConfig()
    load = machine_load()
    per_req: list[list[MeasureResult]] = [[] for _ in requests]
    for r in range(rounds):
        order = list(range(len(requests)))
        if r % 2:
            order.reverse()
        got = device.measure([requests[i] for i in order], t)
        for i, res in zip(order, got):
            per_req[i].append(res)
    results: list[MeasureResult] = []
    for rs in per_req:
        bad = [x for x in rs if not x.ok]
        results.append(bad[0] if bad else sorted(rs, key=lambda x: x.latency_ms)[len(rs) // 2])
    if not all(x.ok for x in results):
        nan = float("nan")
        return Comparison(tuple(results), tuple(nan for _ in results), tuple((nan, nan) for _ in results), rounds,
                          True, False, load, machine_load())
    samples = [[x.latency_ms for x in rs] for rs in per_req]
    ratios, cis, unstable = ratio_stats(samples, t)
    unstable = unstable or any(x.unstable for x in results)
    return Comparison(tuple(results), ratios, cis, rounds, unstable, False, load, machine_load())


#: :func:`compare_passes` accepts the median pass once it and the pass ratios either side of it (the central
#: three, sorted) lie within this fraction of the median
PASS_AGREEMENT = 0.05


def median_comparison(comps: Sequence[Comparison], index: int = 1) -> Comparison:
    """The comparison whose ``ratios[index]`` is the median of ``comps`` (the lower middle one for an even
    count), so a single pass that landed far from the others is never the one reported."""
    if not comps:
        raise ConfigError("median_comparison needs at least one comparison")
    order = sorted(range(len(comps)), key=lambda i: float(comps[i].ratios[index]))
    return comps[order[(len(comps) - 1) // 2]]


def passes_agree(ratios: Sequence[float], agreement: float = PASS_AGREEMENT) -> bool:
    """Whether the median of ``ratios`` is corroborated: the central three sorted values (all of them when
    fewer) span at most ``agreement`` of the (lower) median."""
    v = sorted(float(r) for r in ratios)
    if not v or not all(math.isfinite(x) and x > 0 for x in v):
        return False
    m = (len(v) - 1) // 2
    central = v[max(0, m - 1): m + 2]
    return (central[-1] - central[0]) / v[m] <= agreement


def compare_passes(device: Device, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None, *,
                   passes: int = 3, max_passes: int | None = None, agreement: float = PASS_AGREEMENT,
                   index: int = 1) -> tuple[Comparison, list[Comparison]]:
    """Several independent :func:`compare` passes of ``requests``; the one with the median ``ratios[index]``.

    ``passes`` comparisons always run; while their median is not corroborated (:func:`passes_agree`: the
    central three pass ratios within ``agreement`` of it) more run, up to ``max_passes`` (default
    ``passes``: no extension). On the 2-core CPU VM the pass ratios of one pair spread 5-20% even on a quiet
    machine (a state of each fresh build, not load: ``benchmarks/bench_cpu_timing.py``), so a median of
    three can still sit on two passes from the same side; extending until the median has neighbours
    close by makes it a stable estimate without paying for extra passes where three already agree. A
    failed comparison ends the passes and is returned as the chosen one.

    Returns:
        ``(chosen, every_pass)``.
    """
    mp = passes if max_passes is None else max_passes
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise ConfigError(f"passes={passes!r} must be an integer >= 1")
    if not isinstance(mp, int) or isinstance(mp, bool) or mp < passes:
        raise ConfigError(f"max_passes={max_passes!r} must be an integer >= passes ({passes})")
    if not (isinstance(agreement, (int, float)) and math.isfinite(agreement) and agreement >= 0):
        raise ConfigError(f"agreement={agreement!r} must be a number >= 0")
    comps: list[Comparison] = []
    while len(comps) < mp:
        c = compare(device, requests, timing)
        comps.append(c)
        if not c.ok:
            return c, comps
        if len(comps) >= passes and passes_agree([x.ratios[index] for x in comps], agreement):
            break
    return median_comparison(comps, index), comps

