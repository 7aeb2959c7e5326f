"""Remote devices over SSH: the host side of ``hwloop agent`` (backend ``remote``).

* :class:`RemoteDevice` — the :class:`~hwloop.devices.base.Device` for a board reached over SSH.
* :class:`ConnectionConfig` — the ``[connection]`` table of a ``remote`` profile.
* host keys: :func:`fetch_host_key`, :func:`trust_host_key`, :func:`host_key_fingerprint`.
* :func:`deploy` — install this exact hwloop on the board and check the handshake.

paramiko is imported on first connection, not at import.

Example:
    >>> from hwloop.remote import ConnectionConfig
    >>> ConnectionConfig(host="orin.local", user="nvidia", port=2222).host_key_name
    '[orin.local]:2222'
"""

from hwloop.remote._ssh import (
    ConnectionConfig,
    ConnectionLost,
    default_known_hosts,
    fetch_host_key,
    host_key_fingerprint,
    known_host_key,
    trust_host_key,
)
from hwloop.remote.deploy import deploy
from hwloop.remote.device import AgentSession, RemoteDevice

__all__ = ["RemoteDevice", "AgentSession", "ConnectionConfig", "ConnectionLost", "default_known_hosts",
           "fetch_host_key", "host_key_fingerprint", "known_host_key", "trust_host_key", "deploy"]
