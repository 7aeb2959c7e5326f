"""The on-device agent: versioned JSON lines over stdin/stdout, measurement in a killable worker.

``hwloop agent`` runs on the board. The host (:mod:`hwloop.remote`) starts it over SSH and
talks to it in one JSON object per line; stdout carries nothing else (logs go to stderr).

Protocol version 1. Every message is ``{"v": 1, "type": T, ...}`` with exactly these fields:

=========== ====== ====================================================================
type        from   fields
=========== ====== ====================================================================
hello       host   ``protocol`` int, ``hwloop`` str, ``device`` {name, backend, options}
hello       agent  ``protocol``, ``hwloop``, ``capabilities``, ``fingerprint``, ``limits``,
                   ``pid``, ``warnings``
measure     host   ``jobs`` [{id, request}], ``timing`` (TimingConfig dict), ``job_timeout_s``
result      agent  ``id``, ``result`` (MeasureResult dict; NaN written as null)
heartbeat   both   agent: ``busy`` (job id or null), ``queued``, ``done``; host: nothing
error       agent  ``message``, ``id`` (job id or null), ``fatal`` bool
shutdown    host   nothing
bye         agent  ``done``
=========== ====== ====================================================================

A job is one :class:`~hwloop.devices.base.MeasureRequest`; a ``measure`` message batches
jobs and the agent streams one ``result`` per job as each finishes. A job the agent
refuses (unknown op or model, above the size limits, malformed) gets a ``result`` whose
``error`` says why; a job that runs past its timeout is cut by killing the worker process
and answered with a ``timeout`` error result. Malformed or oversized *messages* are
answered with an ``error`` message and dropped; the agent keeps running.

Example:
    >>> from hwloop.agent import encode_message, decode_message
    >>> line = encode_message({"v": 1, "type": "shutdown"})
    >>> decode_message(line, sender="host")["type"]
    'shutdown'
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import IO, Any, cast

from hwloop.errors import ProtocolError

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Agent",
    "AgentLimits",
    "check_request_limits",
    "decode_message",
    "encode_message",
    "run_agent",
    "run_worker",
    "validate_message",
]

from hwloop.agent_protocol import (  # noqa: F401  (re-exported; the wire protocol lives there)
    _LOCAL_BACKENDS,
    _NUM,
    _OPT_STR,
    _SCHEMA,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AgentLimits,
    _clean,
    _short,
    check_request_limits,
    decode_message,
    encode_message,
    validate_message,
)


def _worker_main(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The killable measuring process: imports first, then config line in, ``ready`` out, one job per line."""
    def send(obj: Mapping[str, Any]) -> None:
        stdout.write(encode_message(obj))
        stdout.flush()

    import torch  # imported before the config arrives: start-up overlaps the SSH handshake

    from hwloop.devices.base import MeasureRequest, MeasureResult, TimingConfig
    from hwloop.devices.profiles import BACKENDS

    line = stdin.readline()
    if not line:
        return 0
    cfg = json.loads(line)
    try:
        dev_cfg = cfg["device"]
        torch.manual_seed(0)
        from hwloop.trust import import_builtin

        cls = import_builtin(BACKENDS[dev_cfg["backend"]])  # a table entry, never a name from the message
        device = cls(name=dev_cfg["name"], **dict(dev_cfg.get("options", {})))
        fp = device.fingerprint().to_dict()
        fp.pop("key", None)
        warnings: list[str] = []
        from hwloop.devices import jetson

        if jetson.is_jetson():
            facts = jetson.read_jetson_facts()
            fp["identity"].update(facts.identity())
            fp["info"].update(facts.info())
            warnings += facts.warnings()
    except Exception as e:  # noqa: BLE001 - any start-up failure is reported as one line
        send({"fatal": f"backend {cfg.get('device', {}).get('backend')!r} cannot start: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        return 1
    send({"ready": True, "fingerprint": fp, "warnings": warnings})
    max_mem = int(cfg.get("max_memory_bytes", AgentLimits.max_memory_bytes))
    for line in stdin:
        job = json.loads(line)
        req = MeasureRequest.from_dict(job["request"])
        timing = TimingConfig.from_dict(job["timing"])
        try:
            n_par = sum(p.numel() * p.element_size() for p in req.model.build().parameters()) if req.model else 0
            if n_par > max_mem:
                res = MeasureResult.failure(req.key, timing, f"refused: model weights of {n_par} bytes exceed the "
                                                             f"agent limit max_memory_bytes={max_mem}")
            else:
                res = device.measure([req], timing)[0]
        except Exception as e:  # noqa: BLE001 - a failing job is data, never a dead worker
            res = MeasureResult.failure(req.key, timing, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        send({"id": job["id"], "result": res.to_dict()})
    return 0


def run_worker() -> int:
    """Entry point of the worker process (``python -m hwloop.agent --worker``)."""
    return _worker_main(sys.stdin.buffer, sys.stdout.buffer)


class _Worker:
    """One worker process and the thread that turns its stdout into events."""

    def __init__(self, gen: int, events: queue.Queue[tuple[str, Any, Any]]) -> None:
        self.gen = gen
        argv = [sys.executable, "-m", "hwloop.agent", "--worker"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.configured = False
        self.ready = False
        self.fingerprint: dict[str, Any] | None = None
        self.warnings: list[str] = []
        out = self.proc.stdout

        def pump() -> None:
            for line in out:
                events.put(("worker", gen, line))
            events.put(("worker_exit", gen, None))

        threading.Thread(target=pump, name=f"hwloop-worker-{gen}", daemon=True).start()

    def configure(self, device: Mapping[str, Any], limits: AgentLimits) -> None:
        """Send the device config; the worker answers ``ready`` with the fingerprint."""
        self.configured = True
        try:
            self.send({"device": dict(device), "max_memory_bytes": limits.max_memory_bytes})
        except (BrokenPipeError, OSError):
            pass  # died during start-up: its exit event restarts it

    def send(self, obj: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_message(obj))
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------------------- agent
def _log(msg: str) -> None:
    print(f"hwloop-agent[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Agent:
    """The protocol loop: reads host messages, queues jobs, runs them one at a time in a worker.

    Args:
        stdin: binary stream of host messages.
        stdout: binary stream the agent writes protocol lines to (nothing else).
        limits: what to refuse.
        spawn_early: start the worker before the host's hello so its imports overlap the handshake.

    Example:
        >>> import io
        >>> out = io.BytesIO()
        >>> Agent(io.BytesIO(b""), out).run()  # host closed at once: clean exit
        0
    """

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], limits: AgentLimits | None = None, *,
                 spawn_early: bool = False) -> None:
        self._spawn_early = spawn_early
        self.stdin = stdin
        self.stdout = stdout
        self.limits = limits or AgentLimits()
        self._events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._jobs: deque[tuple[str, dict[str, Any], dict[str, Any], float, str]] = deque()
        self._worker: _Worker | None = None
        self._gen = 0
        self._device: dict[str, Any] | None = None
        self._hello_pending = False
        self._current: tuple[str, float, float, dict[str, Any], str] | None = None  # id, start, limit, timing, key
        self._stop: int | None = None
        self._done = 0
        self._last_beat = 0.0

    # -- output
    def _send(self, msg: dict[str, Any]) -> None:
        msg = {"v": PROTOCOL_VERSION, **msg}
        validate_message(msg, sender="agent")
        self.stdout.write(encode_message(msg))
        self.stdout.flush()
        self._last_beat = time.monotonic()

    def _error(self, message: str, job_id: str | None = None, fatal: bool = False) -> None:
        _log(f"error: {message}")
        if fatal:
            self._stop = 1
        self._send({"type": "error", "message": message, "id": job_id, "fatal": fatal})

    def _fail(self, job_id: str, key: str, timing: Mapping[str, Any], message: str) -> None:
        res = {"request_key": key, "timing": dict(timing), "error": message, "samples_ms": [], "extra": {}}
        self._send({"type": "result", "id": job_id, "result": _full_failure(res)})
        self._done += 1

    # -- input
    def _read_stdin(self) -> None:
        limit = self.limits.max_message_bytes
        while True:
            line = self.stdin.readline(limit + 1)
            if not line:
                self._events.put(("eof", None, None))
                return
            if len(line) > limit and not line.endswith(b"\n"):
                n = len(line)
                while line and not line.endswith(b"\n"):  # discard the rest of the oversized line
                    line = self.stdin.readline(65536)
                    n += len(line)
                self._events.put(("oversized", n, None))
                continue
            self._events.put(("line", line, None))

    def _start_worker(self) -> None:
        self._gen += 1
        self._worker = _Worker(self._gen, self._events)
        if self._device is not None:
            self._worker.configure(self._device, self.limits)

    def _kill_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    # -- handlers
    def _on_host(self, msg: dict[str, Any]) -> bool:
        kind = msg["type"]
        if kind == "shutdown":
            self._kill_worker()
            self._send({"type": "bye", "done": self._done})
            return False
        if kind == "heartbeat":
            self._beat()
        elif kind == "hello":
            self._on_hello(msg)
        elif kind == "measure":
            self._on_measure(msg)
        return True

    def _on_hello(self, msg: dict[str, Any]) -> None:
        from hwloop import __version__

        if msg["protocol"] != PROTOCOL_VERSION or msg["hwloop"] != __version__:
            self._error(f"version mismatch: host runs hwloop {msg['hwloop']} (protocol {msg['protocol']}), this "
                        f"board runs hwloop {__version__} (protocol {PROTOCOL_VERSION}); run `hwloop devices "
                        f"deploy` to install the host's version", fatal=True)
            return
        dev = msg["device"]
        name, backend, options = dev.get("name"), dev.get("backend"), dev.get("options", {})
        if set(dev) - {"name", "backend", "options"} or not isinstance(name, str) or not isinstance(options, dict):
            self._error(f"hello device {_short(dev)} must be {{name: str, backend: str, options: object}}",
                        fatal=True)
            return
        if backend not in _LOCAL_BACKENDS:
            self._error(f"backend {backend!r} cannot run on the agent; allowed: {', '.join(_LOCAL_BACKENDS)}",
                        fatal=True)
            return
        if self._device is not None:
            self._error("hello was already received; one session per agent", fatal=False)
            return
        self._device = {"name": name, "backend": backend, "options": options}
        self._hello_pending = True
        if self._worker is None:
            self._start_worker()
        else:
            self._worker.configure(self._device, self.limits)

    def _on_measure(self, msg: dict[str, Any]) -> None:
        from hwloop.devices.base import TimingConfig
        from hwloop.errors import HwloopError

        if self._device is None:
            self._error("measure before hello; send hello first")
            return
        try:
            timing = TimingConfig.from_dict(msg["timing"]).to_dict()
        except (HwloopError, TypeError) as e:
            self._error(f"measure timing is invalid: {e}")
            return
        timeout = float(msg["job_timeout_s"]) or (timing["timeout_s"] * 2 + 30 if timing["timeout_s"]
                                                 else self.limits.default_job_timeout_s)
        for job in msg["jobs"]:
            jid = job.get("id") if isinstance(job, dict) else None
            if not isinstance(jid, str) or set(job) != {"id", "request"}:
                self._error(f"job {_short(job)} must be {{id: str, request: object}}")
                continue
            if len(self._jobs) >= self.limits.max_queue:
                self._fail(jid, "", timing, f"queue full: the agent holds at most {self.limits.max_queue} jobs")
                continue
            try:
                req = check_request_limits(job["request"], self.limits)
            except (HwloopError, TypeError, KeyError, AttributeError) as e:
                key = job["request"].get("key", "") if isinstance(job["request"], dict) else ""
                self._fail(jid, str(key), timing, f"refused: {str(e).splitlines()[0] if str(e) else e!r}")
                continue
            self._jobs.append((jid, req.to_dict(), timing, timeout, req.key))

    def _on_worker(self, gen: int, line: bytes) -> None:
        w = self._worker
        if w is None or gen != w.gen:
            return
        msg = json.loads(line)
        if not w.ready:
            if "fatal" in msg:
                self._error(str(msg["fatal"]), fatal=True)
                self._kill_worker()
                self._device = None
                return
            w.ready, w.fingerprint, w.warnings = True, msg["fingerprint"], list(msg.get("warnings", []))
            if self._hello_pending:
                self._hello_pending = False
                self._send_hello(w)
            return
        if self._current is not None and msg.get("id") == self._current[0]:
            self._send({"type": "result", "id": msg["id"], "result": msg["result"]})
            self._done += 1
            self._current = None

    def _send_hello(self, w: _Worker) -> None:
        import hwloop
        from hwloop import __version__
        from hwloop.devices.base import EXEC_MODES, REQUEST_KINDS
        from hwloop.models import BUILTIN_MODELS
        from hwloop.workload import OP_KINDS

        for warning in w.warnings:
            _log(f"warning: {warning}")
        caps = {"kinds": list(REQUEST_KINDS), "ops": list(OP_KINDS), "modes": list(EXEC_MODES),
                "models": list(BUILTIN_MODELS), "backend": self._device["backend"] if self._device else "",
                "hwloop_path": os.path.dirname(os.path.abspath(hwloop.__file__))}
        self._send({"type": "hello", "protocol": PROTOCOL_VERSION, "hwloop": __version__, "capabilities": caps,
                    "fingerprint": w.fingerprint or {}, "limits": self.limits.to_dict(), "pid": os.getpid(),
                    "warnings": w.warnings})

    def _on_worker_exit(self, gen: int) -> None:
        w = self._worker
        if w is None or gen != w.gen:
            return
        code = w.proc.wait()
        self._worker = None
        if self._current is not None:
            jid, _, _, timing, key = self._current
            self._current = None
            self._fail(jid, key, timing, f"worker died with exit code {code} while measuring")
        if self._device is not None and self._stop is None:
            _log(f"worker exited with code {code}; restarting it")
            self._start_worker()

    def _beat(self) -> None:
        busy = self._current[0] if self._current else None
        self._send({"type": "heartbeat", "busy": busy, "queued": len(self._jobs), "done": self._done})

    def _tick(self) -> None:
        now = time.monotonic()
        if self._current is not None and now - self._current[1] > self._current[2]:
            jid, _, limit, timing, key = self._current
            _log(f"job {jid} ran past {limit:g} s; killing the worker")
            self._current = None
            self._kill_worker()
            self._fail(jid, key, timing, f"timeout: the job ran past its limit of {limit:g} s and was cut")
            self._start_worker()
        w = self._worker
        if w is not None and w.ready and self._current is None and self._jobs:
            jid, req, timing, limit, key = self._jobs.popleft()
            self._current = (jid, time.monotonic(), limit, timing, key)
            try:
                w.send({"id": jid, "request": req, "timing": timing})
            except (BrokenPipeError, OSError):
                pass  # the worker died; its exit event fails the job
        if self._device is not None and now - self._last_beat >= self.limits.heartbeat_s:
            self._beat()

    def run(self) -> int:
        """Serve until ``shutdown`` or end of input; returns the process exit status."""
        threading.Thread(target=self._read_stdin, name="hwloop-agent-stdin", daemon=True).start()
        if self._spawn_early:
            self._start_worker()
        try:
            while True:
                try:
                    kind, a, b = self._events.get(timeout=min(0.2, self.limits.heartbeat_s))
                except queue.Empty:
                    kind, a, b = "tick", None, None
                if kind == "eof":
                    return 0
                if kind == "oversized":
                    self._error(f"message of {a} bytes exceeds the limit of {self.limits.max_message_bytes} bytes")
                elif kind == "line":
                    try:
                        msg = decode_message(a, sender="host", max_bytes=self.limits.max_message_bytes)
                    except ProtocolError as e:
                        self._error(str(e))
                    else:
                        if not self._on_host(msg):
                            return 0
                elif kind == "worker":
                    self._on_worker(a, b)
                elif kind == "worker_exit":
                    self._on_worker_exit(a)
                if self._stop is not None:
                    return self._stop
                self._tick()
        except BrokenPipeError:
            _log("host went away")
            return 0
        finally:
            self._kill_worker()


def _full_failure(res: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"latency_ms": None, "min_ms": None, "max_ms": None, "iqr_ms": None, "cv": None, "unstable": False,
            "attempts": 1, "per_layer_ms": {}}
    return {**base, **res}


def run_agent(limits: AgentLimits | None = None) -> int:
    """Run the agent on this process's stdin/stdout (what ``hwloop agent`` calls)."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr, never into the protocol
    code = Agent(sys.stdin.buffer, out, limits, spawn_early=True).run()
    out.flush()
    sys.stderr.flush()
    os._exit(code)  # the stdin reader thread may still block in read(); leave without joining it


if __name__ == "__main__":  # pragma: no cover - process entry points
    if sys.argv[1:] == ["--worker"]:
        sys.stdout = sys.stderr
        assert sys.__stdout__ is not None
        raise SystemExit(_worker_main(sys.stdin.buffer, cast("IO[bytes]", sys.__stdout__.buffer)))
    raise SystemExit(run_agent())
