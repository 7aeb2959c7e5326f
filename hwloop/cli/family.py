"""``hwloop search pick FAMILY``: the member of a trained LCS family that meets a latency budget on a device.

A family is what an ``lcs`` run writes (``hwloop search run`` puts it in ``<run>/family``; from Python
``LcsFamily.save``): both endpoints and a JSON description, read as data only (nothing is imported or unpickled).
``pick`` lists the family's α → latency table on ``--device`` (measuring it first when the family has none for that
device: ``--source table`` costs the members' layers through the shared cost table, ``measure`` measures each
member whole), then with ``--budget-ms`` selects the most accurate α within the budget (no data, no retraining)
and with ``--out`` writes that member as an ordinary compressed model (plan + weights) into a new or empty folder
(exit 1, nothing written, when no member meets the budget).

Example::

    hwloop search pick runs/lcs/family --device asic-tpu32 --budget-ms 0.08 --out runs/lcs-pick
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from hwloop.cli._app import search_app

__all__ = ["pick"]

SOURCES = ("table", "measure")


@search_app.command("pick")
def pick(
    family: Path = typer.Argument(..., help="an LCS family folder (family.json + endpoints.safetensors) or a run "
                                  "folder holding one in family/"),
    device: str = typer.Option("asic-tpu32", "--device", help="device profile whose latency table is used"),
    budget_ms: float = typer.Option(None, "--budget-ms", help="latency budget in ms: select the most accurate "
                                    "member within it"),
    source: str = typer.Option("table", "--source", help="how a missing table is filled: 'table' (layers costed "
                               "through the shared cost table, calibrated on the full member) or 'measure' "
                               "(each member measured whole)"),
    alphas: int = typer.Option(7, "--alphas", help="members in a new table when the family records no accuracies "
                               "(evenly spaced alphas)"),
    save: bool = typer.Option(False, "--save/--no-save", help="write a newly measured table back into the family"),
    out: Path = typer.Option(None, "--out", "-o", help="write the selected member (plan + weights) here"),
    as_json: bool = typer.Option(False, "--json", help="print the table and the selection as JSON"),
) -> None:
    """Pick the LCS family member that meets a latency budget on a device (measuring its table if needed)."""
    from hwloop.compress.extract import save_compressed
    from hwloop.errors import SearchError
    from hwloop.methods.lcs.family import LcsFamily, default_grid

    if source not in SOURCES:
        raise SearchError(f"--source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
    if budget_ms is not None and not (math.isfinite(budget_ms) and budget_ms > 0):
        raise SearchError(f"--budget-ms={budget_ms!r} must be a positive number of milliseconds")
    if not 2 <= alphas <= 101:
        raise SearchError(f"--alphas={alphas!r} must be an int in [2, 101]")
    if out is not None:
        if budget_ms is None:
            raise SearchError("--out needs --budget-ms (which member to write)")
        if out.exists() and not out.is_dir():
            raise SearchError(f"--out {str(out)!r} is a file; allowed: a new or empty folder")
        if out.is_dir() and any((out / f).exists() for f in ("plan.json", "weights.safetensors", "family.json")):
            raise SearchError(f"--out {str(out)!r} already holds a model or a family; allowed: a new or empty folder "
                              "(nothing there is overwritten)")
    from hwloop.devices.profiles import create_device, load_profile

    profile = load_profile(device)       # an unknown device: one line naming the known ones
    device = profile.name                # a profile path: the table is kept under the profile's name
    where = family / "family" if (family / "family" / "family.json").is_file() else family
    if not (where / "family.json").is_file():
        raise SearchError(f"{str(family)!r} holds no LCS family (no family.json in it or in its family/ folder)")
    if where != family and (family / "metrics.json").is_file():   # a run folder: is its family this run's?
        try:
            arts = json.loads((family / "metrics.json").read_text(encoding="utf-8")).get("metrics", {}).get("artifacts")
        except (OSError, ValueError, AttributeError):
            arts = None
        if not (isinstance(arts, dict) and arts.get("family") == "family"):
            raise SearchError(f"{str(family)!r}: its metrics.json lists no family (the family/ folder is from an "
                              "earlier run into the same folder); give the family folder itself to use it")
    fam = LcsFamily.load(where)
    measured = False
    if not fam.latency.get(device):
        grid = sorted(fam.accuracy) or default_grid(alphas)
        typer.echo(f"pick: no latency table for {device} in {where}; filling it at {len(grid)} alphas ({source})",
                   err=True)
        fam.measure(create_device(profile), grid, source=source)
        measured = True
        if save:
            fam.save_description(where)     # family.json only, atomically; the endpoints are not rewritten
    table = fam.latency[device]
    sel = fam.select(budget_ms, device) if budget_ms is not None else None
    if out is not None and sel is not None and not sel.met:
        typer.echo(f"pick: NO member meets the budget of {sel.budget_ms:g} ms on {device} (the fastest, alpha "
                   f"{sel.alpha:g}, takes {sel.latency_ms:.4g} ms); nothing written to {out}", err=True)
        raise typer.Exit(1)
    if out is not None and sel is not None:
        m = fam.at(sel.alpha)
        if m.plan is None:
            raise SearchError(f"a {fam.state.mode!r} family member has no plan to write (only width and topk "
                              "members are plans); use LcsFamily.line_at from Python")
        save_compressed(m.model, m.plan, out)
    rows = [{"alpha": a, "latency_ms": ms, "accuracy": fam.accuracy.get(a)} for a, ms in sorted(table.items())]
    if as_json:
        doc = {"family": str(where), "device": device, "source": fam.latency_source.get(device), "measured": measured,
               "table": rows, "selection": None if sel is None else {
                   "alpha": sel.alpha, "latency_ms": sel.latency_ms, "accuracy": sel.accuracy, "met": sel.met,
                   "budget_ms": sel.budget_ms}, "out": None if out is None else str(out)}
        typer.echo(json.dumps(doc, indent=1))
        return
    typer.echo(f"{where} on {device} ({fam.latency_source.get(device)}):")
    for r in rows:
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
        mark = "  <- selected" if sel is not None and r["alpha"] == sel.alpha else ""
        typer.echo(f"  alpha {r['alpha']:.3f}  {r['latency_ms']:.4g} ms  {acc}{mark}")
    if sel is not None:
        verdict = "within the budget" if sel.met else "NO member meets the budget: the fastest"
        typer.echo(f"pick: alpha {sel.alpha:g}, {sel.latency_ms:.4g} ms for a budget of {sel.budget_ms:g} ms "
                   f"({verdict})" + (f"; written to {out}" if out is not None else ""))
