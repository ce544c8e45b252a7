"""pgqueuer's defaults in the same run (``--compare pgqueuer``, issue #16): issue #16's
targets are ratios of the shipped worker's drain to pgqueuer's, measured side by side.

In a scratch database beside the engine's (created for the phase and dropped after it,
as the raw claim limit's is), pgqueuer installs its own schema under its default names;
ONE consumer process (pgqueuer_consumer.py: pgqueuer's defaults, a no-op entrypoint) is
started and waited for until it LISTENs, and a second more, as runworker is in the drain
phase; then the jobs are enqueued by pgqueuer's own bulk enqueue in one transaction, so
they appear at once to a consumer already waiting. Throughput is jobs / (last
completion − first pick), both from the database clock: the ``created`` column
(``now()``) of pgqueuer's own log table (pgqueuer_drain.sql).

pgqueuer is an optional package (the ``bench`` extra): nothing here imports it until
the phase runs, and require_pgqueuer() says how to install it. pgqueuer's settings come
from ``PGQUEUER_*`` environment variables; require_pgqueuer() refuses any set, since
the comparison is with its defaults."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata, resources
from typing import IO, TYPE_CHECKING, Any

from taskengine.db import queries

from .base import BenchBase

if TYPE_CHECKING:
    import psycopg

EXTRA = "pip install 'taskengine[bench]'"
ENQUEUE_BATCH = 10_000  # jobs per pgqueuer enqueue call (one transaction for all of them)
READY_SECONDS = 1.0  # after the consumer LISTENs, as _start_workers waits after registration


class CompareRefused(RuntimeError):
    """``--compare pgqueuer`` cannot measure what it promises: pgqueuer is not
    installed, or the environment moves pgqueuer off its defaults."""


def require_pgqueuer(environ: Mapping[str, str] = os.environ) -> str:
    """pgqueuer's version, or CompareRefused naming the extra that brings it, or the
    ``PGQUEUER_*`` variables that would change its settings (its names, schema,
    durability) away from its defaults."""
    try:
        import pgqueuer  # noqa: F401 - imported to be sure it imports, not only that it is installed
    except ImportError as exc:
        raise CompareRefused(f"--compare pgqueuer needs the pgqueuer package ({exc}): {EXTRA}") from exc
    if settings := pgqueuer_settings_in(environ):
        raise CompareRefused(f"--compare pgqueuer measures pgqueuer's defaults: unset {', '.join(settings)}")
    return metadata.version("pgqueuer")


def pgqueuer_settings_in(environ: Mapping[str, str]) -> list[str]:
    """The environment variables pgqueuer's settings read (``PGQUEUER_*``, any case)."""
    return sorted(name for name in environ if name.upper().startswith("PGQUEUER_"))


class PgqueuerDrain(BenchBase):
    def pgqueuer_drain(self, jobs: int) -> dict[str, Any]:
        """``jobs`` no-op jobs drained by one pgqueuer consumer with its defaults, in a
        scratch database dropped afterwards. Needs PostgreSQL and pgqueuer."""
        version = require_pgqueuer()
        if not self.postgres:
            raise CompareRefused("--compare pgqueuer needs PostgreSQL")
        with self.scratch_database("taskengine_pgqueuer") as scratch:
            self.log(f"pgqueuer {version}: its schema and {jobs} jobs in the scratch database {scratch}")
            done, seconds = self._pgqueuer_run(self._conninfo(scratch), jobs)
        return {"pgqueuer_version": version, "pgqueuer_drain_per_s": done / seconds, "pgqueuer_drain_seconds": seconds}

    def _pgqueuer_run(self, dsn: str, jobs: int) -> tuple[int, float]:
        """Install, start the consumer, enqueue, wait for the drain; (jobs, seconds)."""
        import psycopg

        statements = queries.package_statements(__package__, "pgqueuer_drain.sql")
        asyncio.run(_install(dsn))
        with tempfile.TemporaryFile() as stderr, psycopg.connect(dsn, autocommit=True) as conn:
            proc = _start_consumer(dsn, stderr)
            try:
                asyncio.run(_enqueue(dsn, jobs))
                deadline = time.monotonic() + 60 + jobs / 100
                while _one(conn, statements["pgqueuer_queued"])[0]:
                    _check_alive(proc, stderr)
                    if time.monotonic() > deadline:
                        raise RuntimeError("the pgqueuer drain did not finish")
                    time.sleep(0.2)
            finally:
                code = _stop(proc)
            if code != 0:
                raise RuntimeError(f"the pgqueuer consumer exited with {code}: {_tail(stderr)}")
            done, seconds = _one(conn, statements["pgqueuer_drained"])
        if done != jobs:
            raise RuntimeError(f"pgqueuer drain incomplete: {done} of {jobs} jobs completed")
        return int(done), max(float(seconds or 0), 1e-6)


def _one(conn: psycopg.Connection[Any], statement: str) -> tuple[Any, ...]:
    row = conn.execute(statement).fetchone()
    assert row is not None  # EXISTS and aggregates return one row
    return tuple(row)


def _start_consumer(dsn: str, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """The consumer, returned once it LISTENs and READY_SECONDS more have passed."""
    from . import pgqueuer_consumer

    with resources.as_file(resources.files(__package__).joinpath("pgqueuer_consumer.py")) as program:
        # -P: the program's directory (this package's) stays off sys.path.
        proc = subprocess.Popen(
            [sys.executable, "-P", str(program)],
            env=dict(os.environ, **{pgqueuer_consumer.DSN_ENV: dsn}),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        _wait_for_line(proc, pgqueuer_consumer.READY, time.monotonic() + 120, stderr)
    except BaseException:
        _stop(proc)
        raise
    time.sleep(READY_SECONDS)
    return proc


def _wait_for_line(proc: subprocess.Popen[bytes], line: str, deadline: float, stderr: IO[bytes]) -> None:
    assert proc.stdout is not None  # started with stdout=PIPE
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not readable:
            continue
        got = proc.stdout.readline()
        if got.strip() == line.encode():
            return
        if not got:  # end of its output: the consumer exited
            proc.wait(10)
            _check_alive(proc, stderr)
    raise RuntimeError(f"the pgqueuer consumer did not start: {_tail(stderr)}")


def _check_alive(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"the pgqueuer consumer exited early with {proc.returncode}: {_tail(stderr)}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (pgqueuer's graceful stop) and wait; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def _tail(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    return stderr.read().decode(errors="replace")[-2000:]


# --- pgqueuer's side, through its own API --------------------------------------------


async def _install(dsn: str) -> None:
    import psycopg
    from pgqueuer import PsycopgDriver, Queries

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        await Queries(PsycopgDriver(connection)).install()


async def _enqueue(dsn: str, jobs: int) -> None:
    """``jobs`` no-op jobs by pgqueuer's bulk enqueue, committed together."""
    import psycopg
    from pgqueuer import PsycopgDriver, Queries

    from .pgqueuer_consumer import ENTRYPOINT

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        pgq = Queries(PsycopgDriver(connection))
        async with connection.transaction():
            for at in range(0, jobs, ENQUEUE_BATCH):
                n = min(ENQUEUE_BATCH, jobs - at)
                await pgq.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
