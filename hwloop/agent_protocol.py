"""The agent's wire protocol: message schema, encoding, validation and request limits (see :mod:`hwloop.agent`).

Kept free of torch and of the worker machinery so the host and the board share one definition.

Example:
    >>> from hwloop.agent_protocol import encode_message, decode_message
    >>> decode_message(encode_message({"v": 1, "type": "heartbeat"}), sender="host")["type"]
    'heartbeat'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hwloop.errors import ConfigError, ProtocolError

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("hello", "measure", "result", "heartbeat", "error", "shutdown", "bye")
_LOCAL_BACKENDS = ("cpu", "cuda", "tvm", "asic")
_NUM = (int, float)
_OPT_STR = (str, type(None))

#: (sender, type) -> {field: allowed python types}; every field is required, no other field allowed.
_SCHEMA: dict[tuple[str, str], dict[str, tuple[type, ...]]] = {
    ("host", "hello"): {"protocol": (int,), "hwloop": (str,), "device": (dict,)},
    ("host", "measure"): {"jobs": (list,), "timing": (dict,), "job_timeout_s": _NUM},
    ("host", "heartbeat"): {},
    ("host", "shutdown"): {},
    ("agent", "hello"): {"protocol": (int,), "hwloop": (str,), "capabilities": (dict,), "fingerprint": (dict,),
                         "limits": (dict,), "pid": (int,), "warnings": (list,)},
    ("agent", "result"): {"id": (str,), "result": (dict,)},
    ("agent", "heartbeat"): {"busy": _OPT_STR, "queued": (int,), "done": (int,)},
    ("agent", "error"): {"message": (str,), "id": _OPT_STR, "fatal": (bool,)},
    ("agent", "bye"): {"done": (int,)},
}


@dataclass(frozen=True)
class AgentLimits:
    """What the agent refuses.

    Attributes:
        max_elements: largest tensor (input, output or weight) of one job, in elements.
        max_memory_bytes: largest estimated working set of one job (inputs + outputs + weights).
        max_message_bytes: longest protocol line accepted (either direction).
        max_queue: most jobs waiting on the agent at once.
        heartbeat_s: seconds between heartbeats the agent sends.
        default_job_timeout_s: per-job limit when neither the message nor the timing sets one.

    Example:
        >>> AgentLimits(max_elements=1 << 20).max_message_bytes
        1048576
    """

    max_elements: int = 64 * 1024 * 1024
    max_memory_bytes: int = 2 * 1024 ** 3
    max_message_bytes: int = 1024 * 1024
    max_queue: int = 10_000
    heartbeat_s: float = 1.0
    default_job_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for n in ("max_elements", "max_memory_bytes", "max_message_bytes", "max_queue"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"agent limit {n}={v!r} must be a positive integer")
        for n in ("heartbeat_s", "default_job_timeout_s"):
            v = getattr(self, n)
            if not isinstance(v, _NUM) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"agent limit {n}={v!r} must be a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- messages
def _clean(obj: Any) -> Any:
    """NaN/inf floats become null so the line is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def encode_message(msg: Mapping[str, Any]) -> bytes:
    """One protocol line (UTF-8 JSON + ``\\n``); non-finite floats are written as null."""
    return (json.dumps(_clean(dict(msg)), separators=(",", ":"), allow_nan=False) + "\n").encode()


def validate_message(msg: Any, *, sender: str) -> dict[str, Any]:
    """Check a decoded message against the protocol schema for ``sender`` (``host``/``agent``).

    Raises:
        ProtocolError: wrong version, unknown type, missing/extra/mistyped field.
    """
    if not isinstance(msg, dict):
        raise ProtocolError(f"a protocol message must be a JSON object, got {type(msg).__name__}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r} is not supported; this side speaks "
                            f"v{PROTOCOL_VERSION}")
    kind = msg.get("type")
    fields = _SCHEMA.get((sender, kind)) if isinstance(kind, str) else None
    if fields is None:
        allowed = sorted(t for s, t in _SCHEMA if s == sender)
        raise ProtocolError(f"message type {kind!r} is not allowed from the {sender}; allowed: {', '.join(allowed)}")
    extra = set(msg) - set(fields) - {"v", "type"}
    if extra:
        raise ProtocolError(f"{sender} {kind} message has unknown field(s) {sorted(extra)}; "
                            f"allowed: {sorted(fields)}")
    for name, types in fields.items():
        if name not in msg:
            raise ProtocolError(f"{sender} {kind} message lacks field {name!r}")
        v = msg[name]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ProtocolError(f"{sender} {kind} field {name!r}={_short(v)} must be "
                                f"{' or '.join(t.__name__ for t in types)}")
    return msg


def decode_message(line: bytes | str, *, sender: str, max_bytes: int = AgentLimits.max_message_bytes
                   ) -> dict[str, Any]:
    """Parse and validate one protocol line.

    Raises:
        ProtocolError: the line is longer than ``max_bytes``, not JSON, or breaks the schema.
    """
    raw = line.encode() if isinstance(line, str) else line
    if len(raw) > max_bytes:
        raise ProtocolError(f"message of {len(raw)} bytes from the {sender} exceeds the limit of {max_bytes} bytes")
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"message from the {sender} is not JSON ({_short(raw)}): {e}") from e
    return validate_message(msg, sender=sender)


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# ----------------------------------------------------------------------------- limits
def check_request_limits(request: Mapping[str, Any], limits: AgentLimits) -> Any:
    """Parse a request dict into a :class:`MeasureRequest`, refusing unknown ops/models and oversize work.

    Only built-in model names are accepted (a ``module:factory`` name would import code on
    the board). Returns the request; raises :class:`~hwloop.errors.HwloopError` with the reason.
    """
    from hwloop.devices.base import MeasureRequest
    from hwloop.models import BUILTIN_MODELS
    from hwloop.workload import DTYPES

    model = request.get("model") if isinstance(request, Mapping) else None
    if isinstance(model, Mapping) and model.get("name") not in BUILTIN_MODELS:
        raise ConfigError(f"model {model.get('name')!r} is not allowed on the agent; allowed: "
                          f"{', '.join(BUILTIN_MODELS)}")
    req = MeasureRequest.from_dict(request)
    if req.layer is not None:
        s = req.layer
        weights = s.params
        tensors = {"input": s.in_elements, "output": s.out_elements, "weight": weights}
        if s.op == "matmul":
            tensors["weight"] = s.in_channels * s.out_channels * (s.batch if len(s.in_shape) > 2 else 1)
        total = (s.in_elements * (2 if s.op == "add" else 1) + s.out_elements + tensors["weight"]) * DTYPES[s.dtype]
    else:
        assert req.model is not None
        n_in = req.model.batch * math.prod(req.model.input_shape)
        tensors = {"input": n_in}
        total = n_in * DTYPES[req.model.dtype]
    for what, n in tensors.items():
        if n > limits.max_elements:
            raise ConfigError(f"{what} tensor of {n} elements exceeds the agent limit max_elements="
                              f"{limits.max_elements}")
    if total > limits.max_memory_bytes:
        raise ConfigError(f"estimated working set of {total} bytes exceeds the agent limit max_memory_bytes="
                          f"{limits.max_memory_bytes}")
    return req


# ----------------------------------------------------------------------------- worker
