"""``hwloop devices trust|deploy|wheelhouse``: host keys and offline installation for ``remote`` devices."""

from __future__ import annotations

import typer

from hwloop.cli._app import devices_app
from hwloop.cli._common import console

__all__ = ["trust", "deploy_cmd", "wheelhouse_cmd"]


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
    wheelhouse: str = typer.Option(None, "--wheelhouse", help="folder of wheels for the board's platform "
                                   "(default: ~/.hwloop/wheelhouse/NAME when it exists)"),
) -> None:
    """Install this exact hwloop version on the board, offline (wheels over SFTP, venv seeing the system torch).

    The board needs no internet: hwloop goes in with ``--no-deps``; the agent needs only torch and
    numpy, taken from the board's Python or from the wheelhouse (``hwloop devices wheelhouse``).

    Example: ``hwloop devices deploy jetson-orin``; then set the profile's ``agent_command``
    to the printed one (the default already points at ``.hwloop/venv``).
    """
    from hwloop.remote import deploy

    prof = _remote_profile(name)
    out = deploy(prof, wheel=wheel, wheelhouse=wheelhouse, progress=lambda m: console.print(f"• {m}"))
    fp = out["fingerprint"]
    console.print(f"deployed hwloop {out['hwloop']} to {prof.name} ({out['venv']}); board backend {fp['backend']}, "
                  f"fingerprint {fp['key']}")
    console.print(f"agent_command = {out['agent_command']}")


@devices_app.command("wheelhouse")
def wheelhouse_cmd(
    name: str = typer.Argument(..., help="remote device name (or profile path)"),
    dest: str = typer.Option(None, "--dir", help="wheelhouse folder (default: ~/.hwloop/wheelhouse/NAME)"),
    find_links: str = typer.Option(None, "--find-links", help="take wheels from this local folder, not the index"),
    add: list[str] = typer.Option([], "--add", help="another requirement to include, e.g. 'sympy>=1.13' (repeat)"),
    include_present: bool = typer.Option(False, "--all", help="also download what the board already has"),
) -> None:
    """Download the wheels the board's agent lacks, for the board's Python and platform, for ``deploy``.

    Run it where there is internet (or pass ``--find-links`` with a local wheel cache); the board is
    only asked over SSH which Python, wheel tags and packages it has.

    Example: ``hwloop devices wheelhouse jetson-orin && hwloop devices deploy jetson-orin``.
    """
    from hwloop.remote.wheelhouse import build_wheelhouse

    prof = _remote_profile(name)
    out = build_wheelhouse(prof, dest, find_links=find_links, add=add, include_present=include_present,
                           progress=lambda m: console.print(f"• {m}"))
    console.print(f"wheelhouse {out['wheelhouse']} for {out['board']}: {len(out['saved'])} wheels "
                  f"({', '.join(out['saved']) or 'none needed'})")
