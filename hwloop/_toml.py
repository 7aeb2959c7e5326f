"""Read a TOML file for a spec or profile, with the one-line errors every hwloop config gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from hwloop.errors import ConfigError, HwloopError

__all__ = ["read_toml"]


def read_toml(path: str | Path, what: str, error: type[HwloopError] = ConfigError) -> dict[str, Any]:
    """The parsed TOML at ``path``; ``what`` names it in errors ("sweep spec", "device profile").

    Raises:
        error: the file is missing, a folder, or not valid TOML (one line naming the file).

    Example:
        >>> read_toml("no-such.toml", "sweep spec")
        Traceback (most recent call last):
        hwloop.errors.ConfigError: sweep spec no-such.toml does not exist
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise error(f"{what} {p} does not exist") from e
    except IsADirectoryError as e:
        raise error(f"{what} {p} is a folder, not a TOML file") from e
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                    "TOML files must be UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {p} is not valid TOML: {str(e).splitlines()[0]}") from e
    except PermissionError as e:
        raise error(f"{what} {p} cannot be read (permission denied)") from e
