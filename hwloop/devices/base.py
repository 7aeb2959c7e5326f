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
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hwloop.errors import ConfigError
from hwloop.models import ModelRef
from hwloop.workload import LayerSpec

__all__ = ["TimingConfig", "DeviceFingerprint", "MeasureRequest", "MeasureResult", "Device", "summarize",
           "EXEC_MODES", "REQUEST_KINDS"]

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
