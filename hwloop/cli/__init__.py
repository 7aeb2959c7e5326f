"""The ``hwloop`` command line (typer + rich).

Every error a user can cause ends as one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

import typer

from hwloop.cli._app import app
from hwloop.errors import HwloopError

__all__ = ["app", "main"]


def _load_commands() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Usage-error base classes: typer >= 0.2x vendors click (``TyperException``); older typer uses click."""
    types: list[type[Exception]] = []
    base = getattr(typer.exceptions, "TyperException", None)
    if isinstance(base, type):
        types.append(base)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Warnings on the command line are one line each: ``warning: <message>``."""
    print(f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}", file=sys.stderr)


def fail(msg: str) -> None:
    """Print ``error: msg`` on stderr and exit 2."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwloop`` script; returns the exit status."""
    from hwloop.trust import preserved

    _load_commands()
    cmd = typer.main.get_command(app)
    notes: dict[str, str] = {}  # a command may leave "interrupted" (what was kept) for the Ctrl-C line
    try:
        with preserved(), warnings.catch_warnings():  # --allow-import lasts one command (in-process callers)
            warnings.showwarning = _show_warning
            rv = cmd.main(args=argv, prog_name="hwloop", standalone_mode=False, obj=notes)
    except HwloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except _usage_error_types() as e:
        print(f"error: {_usage_message(e, sys.argv[1:] if argv is None else argv)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # torch is the [torch] extra: predicting from layer files works without it
        if (e.name or "").split(".")[0] not in ("torch", "torch_pruning", "torchvision"):
            raise
        print(f"error: this command needs {e.name} (pip install 'hwloop[torch]'); without it hwloop predicts from "
              "layer descriptions only (hwloop predict LAYERS.json --predictor FILE)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if rv == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent Exit(130)
        print(f"interrupted; {notes['interrupted']}" if notes.get("interrupted") else "interrupted", file=sys.stderr)
    return rv if isinstance(rv, int) else 0


def _usage_message(e: Exception, argv: list[str]) -> str:
    """A usage error as one line, with the value the user gave for the offending option."""
    fmt = getattr(e, "format_message", None)
    msg = " ".join((fmt() if callable(fmt) else str(e)).split())
    param = getattr(e, "param", None)
    for opt in getattr(param, "opts", None) or []:
        for i, a in enumerate(argv):
            if a == opt and i + 1 < len(argv):
                return f"{msg} (got {argv[i + 1]!r})"
            if a.startswith(f"{opt}="):
                return f"{msg} (got {a.partition('=')[2]!r})"
    return msg


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
