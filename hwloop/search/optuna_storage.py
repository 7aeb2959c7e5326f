"""Optuna storages by URL: SQLite (default), journal files, PostgreSQL; and the cross-process claim lock.

* ``sqlite:///FILE`` (default ``sqlite:///hwloop-optuna.db``) — Optuna's ``RDBStorage``;
* ``journal:FILE`` (or a path ending in ``.journal``/``.log``) — ``JournalStorage`` over a
  ``JournalFileBackend``, for several processes on one machine;
* ``postgresql://USER[:PASS]@HOST[:PORT]/DB`` — ``RDBStorage`` through psycopg 3, for many machines.

RDB storages get Optuna heartbeats and ``RetryHeartbeatStaleTrialCallback`` (a trial lost to a crashed
worker is re-enqueued with its parameters).

Example:
    >>> parse_storage_url("journal:runs/a.journal")
    ('journal', 'runs/a.journal')
    >>> mask_url("postgresql://bob:secret@db/studies")
    'postgresql://bob:***@db/studies'
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwloop.errors import ConfigError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["DEFAULT_STORAGE", "claim_lock_path", "file_lock", "mask_url", "open_storage", "parse_storage_url"]

DEFAULT_STORAGE = "sqlite:///hwloop-optuna.db"
_STORAGE_FORMS = "sqlite:///FILE, journal:FILE (or FILE.journal) or postgresql://USER@HOST[:PORT]/DB"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs).

    Example:
        >>> mask_url("postgresql://bob:secret@db:5432/studies")
        'postgresql://bob:***@db:5432/studies'
    """
    return re.sub(r"^([a-z0-9+]+://[^:/@]+):[^@]*@", r"\1:***@", url)


def parse_storage_url(url: str | None) -> tuple[str, str]:
    """Classify a storage URL as ``(kind, target)``: kind ``sqlite``/``postgresql``/``journal``.

    Example:
        >>> parse_storage_url("journal:runs/a.journal")
        ('journal', 'runs/a.journal')
        >>> parse_storage_url("postgres://u@h/db")
        ('postgresql', 'postgresql+psycopg://u@h/db')
    """
    u = (url or DEFAULT_STORAGE).strip()
    low = u.lower()
    if low.startswith("sqlite:///"):
        if len(u) == len("sqlite:///"):
            raise ConfigError(f"storage URL {u!r} names no file; use sqlite:///FILE")
        return "sqlite", u
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if low.startswith(prefix):
            rest = u[len(prefix):]
            if "/" not in rest or not rest.split("/", 1)[0] or not rest.split("/", 1)[1]:
                raise ConfigError(f"storage URL {mask_url(u)!r} needs a host and a database: "
                                  "postgresql://USER@HOST[:PORT]/DB")
            return "postgresql", "postgresql+psycopg://" + rest
    if low.startswith("journal:"):
        path = u[len("journal:"):]
        path = path.removeprefix("//")
        if not path:
            raise ConfigError(f"storage URL {u!r} names no file; use journal:FILE")
        return "journal", path
    if "://" not in u and low.endswith((".journal", ".log")):
        return "journal", u
    if "://" not in u and low.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite", "sqlite:///" + u
    raise ConfigError(f"storage URL {mask_url(u)!r} is not supported; use {_STORAGE_FORMS}")


def open_storage(url: str | None = None, *, heartbeat_interval_s: int = 10, max_retry: int = 3
                 ) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the Optuna storage a URL names.

    Args:
        url: see :func:`parse_storage_url`; None means :data:`DEFAULT_STORAGE`.
        heartbeat_interval_s: RDB heartbeat period; a running trial silent for twice this is stale.
        max_retry: how many times a trial lost to a crashed worker is re-run.

    Raises:
        ConfigError: the URL's form is not supported.
        StoreError: the storage cannot be opened (unreachable server, bad file...).
    """
    import optuna

    kind, target = parse_storage_url(url)
    if heartbeat_interval_s < 1:
        raise ConfigError(f"heartbeat_interval_s={heartbeat_interval_s} must be >= 1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    try:
        if kind == "journal":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(target))
        engine_kwargs: dict[str, Any] = {}
        if kind == "sqlite":
            engine_kwargs = {"connect_args": {"timeout": 60}}
            db = target[len("sqlite:///"):]
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        else:
            engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(target, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=heartbeat_interval_s,
                                              grace_period=2 * heartbeat_interval_s,
                                              heartbeat_stale_trial_callback=retry)
    except ModuleNotFoundError as e:
        raise StoreError(f"storage {mask_url(target)!r} needs the missing package {e.name!r} "
                         "(pip install 'hwloop[postgres]')") from e
    except Exception as e:  # sqlalchemy / OS errors: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"cannot open study storage {mask_url(url or DEFAULT_STORAGE)!r}: {first[:300]}") from e


def claim_lock_path(storage_url: str | None) -> Path | None:
    """A lock file serialising claims on file storages (SQLite ignores ``SELECT ... FOR UPDATE``)."""
    kind, target = parse_storage_url(storage_url)
    if kind == "postgresql":
        return None  # row locks make WAITING -> RUNNING atomic
    path = target[len("sqlite:///"):] if kind == "sqlite" else target
    if path in ("", ":memory:"):
        return None
    return Path(path).with_name(Path(path).name + ".hwloop-claim.lock")


@contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
