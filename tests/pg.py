"""A throw-away PostgreSQL 15 server for tests: ``initdb`` + ``pg_ctl`` in a temp dir on 127.0.0.1.

When the tests run as root, the server runs as the ``postgres`` OS user through
``runuser -u postgres --``. Every command is an argument list (no shell). Set
``HWLOOP_TEST_POSTGRES_URL`` to use an existing server instead.

Example:
    >>> srv = PostgresServer.start()  # doctest: +SKIP
    >>> url = srv.create_database("t1")  # doctest: +SKIP
    >>> srv.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PG_BIN", "PostgresServer", "pg_available", "create_database", "drop_database"]

PG_BIN = Path(os.environ.get("HWLOOP_PG_BIN", "/usr/lib/postgresql/15/bin"))


def pg_available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if os.environ.get("HWLOOP_TEST_POSTGRES_URL"):
        return None
    for b in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / b).is_file():
            return f"needs PostgreSQL 15 server binaries ({PG_BIN / b} missing; Debian postgresql-15)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs psycopg 3 (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs a 'postgres' OS user to run the server"
        if shutil.which("runuser") is None:
            return "running as root needs runuser (util-linux)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresServer:
    """A running temporary cluster (``url`` points at its ``postgres`` database)."""

    root: Path | None
    url: str

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb a cluster in a temp dir and start it on a free loopback port (waits until ready)."""
        ext = os.environ.get("HWLOOP_TEST_POSTGRES_URL")
        if ext:
            return cls(root=None, url=ext)
        root = Path(tempfile.mkdtemp(prefix="hwloop-pg-"))
        os.chmod(root, 0o755)
        data, sock = root / "data", root / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            os.chown(sock, pw.pw_uid, pw.pw_gid)
        user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        subprocess.run(_as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8",
                               "--no-sync", "--no-instructions"]), check=True, capture_output=True, timeout=120)
        port = _free_port()
        conf = (f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n"
                "max_connections = 50\nshared_buffers = 16MB\n")
        with open(data / "postgresql.conf", "a", encoding="utf-8") as f:  # root may write the postgres-owned file
            f.write(conf)
        subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                               "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        return cls(root=root, url=f"postgresql://{user}@127.0.0.1:{port}/postgres")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its files."""
        if self.root is None:
            return
        subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        return create_database(self.url, prefix)


def _admin(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def create_database(url: str, prefix: str = "t") -> str:
    """Create an empty database next to ``url``'s and return its URL."""
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, db_url: str) -> None:
    """Drop the database ``db_url`` names (connections to it are terminated)."""
    from psycopg import sql

    name = db_url.rsplit("/", 1)[1]
    with _admin(admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
