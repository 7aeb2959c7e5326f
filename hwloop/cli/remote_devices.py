"""``hwloop devices trust|deploy``: host keys and installation for ``remote`` devices."""

from __future__ import annotations

import typer

from hwloop.cli._app import devices_app
from hwloop.cli._common import console

__all__ = ["trust", "deploy_cmd"]


def _remote_profile(name: str):  # type: ignore[no-untyped-def]
    from hwloop.devices.profiles import load_profile
    from hwloop.errors import ConfigError

    prof = load_profile(name)
    if prof.backend != "remote":
        raise ConfigError(f"device {prof.name!r} has backend {prof.backend!r}; trust/deploy need backend 'remote'")
    return prof


@devices_app.command("trust")
def trust(
    name: str = typer.Argument(..., help="remote device name (or profile path)"),
    fingerprint: str = typer.Option(None, "--fingerprint", help="expected SHA256:... fingerprint (no prompt)"),
) -> None:
    """Show a board's SSH host key fingerprint and add it to hwloop's known_hosts once confirmed.

    Example: ``hwloop devices trust jetson-orin`` (interactive) or
    ``hwloop devices trust jetson-orin --fingerprint SHA256:abc...`` (scripts).
    """
    from hwloop.errors import HostKeyError
    from hwloop.remote import ConnectionConfig, fetch_host_key, host_key_fingerprint, known_host_key, trust_host_key

    prof = _remote_profile(name)
    cfg = ConnectionConfig.from_dict(prof.connection)
    key = fetch_host_key(cfg)
    fpr = host_key_fingerprint(key)
    old = known_host_key(cfg)
    if old is not None and old.asbytes() == key.asbytes():
        console.print(f"{cfg.host_key_name} is already trusted ({key.get_name()} {fpr}) in {cfg.known_hosts_path}")
        return
    if fingerprint is not None:
        if fingerprint.strip() != fpr:
            raise HostKeyError(f"host key of {cfg.host_key_name} is {key.get_name()} {fpr}, not the expected "
                               f"{fingerprint.strip()}; nothing was trusted")
    else:
        console.print(f"host {cfg.host_key_name} ({prof.name}) presents {key.get_name()} key [bold]{fpr}[/bold]")
        if old is not None:
            console.print(f"[red]this REPLACES the trusted key {host_key_fingerprint(old)}[/red]")
        if not typer.confirm("Trust this key?", default=False):
            console.print("not trusted")
            raise typer.Exit(1)
    path = trust_host_key(cfg, key)
    console.print(f"trusted {cfg.host_key_name} {key.get_name()} {fpr} -> {path}")


@devices_app.command("deploy")
def deploy_cmd(
    name: str = typer.Argument(..., help="remote device name (or profile path)"),
    wheel: str = typer.Option(None, "--wheel", help="prebuilt wheel of this hwloop version (default: build it)"),
    offline: bool = typer.Option(False, "--offline", help="pip --no-index on the board (dependencies present)"),
) -> None:
    """Install this exact hwloop version on the board (wheel over SFTP, venv seeing the system torch).

    Example: ``hwloop devices deploy jetson-orin``; then set the profile's ``agent_command``
    to the printed one (the default already points at ``.hwloop/venv``).
    """
    from hwloop.remote import deploy

    prof = _remote_profile(name)
    out = deploy(prof, wheel=wheel, offline=offline, progress=lambda m: console.print(f"• {m}"))
    fp = out["fingerprint"]
    console.print(f"deployed hwloop {out['hwloop']} to {prof.name} ({out['venv']}); board backend {fp['backend']}, "
                  f"fingerprint {fp['key']}")
    console.print(f"agent_command = {out['agent_command']}")
