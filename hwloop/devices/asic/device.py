"""``asic`` backend: the simulated accelerator as a :class:`~hwloop.devices.base.Device`.

Layer requests are costed straight from their :class:`~hwloop.workload.LayerSpec`
(bits from ``w_bits``/``a_bits``); model requests go through the TVM front end once per
:attr:`ModelRef.key <hwloop.models.ModelRef.key>` (cached on the device) and are then
costed in one vectorised pass. The device is deterministic unless a noise model is
given: log-normal jitter plus a seeded contention term that slows the memory-bound share.

Example:
    >>> from hwloop.devices.asic import AsicDevice
    >>> from hwloop.devices.base import MeasureRequest, TimingConfig
    >>> from hwloop.workload import LayerSpec
    >>> dev = AsicDevice("toy", spec={"rows": 4, "cols": 4, "clock_mhz": 100})
    >>> r = dev.measure([MeasureRequest.for_layer(LayerSpec("linear", (1, 8), out_channels=8))],
    ...                 TimingConfig(repeats=3))[0]
    >>> r.timing.mode, r.extra["bound"], len(set(r.samples_ms))
    ('asic', 'compute', 1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwloop.devices.asic.costmodel import COST_MODEL_VERSION, GraphCost, OpCost, cost_graph
from hwloop.devices.asic.opgraph import OpGraph
from hwloop.devices.asic.spec import AcceleratorSpec
from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig, summarize
from hwloop.errors import ConfigError, HwloopError
from hwloop.models import ModelRef

__all__ = ["AsicDevice", "NoiseModel"]


@dataclass(frozen=True)
class NoiseModel:
    """Seeded measurement noise that makes the simulator behave like a real device.

    Each sample is ``exact · exp(N(0, jitter_sigma)) · (1 + c)`` where, with probability
    ``contention_prob``, ``c = contention_frac · memory_share · U(0, 1)`` (another master
    competing for DRAM slows the memory-bound share of the run).

    Attributes:
        jitter_sigma: log-normal sigma of the multiplicative jitter (0 for none).
        contention_prob: chance that a sample sees DRAM contention.
        contention_frac: worst-case slowdown of the memory-bound share under contention.
    """

    jitter_sigma: float = 0.02
    contention_prob: float = 0.1
    contention_frac: float = 0.5

    def __post_init__(self) -> None:
        for n in ("jitter_sigma", "contention_prob", "contention_frac"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"noise {n}={v!r} must be a number >= 0")
            object.__setattr__(self, n, float(v))
        if self.contention_prob > 1:
            raise ConfigError(f"noise contention_prob={self.contention_prob} must be <= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseModel:
        if not isinstance(d, Mapping):
            raise ConfigError(f"noise must be a table, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"noise has unknown key(s) {sorted(extra)}; allowed: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def sample(self, exact_ms: float, memory_share: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` noisy latencies around ``exact_ms``."""
        jitter = np.exp(rng.normal(0.0, self.jitter_sigma, n)) if self.jitter_sigma > 0 else np.ones(n)
        hit = rng.random(n) < self.contention_prob
        slow = 1.0 + hit * self.contention_frac * memory_share * rng.random(n)
        return exact_ms * jitter * slow


def _bits(d: Any) -> tuple[int, int]:
    if not isinstance(d, Mapping) or set(d) - {"w", "a"}:
        raise ConfigError(f"default_bits={d!r} must be a table with keys w and a, e.g. {{w = 8, a = 8}}")
    w, a = d.get("w", 8), d.get("a", 8)
    for n, v in (("w", w), ("a", a)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 32:
            raise ConfigError(f"default_bits.{n}={v!r} must be an integer in 1..32")
    return int(w), int(a)


class AsicDevice:
    """The simulated accelerator.

    Args:
        name: device name (its profile's name).
        timing: default timing; results carry it with ``mode="asic"``.
        spec: the profile's ``[spec]`` table (see :class:`AcceleratorSpec`).
        noise: optional noise table (see :class:`NoiseModel`); None for a deterministic device.
        seed: seed of the noise generator.
        default_bits: ``{w, a}`` bit-widths applied to model requests (layer requests
            carry their own bits in the LayerSpec).
    """

    backend = "asic"

    def __init__(self, name: str = "asic", timing: TimingConfig | None = None,
                 spec: Mapping[str, Any] | None = None, noise: Mapping[str, Any] | None = None, seed: int = 0,
                 default_bits: Mapping[str, int] | None = None, **_ignored: Any) -> None:
        self.name = name
        self.timing = timing or TimingConfig(mode="asic", warmup=0, repeats=1)
        self.accel = AcceleratorSpec.from_dict(spec or {}, name=name)
        self.noise = NoiseModel.from_dict(noise) if noise is not None else None
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed={seed!r} must be an integer")
        self.seed = seed
        self.default_bits = _bits(default_bits if default_bits is not None else {"w": 8, "a": 8})
        self._rng = np.random.default_rng(seed)
        self._graphs: dict[str, OpGraph] = {}

    # ----------------------------------------------------------------- contract
    def fingerprint(self) -> DeviceFingerprint:
        return DeviceFingerprint(
            name=self.name, backend=self.backend,
            identity={"spec": self.accel.to_dict(), "noise": self.noise.to_dict() if self.noise else None,
                      "seed": self.seed if self.noise else None,
                      "default_bits": {"w": self.default_bits[0], "a": self.default_bits[1]},
                      "cost_model": COST_MODEL_VERSION},
            info={"peak_tops_8bit": 2 * self.accel.peak_macs_per_cycle(8, 8) * self.accel.clock_mhz / 1e6})

    def lower(self, ref: ModelRef) -> OpGraph:
        """The op graph of ``ref`` at the device's default bits (lowered once per ``ref.key``)."""
        g = self._graphs.get(ref.key)
        if g is None:
            from hwloop.devices.asic.frontend import lower_model

            g = lower_model(ref, epilogue=self.accel.fused_epilogue).with_bits(*self.default_bits)
            self._graphs[ref.key] = g
        return g

    def cost(self, req: MeasureRequest) -> tuple[OpCost, GraphCost]:
        """The exact cost of one request: its total and its per-op breakdown."""
        graph = (OpGraph.from_layer(req.layer, epilogue=self.accel.fused_epilogue) if req.layer is not None
                 else self.lower(req.model))  # type: ignore[arg-type]
        gc = cost_graph(graph, self.accel)
        return gc.total(), gc

    def _measure_one(self, req: MeasureRequest, timing: TimingConfig) -> MeasureResult:
        total, gc = self.cost(req)
        if self.noise is None:
            samples = [total.latency_ms] * timing.repeats
        else:
            share = min(1.0, total.memory_cycles / total.cycles) if total.cycles > 0 else 0.0
            samples = list(self.noise.sample(total.latency_ms, share, timing.repeats, self._rng))
        per = gc.per_op_ms() if req.kind == "model_layers" else None
        extra = {**total.to_extra(), "latency_exact_ms": total.latency_ms}
        if req.model is not None:
            extra["host_ops"] = len(gc.graph.host_ops)
        return summarize(samples, timing, request_key=req.key, per_layer_ms=per, extra=extra)

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None) -> list[MeasureResult]:
        """Cost each request; one result per request, failures as ``MeasureResult.error``."""
        t = dataclasses.replace(timing or self.timing, mode="asic")
        out: list[MeasureResult] = []
        for req in requests:
            try:
                out.append(self._measure_one(req, t))
            except (HwloopError, RuntimeError, ValueError, TypeError, MemoryError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                out.append(MeasureResult.failure(req.key, t, f"{type(e).__name__}: {msg}"))
        return out

    def close(self) -> None:
        self._graphs.clear()
