"""Error types. Every error hwloop raises on bad input is a :class:`HwloopError`.

Each message is one line naming the offending value and what is allowed, so the
CLI can print it as-is and exit with status 2.
"""

from __future__ import annotations

__all__ = [
    "HwloopError",
    "ConfigError",
    "WorkloadError",
    "DeviceError",
    "DeviceUnavailableError",
    "StoreError",
    "PredictorError",
    "NotFittedError",
    "RemoteError",
    "HostKeyError",
    "ProtocolError",
    "CompressionError",
    "SearchError",
    "DataError",
]


class HwloopError(Exception):
    """Base class of every hwloop error; its message is one line meant for users."""


class ConfigError(HwloopError, ValueError):
    """A profile, spec or parameter is malformed or out of range."""


class WorkloadError(HwloopError, ValueError):
    """A model, layer spec or example input cannot be turned into workloads."""


class DeviceError(HwloopError):
    """A device cannot be created or used."""


class DeviceUnavailableError(DeviceError):
    """The device's hardware is not present on this machine (e.g. CUDA without a GPU)."""


class StoreError(HwloopError):
    """The measurement store cannot be opened, read or written."""


class PredictorError(HwloopError):
    """A predictor file or call is invalid."""


class NotFittedError(PredictorError):
    """A predictor was used before ``fit``."""


class RemoteError(HwloopError):
    """A remote device session failed (connection, authentication, deployment)."""


class HostKeyError(RemoteError):
    """An SSH host key is unknown or changed; hwloop never auto-accepts keys."""


class ProtocolError(RemoteError):
    """A message between host and agent is malformed, oversized or of another version."""


class CompressionError(HwloopError):
    """A compression plan cannot be applied to a model."""


class SearchError(HwloopError):
    """A search spec or run is invalid."""


class DataError(HwloopError):
    """A data set is missing, corrupt or malformed."""
