"""The agent as a real process (``python -m hwloop agent``) spoken to over pipes, plus schema checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from conftest import REPO
from hwloop import __version__
from hwloop.agent import AgentLimits, check_request_limits, decode_message, encode_message, validate_message
from hwloop.devices.base import MeasureRequest, MeasureResult, TimingConfig
from hwloop.errors import ConfigError, ProtocolError
from hwloop.workload import LayerSpec

pytestmark = pytest.mark.timeout(120)
TIMING = TimingConfig(warmup=1, repeats=3, number=2, max_retries=0).to_dict()
SPEC = LayerSpec("conv2d", (1, 4, 8, 8), out_channels=4, kernel=3, padding=1)


class AgentProc:
    """A live agent process; every stdout line must be a valid protocol message."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", "hwloop", "agent", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def send(self, msg: dict[str, Any] | bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(msg if isinstance(msg, bytes) else encode_message({"v": 1, **msg}))
        self.p.stdin.flush()

    def recv(self, *, skip_heartbeats: bool = True) -> dict[str, Any]:
        assert self.p.stdout is not None
        while True:
            line = self.p.stdout.readline()
            assert line, f"agent closed stdout; stderr: {self.p.stderr.read().decode() if self.p.stderr else ''}"
            msg = decode_message(line, sender="agent")  # raises on anything that is not protocol
            if not (skip_heartbeats and msg["type"] == "heartbeat"):
                return msg

    def hello(self, version: str = __version__, backend: str = "cpu") -> dict[str, Any]:
        self.send({"type": "hello", "protocol": 1, "hwloop": version,
                   "device": {"name": "b", "backend": backend, "options": {"threads": 1}}})
        return self.recv()

    def results(self, n: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        while len(out) < n:
            m = self.recv()
            assert m["type"] == "result", m
            out[m["id"]] = m["result"]
        return out

    def close(self) -> int:
        if self.p.poll() is None:
            self.send({"type": "shutdown"})
            bye = self.recv()
            assert bye["type"] == "bye"
        return self.p.wait(timeout=20)


@pytest.fixture()
def agent():  # type: ignore[no-untyped-def]
    a = AgentProc()
    yield a
    if a.p.poll() is None:
        a.p.kill()
        a.p.wait()


def test_handshake_measure_and_clean_shutdown(agent: AgentProc) -> None:
    hello = agent.hello()
    assert hello["type"] == "hello" and hello["hwloop"] == __version__ and hello["protocol"] == 1
    assert hello["fingerprint"]["backend"] == "cpu" and hello["fingerprint"]["identity"]["threads"] == 1
    assert "conv2d" in hello["capabilities"]["ops"] and hello["limits"]["max_message_bytes"] == 1 << 20
    req = MeasureRequest.for_layer(SPEC)
    agent.send({"type": "measure", "timing": TIMING, "job_timeout_s": 0,
                "jobs": [{"id": "a", "request": req.to_dict()}, {"id": "b", "request": req.to_dict()}]})
    res = {k: MeasureResult.from_dict(v) for k, v in agent.results(2).items()}
    assert all(r.ok and r.request_key == req.key and len(r.samples_ms) == 3 for r in res.values())
    assert agent.close() == 0


def test_unknown_op_foreign_model_and_oversized_jobs_get_error_results(agent: AgentProc) -> None:
    agent.hello()
    ok = MeasureRequest.for_layer(SPEC).to_dict()
    jobs = [
        {"id": "op", "request": {"kind": "layer", "layer": {"op": "fft", "in_shape": [1, 8]}, "model": None}},
        {"id": "model", "request": {"kind": "model", "layer": None, "model": {"name": "os:system"}}},
        {"id": "big", "request": MeasureRequest.for_layer(LayerSpec("linear", (1, 1 << 27), out_channels=2))
            .to_dict()},
        {"id": "ok", "request": ok},
    ]
    agent.send({"type": "measure", "timing": TIMING, "job_timeout_s": 0, "jobs": jobs})
    res = agent.results(4)
    assert "op 'fft' is unknown" in res["op"]["error"]
    assert "not allowed on the agent" in res["model"]["error"]
    assert "max_elements" in res["big"]["error"]
    assert res["ok"]["error"] is None and res["ok"]["latency_ms"] > 0
    assert agent.close() == 0


def test_malformed_and_oversized_messages_are_answered_and_survived(agent: AgentProc) -> None:
    agent.hello()
    agent.send(b"{not json\n")
    e1 = agent.recv()
    agent.send({"type": "measure", "jobs": [], "timing": TIMING})  # lacks job_timeout_s
    e2 = agent.recv()
    agent.send({"type": "launch_missiles"})
    e3 = agent.recv()
    agent.send(b'{"v": 1, "type": "heartbeat", "pad": "' + b"x" * (2 << 20) + b'"}\n')
    e4 = agent.recv()
    assert [e["type"] for e in (e1, e2, e3, e4)] == ["error"] * 4 and not any(e["fatal"] for e in (e1, e2, e3, e4))
    assert "not JSON" in e1["message"] and "job_timeout_s" in e2["message"]
    assert "launch_missiles" in e3["message"] and "exceeds the limit" in e4["message"]
    agent.send({"type": "measure", "timing": TIMING, "job_timeout_s": 0,
                "jobs": [{"id": "after", "request": MeasureRequest.for_layer(SPEC).to_dict()}]})
    assert agent.results(1)["after"]["error"] is None  # still serving
    assert agent.close() == 0


def test_version_mismatch_is_fatal_and_named(agent: AgentProc) -> None:
    err = agent.hello(version="0.0.1")
    assert err["type"] == "error" and err["fatal"] and "version mismatch" in err["message"]
    assert "0.0.1" in err["message"] and __version__ in err["message"]
    assert agent.p.wait(timeout=20) == 1


def test_unusable_backend_is_fatal(agent: AgentProc) -> None:
    err = agent.hello(backend="remote")
    assert err["type"] == "error" and err["fatal"] and "cannot run on the agent" in err["message"]


def test_hung_job_is_cut_and_the_agent_goes_on() -> None:
    agent = AgentProc("--heartbeat-s", "0.2")
    agent.hello()
    slow = MeasureRequest.for_layer(LayerSpec("conv2d", (1, 64, 128, 128), out_channels=64, kernel=7, padding=3))
    t = TimingConfig(warmup=0, repeats=500, number=1, max_retries=0, timeout_s=0).to_dict()
    agent.send({"type": "measure", "timing": t, "job_timeout_s": 1.0,
                "jobs": [{"id": "slow", "request": slow.to_dict()}]})
    t0 = time.monotonic()
    beats = 0
    while True:
        m = agent.recv(skip_heartbeats=False)
        if m["type"] == "heartbeat":
            beats += m["busy"] == "slow"
            continue
        break
    assert m["type"] == "result" and m["result"]["error"].startswith("timeout")
    assert m["result"]["request_key"] == slow.key and time.monotonic() - t0 < 15 and beats >= 1
    agent.send({"type": "measure", "timing": TIMING, "job_timeout_s": 0,
                "jobs": [{"id": "next", "request": MeasureRequest.for_layer(SPEC).to_dict()}]})
    assert agent.results(1)["next"]["error"] is None
    assert agent.close() == 0


def test_measure_before_hello_and_eof_exit_cleanly() -> None:
    a = AgentProc()
    a.send({"type": "measure", "timing": TIMING, "job_timeout_s": 0, "jobs": []})
    assert "before hello" in a.recv()["message"]
    assert a.p.stdin is not None
    a.p.stdin.close()
    assert a.p.wait(timeout=20) == 0


# ----------------------------------------------------------------------------- schema (in process)
def test_schema_checks_fields_types_and_version() -> None:
    good = {"v": 1, "type": "result", "id": "x", "result": {}}
    assert validate_message(good, sender="agent") is good
    with pytest.raises(ProtocolError, match="version 2"):
        validate_message({**good, "v": 2}, sender="agent")
    with pytest.raises(ProtocolError, match="not allowed from the host"):
        validate_message(good, sender="host")
    with pytest.raises(ProtocolError, match="unknown field"):
        validate_message({**good, "extra": 1}, sender="agent")
    with pytest.raises(ProtocolError, match="'id'=5 must be str"):
        validate_message({**good, "id": 5}, sender="agent")
    with pytest.raises(ProtocolError, match="must be bool"):
        validate_message({"v": 1, "type": "error", "message": "m", "id": None, "fatal": 1}, sender="agent")
    with pytest.raises(ProtocolError, match="exceeds the limit of 10 bytes"):
        decode_message(b'{"v": 1, "type": "shutdown"}', sender="host", max_bytes=10)
    line = encode_message({"v": 1, "type": "result", "id": "x", "result": {"latency_ms": float("nan")}})
    assert json.loads(line)["result"]["latency_ms"] is None  # strict JSON on the wire


def test_limits_are_enforced_before_anything_is_built() -> None:
    lim = AgentLimits(max_elements=1000, max_memory_bytes=10_000)
    ok = MeasureRequest.for_layer(LayerSpec("linear", (1, 10), out_channels=10))
    assert check_request_limits(ok.to_dict(), lim).key == ok.key
    with pytest.raises(ConfigError, match="input tensor of 2000 elements"):
        check_request_limits(MeasureRequest.for_layer(LayerSpec("linear", (2, 1000), out_channels=1)).to_dict(), lim)
    with pytest.raises(ConfigError, match="max_memory_bytes"):
        check_request_limits(MeasureRequest.for_layer(LayerSpec("linear", (1, 30), out_channels=30)).to_dict(),
                             AgentLimits(max_elements=1000, max_memory_bytes=1000))
    with pytest.raises(ConfigError, match="must be a positive integer"):
        AgentLimits(max_elements=0)
