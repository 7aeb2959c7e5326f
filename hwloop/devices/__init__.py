"""Devices: the :class:`Device` protocol, its records, profiles and backends.

Backends live in submodules (``cpu``, ``cuda``, ``tvm``, ``asic``) and are imported
lazily by :func:`create_device`.
"""

from hwloop.devices.base import (
    EXEC_MODES,
    Device,
    DeviceFingerprint,
    MeasureRequest,
    MeasureResult,
    TimingConfig,
    summarize,
)
from hwloop.devices.profiles import BACKENDS, DeviceProfile, create_device, list_profiles, load_profile

__all__ = ["EXEC_MODES", "BACKENDS", "Device", "DeviceFingerprint", "DeviceProfile", "MeasureRequest",
           "MeasureResult", "TimingConfig", "create_device", "list_profiles", "load_profile", "summarize"]
