"""``hwloop devices list|show``."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from hwloop.cli._app import devices_app
from hwloop.cli._common import console


@devices_app.command("list")
def list_devices() -> None:
    """List the device profiles found (``$HWLOOP_DEVICES_DIR``, ``./devices``, the checkout's ``devices/``)."""
    from hwloop.devices.profiles import list_profiles

    table = Table(title="devices")
    for col in ("name", "backend", "description", "profile"):
        table.add_column(col)
    for p in list_profiles():
        table.add_row(p.name, p.backend, p.description, str(p.path) if p.path else "(built-in)")
    console.print(table)


@devices_app.command("show")
def show_device(
    name: str = typer.Argument(..., help="device name or path to a profile TOML"),
    probe: bool = typer.Option(False, "--probe", help="open the device and print its fingerprint"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show a device profile (and, with ``--probe``, the device's fingerprint)."""
    from hwloop.devices.profiles import create_device, load_profile

    prof = load_profile(name)
    out = prof.to_dict()
    if probe:
        dev = create_device(prof)
        try:
            out["fingerprint"] = dev.fingerprint().to_dict()
        finally:
            dev.close()
    if as_json:
        print(json.dumps(out, indent=2, default=str))
    else:
        console.print_json(json.dumps(out, default=str))
