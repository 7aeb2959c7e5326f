"""The typer application objects every command module attaches to.

Each ``hwloop/cli/<command>.py`` imports the app (or sub-app) it extends from here and
decorates its functions; :mod:`hwloop.cli` imports every such module, so a new command
is one new file.
"""

from __future__ import annotations

import typer

app = typer.Typer(name="hwloop", help="Hardware-in-the-loop latency modelling and compression search.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
devices_app = typer.Typer(help="List, show, trust and deploy devices.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect, export and import stored measurements.", no_args_is_help=True)
predictor_app = typer.Typer(help="Fit, evaluate and inspect latency predictors.", no_args_is_help=True)
search_app = typer.Typer(help="Hardware-aware compression search.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks whose output the docs quote.", no_args_is_help=True)



@app.callback()
def _root(allow_import: bool = typer.Option(
        False, "--allow-import",
        help="trust module:factory names in files and specs (models, objectives, predictor classes): import and "
             "run that code. Off by default; also HWLOOP_ALLOW_IMPORT=1.")) -> None:
    """Hardware-in-the-loop latency modelling and compression search."""
    from hwloop.trust import set_allow_import

    if allow_import:
        set_allow_import(True)


app.add_typer(devices_app, name="devices")
app.add_typer(data_app, name="data")
app.add_typer(predictor_app, name="predictor")
app.add_typer(search_app, name="search")
app.add_typer(bench_app, name="bench")
