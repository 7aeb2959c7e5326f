"""``hwloop search methods``: the registered compression methods, one line each (name and summary).

A separate module that registers on the ``search`` sub-app (see :mod:`hwloop.cli._app`); the methods
come from :data:`hwloop.methods.METHODS`.
"""

from __future__ import annotations

import json

import typer

from hwloop.cli._app import search_app

__all__ = ["methods"]


@search_app.command("methods")
def methods(
    as_json: bool = typer.Option(False, "--json", help="print JSON (name, class, summary, config defaults)"),
) -> None:
    """List the compression methods, one line each (the names a search spec's method table may use)."""
    from hwloop.methods import METHODS, list_methods, method_class

    rows = list_methods()
    if as_json:
        typer.echo(json.dumps([{"name": n, "class": METHODS[n], "summary": s,
                                "config": method_class(n).config_class().to_dict()} for n, s in rows], indent=2))
        return
    width = max((len(n) for n, _ in rows), default=0)
    for name, summary in rows:
        typer.echo(f"{name:<{width}}  {summary}")
