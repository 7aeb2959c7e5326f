"""``RemoteDevice``: the host side of a board reached over SSH (backend ``remote``).

One object holds one SSH connection and one agent session; a lock makes it safe to share
between threads (calls are serialised), and a farm uses one object per board. Jobs go out
in batches (two in flight), results stream back one per job, and :meth:`measure_iter`
yields each the moment it arrives so the sweep runner can store it at once. A dropped link,
a killed agent or a rebooted board is met with reconnects (exponential backoff) that resend
only the jobs still unanswered.

Example (needs a board; see docs/remote.md)::

    from hwloop.devices import create_device
    dev = create_device("jetson-orin")            # backend = "remote"
    print(dev.fingerprint().identity)             # the board's own fingerprint
    for req, res in dev.measure_iter(requests):   # results as they finish
        store.add(dev.fingerprint(), req, res)
    dev.close()
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hwloop.agent import PROTOCOL_VERSION, decode_message, encode_message
from hwloop.devices.base import DeviceFingerprint, MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import ConfigError, HwloopError, ProtocolError, RemoteError
from hwloop.remote._ssh import ConnectionConfig, ConnectionLost, connect_ssh

__all__ = ["RemoteDevice", "AgentSession"]

log = logging.getLogger("hwloop.remote")
_MAX_MESSAGE_BYTES = 1024 * 1024


class AgentSession:
    """One SSH connection running one agent: send messages, receive events.

    Events from :meth:`next_event` are ``(kind, value)`` with kind ``msg`` (a validated agent
    message), ``eof`` (the agent's output ended; value = exit status or None) or ``oversized``.
    """

    def __init__(self, cfg: ConnectionConfig, name: str, *, agent_command: tuple[str, ...] | None = None) -> None:
        self.cfg = cfg
        self.client = connect_ssh(cfg, name)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        try:
            transport = self.client.get_transport()
            self.chan = transport.open_session(timeout=cfg.connect_timeout_s)
            self.chan.exec_command(cfg.remote_command(agent_command))
        except Exception as e:  # noqa: BLE001 - paramiko raises SSHException/OSError/EOFError here
            self.client.close()
            raise ConnectionLost(f"cannot start the agent on {cfg.address}: {type(e).__name__}: {e}") from e
        threading.Thread(target=self._pump_out, name="hwloop-remote-out", daemon=True).start()
        threading.Thread(target=self._pump_err, name="hwloop-remote-err", daemon=True).start()
        self.hello: dict[str, Any] = {}

    def _pump_out(self) -> None:
        buf = b""
        try:
            while True:
                data = self.chan.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._events.put(("line", line))
                if len(buf) > _MAX_MESSAGE_BYTES:
                    self._events.put(("oversized", len(buf)))
                    return
        except Exception as e:  # noqa: BLE001 - any read failure means the link is gone
            self._events.put(("eof", f"{type(e).__name__}: {e}"))
            return
        status = self.chan.recv_exit_status() if self.chan.exit_status_ready() else None
        self._events.put(("eof", status))

    def _pump_err(self) -> None:
        buf = b""
        try:
            while True:
                data = self.chan.recv_stderr(65536)
                if not data:
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    text = ln.decode(errors="replace")
                    self.stderr_tail.append(text)
                    log.debug("agent: %s", text)
                buf = buf[-65536:]
        except Exception:  # noqa: BLE001 - stderr is best effort
            return

    def send(self, msg: Mapping[str, Any]) -> None:
        try:
            self.chan.sendall(encode_message({"v": PROTOCOL_VERSION, **msg}))
        except Exception as e:  # noqa: BLE001 - socket errors of every kind
            raise ConnectionLost(f"sending to the agent on {self.cfg.address} failed: {e}") from e

    def next_event(self, timeout: float) -> tuple[str, Any]:
        """The next agent message; raises :class:`ConnectionLost` on silence/EOF, ProtocolError on garbage."""
        try:
            kind, val = self._events.get(timeout=timeout)
        except queue.Empty:
            raise ConnectionLost(f"no message from the agent on {self.cfg.address} for {timeout:g} s") from None
        if kind == "line":
            return "msg", decode_message(val, sender="agent", max_bytes=_MAX_MESSAGE_BYTES)
        if kind == "oversized":
            raise ProtocolError(f"the agent on {self.cfg.address} sent a message of more than {val} bytes; "
                                f"the limit is {_MAX_MESSAGE_BYTES}")
        return "eof", val

    def stderr_text(self) -> str:
        return " | ".join(x for x in list(self.stderr_tail)[-3:] if x.strip())

    def handshake(self, name: str, backend: Mapping[str, Any]) -> dict[str, Any]:
        """Send hello, wait for the agent's hello; version mismatches are a :class:`RemoteError`."""
        from hwloop import __version__

        self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "hwloop": __version__,
                   "device": {"name": name, "backend": backend["name"], "options": dict(backend["options"])}})
        deadline = time.monotonic() + self.cfg.handshake_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteError(f"the agent on {self.cfg.address} did not answer hello within "
                                  f"{self.cfg.handshake_timeout_s:g} s ({self.stderr_text() or 'no stderr'})")
            try:
                kind, msg = self.next_event(left)
            except ConnectionLost:
                continue
            if kind == "eof":
                time.sleep(0.2)  # let stderr arrive
                raise RemoteError(f"the agent command `{self.cfg.remote_command()}` on {self.cfg.address} ended "
                                  f"(status {msg}) before its hello: {self.stderr_text() or 'no stderr'}")
            if msg["type"] == "error":
                raise RemoteError(f"agent on {self.cfg.address}: {msg['message']}")
            if msg["type"] == "hello":
                break
        if msg["protocol"] != PROTOCOL_VERSION or msg["hwloop"] != __version__:
            raise RemoteError(f"version mismatch: the host runs hwloop {__version__} (protocol {PROTOCOL_VERSION}) "
                              f"but the agent on {self.cfg.address} runs {msg['hwloop']} (protocol "
                              f"{msg['protocol']}); run `hwloop devices deploy {name}`")
        for w in msg["warnings"]:
            log.warning("%s: %s", name, w)
        self.hello = msg
        return msg

    def close(self, *, polite: bool = True) -> None:
        if polite:
            try:
                self.send({"type": "shutdown"})
                end = time.monotonic() + 2.0
                while time.monotonic() < end:
                    kind, msg = self.next_event(max(0.05, end - time.monotonic()))
                    if kind == "eof" or msg.get("type") == "bye":
                        break
            except HwloopError:
                pass
        self.client.close()


class RemoteDevice:
    """A board reached over SSH, measured by ``hwloop agent`` with the board's local backend.

    Args:
        name: the device's (profile's) name.
        timing: default :class:`TimingConfig`.
        connection: the ``[connection]`` table; see :class:`~hwloop.remote.ConnectionConfig`.

    Example:
        >>> dev = RemoteDevice("orin", connection={"host": "orin.local", "user": "nvidia"})
        >>> dev.connection.known_hosts_path.name   # nothing is opened until first use
        'known_hosts'
    """

    backend = "remote"

    def __init__(self, name: str, timing: TimingConfig | None = None, connection: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        if options:
            raise ConfigError(f"remote device {name!r}: unknown option(s) {sorted(options)}; put board settings "
                              "under [connection] (backend = {name = ..., options = {...}})")
        if not connection:
            raise ConfigError(f"remote device {name!r} needs a [connection] table with at least 'host'")
        self.name = name
        self.timing = timing or TimingConfig()
        self.connection = connection if isinstance(connection, ConnectionConfig) else \
            ConnectionConfig.from_dict(connection)
        self._lock = threading.RLock()
        self._session: AgentSession | None = None
        self._fp: DeviceFingerprint | None = None
        self._calls = 0
        self.reconnects = 0

    # ------------------------------------------------------------------ session
    def _open(self) -> AgentSession:
        s = AgentSession(self.connection, self.name)
        try:
            hello = s.handshake(self.name, self.connection.backend)
        except BaseException:
            s.close(polite=False)
            raise
        fp = self._to_fingerprint(hello["fingerprint"])
        if self._fp is not None and fp.key != self._fp.key:
            s.close()
            raise RemoteError(f"device {self.name!r} came back with another fingerprint ({fp.key}, was "
                              f"{self._fp.key}: identity {dict(fp.identity)}); start a new sweep for it")
        self._fp = fp
        self._session = s
        return s

    def _to_fingerprint(self, d: Mapping[str, Any]) -> DeviceFingerprint:
        try:
            info = {**dict(d.get("info", {})), "via": "ssh", "ssh_host": self.connection.host}
            return DeviceFingerprint(name=self.name, backend=str(d["backend"]), identity=dict(d["identity"]),
                                     info=info)
        except (KeyError, TypeError, ValueError, HwloopError) as e:
            raise ProtocolError(f"agent on {self.connection.address} sent a malformed fingerprint: {e}") from e

    def _connected(self) -> AgentSession:
        return self._session if self._session is not None else self._open()

    def _drop(self, polite: bool = False) -> None:
        if self._session is not None:
            s, self._session = self._session, None
            s.close(polite=polite)

    @property
    def agent_info(self) -> dict[str, Any]:
        """The agent's hello (pid, versions, capabilities, limits) of the current session ({} if none)."""
        with self._lock:
            return dict(self._session.hello) if self._session else {}

    # ------------------------------------------------------------------ Device protocol
    def fingerprint(self) -> DeviceFingerprint:
        """The board's fingerprint from the handshake (its backend, ``via: ssh`` in info)."""
        with self._lock:
            if self._fp is None:
                self._with_retries(self._connected)
            assert self._fp is not None
            return self._fp

    def measure(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None
                ) -> list[MeasureResult]:
        """One result per request, in order (see :meth:`measure_iter`)."""
        reqs = list(requests)
        out = {i: res for i, _, res in self._stream(reqs, timing or self.timing)}
        missing = [i for i in range(len(reqs)) if i not in out]
        if missing:  # _stream must answer every job or raise; never hand back a short list
            raise RemoteError(f"device {self.name!r}: {len(missing)} of {len(reqs)} jobs got no result")
        return [out[i] for i in range(len(reqs))]

    def _with_retries(self, fn: Any) -> Any:
        failures = 0
        while True:
            try:
                return fn()
            except ConnectionLost as e:
                failures += 1
                self._drop()
                if failures > self.connection.max_reconnects:
                    raise RemoteError(f"device {self.name!r}: giving up after {failures} failed connection "
                                      f"attempts: {e}") from e
                self._backoff(failures, e)

    def _backoff(self, failures: int, why: Exception) -> None:
        delay = min(self.connection.backoff_max_s, self.connection.backoff_s * 2 ** (failures - 1))
        log.warning("%s: %s; reconnecting in %.1f s (attempt %d/%d)", self.name, why, delay, failures,
                    self.connection.max_reconnects)
        self.reconnects += 1
        time.sleep(delay)

    def measure_iter(self, requests: Sequence[MeasureRequest], timing: TimingConfig | None = None
                     ) -> Iterator[tuple[MeasureRequest, MeasureResult]]:
        """Yield ``(request, result)`` as results arrive (completion order), each request exactly once.

        Lost links are reconnected with backoff (``max_reconnects`` attempts without progress);
        only unanswered jobs are resent. Raises :class:`RemoteError` when the board stays away.
        """
        for _, req, res in self._stream(list(requests), timing or self.timing):
            yield req, res

    def _stream(self, reqs: list[MeasureRequest], t: TimingConfig) -> Iterator[tuple[int, MeasureRequest, MeasureResult]]:
        with self._lock:
            self._calls += 1
            prefix = f"c{self._calls}."
            todo: collections.deque[int] = collections.deque(range(len(reqs)))
            outstanding: dict[str, int] = {}
            failures = 0
            try:
                while todo or outstanding:
                    try:
                        s = self._connected()
                        self._fill(s, reqs, t, todo, outstanding, prefix)
                        if not outstanding:
                            continue
                        kind, msg = s.next_event(self.connection.heartbeat_timeout_s)
                        if kind == "eof":
                            raise ConnectionLost(f"the agent on {self.connection.address} went away (status {msg}"
                                                 f"{'; ' + s.stderr_text() if s.stderr_text() else ''})")
                        item = self._on_message(msg, reqs, outstanding)
                        if item is not None:
                            failures = 0
                            yield item
                    except ConnectionLost as e:
                        self._drop()
                        todo.extendleft(sorted(outstanding.values(), reverse=True))
                        outstanding.clear()
                        failures += 1
                        if failures > self.connection.max_reconnects:
                            raise RemoteError(f"device {self.name!r}: giving up after {failures} reconnects without "
                                              f"progress ({len(todo)} jobs unmeasured): {e}") from e
                        self._backoff(failures, e)
            finally:
                if todo or outstanding:  # abandoned or failed: the agent's queue is stale
                    self._drop()

    def _fill(self, s: AgentSession, reqs: list[MeasureRequest], t: TimingConfig, todo: collections.deque[int],
              outstanding: dict[str, int], prefix: str) -> None:
        bs = self.connection.batch_size
        while todo and len(outstanding) < 2 * bs:
            batch = [todo.popleft() for _ in range(min(bs, len(todo)))]
            jobs = [{"id": f"{prefix}{i}", "request": reqs[i].to_dict()} for i in batch]
            msg = {"type": "measure", "jobs": jobs, "timing": t.to_dict(), "job_timeout_s": self.connection.job_timeout_s}
            if len(encode_message({"v": PROTOCOL_VERSION, **msg})) > _MAX_MESSAGE_BYTES:
                if len(batch) == 1:
                    raise ProtocolError(f"request {reqs[batch[0]].key} does not fit in one protocol message "
                                        f"({_MAX_MESSAGE_BYTES} bytes)")
                half = len(batch) // 2
                todo.extendleft(reversed(batch))
                self.connection = dataclasses.replace(self.connection, batch_size=max(1, half))
                bs = self.connection.batch_size
                continue
            try:
                s.send(msg)
            except BaseException:  # a lost link mid-send: the batch is still to do, not lost
                todo.extendleft(reversed(batch))
                raise
            outstanding.update({f"{prefix}{i}": i for i in batch})

    def _on_message(self, msg: dict[str, Any], reqs: list[MeasureRequest], outstanding: dict[str, int]
                    ) -> tuple[int, MeasureRequest, MeasureResult] | None:
        kind = msg["type"]
        if kind == "heartbeat":
            return None
        if kind == "error":
            raise (RemoteError if msg["fatal"] else ProtocolError)(
                f"agent on {self.connection.address} reports: {msg['message']}")
        if kind != "result":
            raise ProtocolError(f"unexpected {kind!r} message from the agent on {self.connection.address}")
        idx = outstanding.pop(msg["id"], None)
        if idx is None:
            log.warning("%s: ignoring a result for unknown job %s", self.name, msg["id"])
            return None
        req = reqs[idx]
        try:
            res = MeasureResult.from_dict(msg["result"])
        except (HwloopError, KeyError, TypeError, ValueError) as e:
            outstanding[msg["id"]] = idx
            raise ProtocolError(f"agent on {self.connection.address} sent a malformed result for job "
                                f"{msg['id']}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if not res.request_key and res.error:
            res = dataclasses.replace(res, request_key=req.key)
        if res.request_key != req.key:
            raise ProtocolError(f"agent on {self.connection.address} answered job {msg['id']} with request key "
                                f"{res.request_key}, expected {req.key}")
        return idx, req, res

    def close(self) -> None:
        """Shut the agent down and close the connection (a later call reconnects)."""
        with self._lock:
            self._drop(polite=True)

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteDevice({self.name!r}, {self.connection.address})"
