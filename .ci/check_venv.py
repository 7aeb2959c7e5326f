"""Fail loudly unless this Python is an isolated venv: nothing installed by hand on the machine may leak in.

Run with the test venv's interpreter (``make test`` and ``.ci/run`` do): ``.venv/bin/python .ci/check_venv.py``.
Checks that ``pyvenv.cfg`` says ``include-system-site-packages = false``, that no ``sys.path``
entry lies outside the venv, the base interpreter's standard library and this checkout (so the
base interpreter's site-packages, dist-packages, user site and ``PYTHONPATH`` are all out), and
that the user site is off. Prints one line on success; exits 1 with the reasons otherwise.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _within(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def problems() -> list[str]:
    out: list[str] = []
    prefix, base = Path(sys.prefix), Path(sys.base_prefix)
    cfg = prefix / "pyvenv.cfg"
    if prefix.resolve() == base.resolve() or not cfg.is_file():
        return [f"{sys.executable} is not a venv (sys.prefix {prefix} has no pyvenv.cfg); build it with "
                "`python3 -m venv`"]
    conf = {}
    for line in cfg.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            conf[k.strip().lower()] = v.strip().lower()
    if conf.get("include-system-site-packages") != "false":
        out.append(f"{cfg} has include-system-site-packages = {conf.get('include-system-site-packages')!r}; "
                   "it must be false")
    if site.ENABLE_USER_SITE:
        out.append(f"the user site ({site.getusersitepackages()}) is enabled")
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE"):
        if os.environ.get(var):
            out.append(f"{var}={os.environ[var]} is set")
    stdlib = {Path(sysconfig.get_path(k, vars={"base": str(base), "platbase": str(base)})).resolve()
              for k in ("stdlib", "platstdlib")}
    base_sites = {Path(p).resolve() for p in site.getsitepackages([str(base)])}
    for entry in sys.path:
        if not entry or not Path(entry).exists():
            continue  # '' (the script's dir is REPO/.ci) and the absent pythonXY.zip
        p = Path(entry).resolve()
        if _within(p, prefix) or _within(p, REPO):
            continue
        if p in base_sites or any(part in ("site-packages", "dist-packages") for part in p.parts):
            out.append(f"sys.path holds {p}, site-packages outside the venv")
        elif not any(_within(p, s) for s in stdlib):
            out.append(f"sys.path holds {p}, outside the venv, the checkout and the standard library of {base}")
    return out


def main() -> int:
    bad = problems()
    if bad:
        print(f"ERROR: the test venv {sys.prefix} is not isolated; tests would pass on what was installed by hand:",
              file=sys.stderr)
        for b in bad:
            print(f"  - {b}", file=sys.stderr)
        return 1
    base_site = [Path(p) for p in site.getsitepackages([sys.base_prefix]) if Path(p).is_dir()]
    n = sum(1 for s in base_site for d in s.glob("*.dist-info"))
    print(f"venv {sys.prefix} is isolated (base {sys.base_prefix}: {n} packages in its site-packages, none visible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
