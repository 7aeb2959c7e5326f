"""``hwloop env``: versions, the local fingerprint and where data goes."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform

import typer

from hwloop.cli._app import app
from hwloop.cli._common import console

_PKGS = ("hwloop", "torch", "numpy", "pandas", "sqlalchemy", "xgboost", "scikit-learn", "optuna", "paramiko",
         "torch-pruning", "apache-tvm", "psycopg", "typer", "rich")


@app.command("env")
def env(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Print package versions, accelerators, the local CPU fingerprint and the default store."""
    import torch

    from hwloop.devices.cpu import CpuDevice

    versions: dict[str, str | None] = {}
    for p in _PKGS:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "local_cpu_fingerprint": CpuDevice().fingerprint().to_dict(),
    }
    try:
        from hwloop.store import default_store_url

        report["default_store"] = default_store_url()
    except ImportError:
        pass
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print_json(json.dumps(report))
