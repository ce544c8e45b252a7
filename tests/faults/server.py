"""A throwaway PostgreSQL server for the fault-injection suite.

Its own cluster (``initdb`` into a temporary directory, a free port, the installed
server's binaries), so a test may stop, restart and exhaust it without touching the
shared server the rest of the suite uses. Run as root, the server runs as the
``postgres`` system user (PostgreSQL refuses to run as root).

Roles: ``postgres`` (superuser: the suite's own observer and the per-execution markers,
which use the reserved superuser slots, so exhausting the ordinary slots never blinds the
measurement), ``taskengine`` (owner of the ``faults`` database: the workers and the
enqueuer, an ordinary role like a production deployment's) and ``other_client`` (the
other clients that hold snapshots or exhaust the connection slots).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

DATABASE = "faults"
ENGINE_ROLE = "taskengine"
OTHER_CLIENT_ROLE = "other_client"
MAX_CONNECTIONS = 50
SUPERUSER_RESERVED_CONNECTIONS = 14  # the observer, up to 8 concurrent markers, headroom
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def server_bindir() -> Path:
    """The installed server's binaries: ``pg_config --bindir``, else the newest
    Debian-style ``/usr/lib/postgresql/<version>/bin`` that has them all."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in SERVER_BINARIES):
            return bindir
    raise RuntimeError(
        "the fault-injection suite needs PostgreSQL's server binaries (initdb, pg_ctl, postgres); "
        f"looked in {[str(c) for c in candidates] or 'pg_config --bindir and /usr/lib/postgresql/*/bin'}. "
        "Install Debian's postgresql package (bin/ensure-services does)."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    def __init__(self) -> None:
        self.bindir = server_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="taskengine-faults-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")  # KeyError: no postgres user to run the server as
            self.sockets.mkdir()
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        else:
            self.sockets.mkdir()

    # --- lifecycle -------------------------------------------------------------------

    def _pg(self, binary: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._run_as, str(self.bindir / binary), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{binary} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}\n{self.server_log()[-3000:]}"
            )

    def create(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        settings = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sockets}'",
            "max_connections": MAX_CONNECTIONS,
            "superuser_reserved_connections": SUPERUSER_RESERVED_CONNECTIONS,
            "shared_buffers": "'64MB'",
            # A throwaway cluster on a shared machine: no crash of the host is simulated,
            # so durability to disk buys nothing here and would cost the drain its pace.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# taskengine fault-injection suite\n")
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")
        self.start()
        with self.connect(dbname="postgres") as admin:
            admin.execute(f"CREATE ROLE {ENGINE_ROLE} LOGIN")
            admin.execute(f"CREATE ROLE {OTHER_CLIENT_ROLE} LOGIN")
            admin.execute(f"CREATE DATABASE {DATABASE} OWNER {ENGINE_ROLE}")

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # --- connecting ------------------------------------------------------------------

    def conninfo(
        self,
        *,
        user: str = "postgres",
        dbname: str = DATABASE,
        application_name: str = "faults-observer",
        connect_timeout: int = 3,
    ) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1",
            port=self.port,
            user=user,
            dbname=dbname,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )

    def database_url(self, application_name: str) -> str:
        """DATABASE_URL for a Django process connecting as the engine's role."""
        return f"postgres://{ENGINE_ROLE}@127.0.0.1:{self.port}/{DATABASE}?application_name={application_name}"

    def connect(self, **kw: Any) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(**kw), autocommit=True)


class Observer:
    """The suite's own superuser connection to the throwaway database: reconnects
    (within ``patience`` seconds) when a fault has cut it."""

    def __init__(self, server: ThrowawayPostgres, patience: float = 60.0) -> None:
        self.server = server
        self.patience = patience
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.server.connect()
        return self._conn

    def rows(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                cursor = self._connection().execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                if self._conn is not None:
                    self._conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def value(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        return self.rows(query, params)[0][0]

    def now(self):
        """The database clock: every time the suite compares comes from it."""
        return self.value("SELECT clock_timestamp()")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
