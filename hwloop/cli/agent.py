"""``hwloop agent``: the on-device side of remote sessions (JSON lines on stdin/stdout)."""

from __future__ import annotations

import typer

from hwloop.cli._app import app

__all__ = ["agent"]


@app.command("agent")
def agent(
    max_elements: int = typer.Option(64 * 1024 * 1024, help="refuse jobs with a tensor above this many elements"),
    max_memory_mb: int = typer.Option(2048, help="refuse jobs whose working set exceeds this many MiB"),
    max_message_kb: int = typer.Option(1024, help="refuse protocol lines longer than this many KiB"),
    heartbeat_s: float = typer.Option(1.0, help="seconds between heartbeats"),
) -> None:
    """Serve measurement jobs from a host over stdin/stdout (started by the host over SSH).

    Example: ``ssh board hwloop agent`` (the host's ``remote`` device does this for you).
    Only protocol lines go to stdout; logs go to stderr.
    """
    from hwloop.agent import AgentLimits, run_agent

    limits = AgentLimits(max_elements=max_elements, max_memory_bytes=max_memory_mb * 1024 * 1024,
                         max_message_bytes=max_message_kb * 1024, heartbeat_s=heartbeat_s)
    code = run_agent(limits)
    if code:
        raise typer.Exit(code)
