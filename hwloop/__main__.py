"""``python -m hwloop``: the CLI; ``python -m hwloop agent`` needs only torch and numpy.

On a board, ``hwloop devices deploy`` installs hwloop without its host-side dependencies
(typer, pandas, ...), so the agent is started here without importing the CLI. Its options are
those of ``hwloop agent`` (hwloop/cli/agent.py).
"""

import sys


def _agent(argv: list[str]) -> int:
    import argparse

    from hwloop.agent import AgentLimits, run_agent
    from hwloop.errors import HwloopError

    ap = argparse.ArgumentParser(prog="hwloop agent", description="Serve measurement jobs from a host over "
                                 "stdin/stdout (started by the host over SSH); logs go to stderr.")
    ap.add_argument("--max-elements", type=int, default=64 * 1024 * 1024,
                    help="refuse jobs with a tensor above this many elements")
    ap.add_argument("--max-memory-mb", type=int, default=2048, help="refuse jobs whose working set exceeds this")
    ap.add_argument("--max-message-kb", type=int, default=1024, help="refuse protocol lines longer than this")
    ap.add_argument("--heartbeat-s", type=float, default=1.0, help="seconds between heartbeats")
    a = ap.parse_args(argv)
    try:
        limits = AgentLimits(max_elements=a.max_elements, max_memory_bytes=a.max_memory_mb * 1024 * 1024,
                             max_message_bytes=a.max_message_kb * 1024, heartbeat_s=a.heartbeat_s)
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_agent(limits)


if sys.argv[1:2] == ["agent"]:
    sys.exit(_agent(sys.argv[2:]))
try:
    from hwloop.cli import main
except ModuleNotFoundError as e:  # an agent-only install (hwloop devices deploy): no typer/rich/pandas here
    print(f"error: this hwloop install has only the agent's dependencies ({e.name} is missing); "
          "`python -m hwloop agent` is what runs here, the other commands run on the host", file=sys.stderr)
    sys.exit(2)
sys.exit(main())
