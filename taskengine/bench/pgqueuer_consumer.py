"""One pgqueuer consumer with pgqueuer's defaults, the program behind ``manage.py
benchmark --compare pgqueuer`` (issue #16): a no-op async entrypoint, started the way
``pgq run`` starts a factory (pgqueuer's own supervisor with none of its options given:
batch size 10, no concurrency limit, its event loop choice), on one asyncpg connection
to the database named by the environment variable DSN_ENV (a libpq connection string).

asyncpg, not psycopg: it is the driver of pgqueuer's own quick start, and pgqueuer's
psycopg driver stalls a consumer for its notification watcher's 1 s timeout after the
first batch of a burst (it holds the connection while it waits), which would count
against pgqueuer in every drain (docs/performance.md, "pgqueuer in the same run").

It runs as a program of its own (``python -P pgqueuer_consumer.py``), outside Django,
and so imports nothing of taskengine: importing it through the package would load
taskengine.bench, whose modules need Django's settings. Its one addition to pgqueuer is
a line READY on standard output once the consumer LISTENs on its channel, so the
benchmark commits the jobs only when the consumer is waiting for them, as it does for
runworker."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer, run
from pgqueuer.ports.driver import NotifyCallback
from psycopg.conninfo import conninfo_to_dict

DSN_ENV = "TASKENGINE_BENCH_PGQUEUER_DSN"
ENTRYPOINT = "taskengine_bench_noop"
READY = "ready"


class ReadyDriver(AsyncpgDriver):
    """pgqueuer's asyncpg driver, saying READY once the first LISTEN is done (the queue
    manager's, the only listener a consumer adds)."""

    said_ready = False

    async def add_listener(self, channel: str, callback: NotifyCallback) -> None:
        await super().add_listener(channel, callback)
        if not self.said_ready:
            self.said_ready = True
            print(READY, flush=True)


async def connect(conninfo: str) -> asyncpg.Connection:
    """An asyncpg connection from a libpq connection string's host, port, user,
    password, database and sslmode (asyncpg takes a URI or keywords, not the string)."""
    params = conninfo_to_dict(conninfo)
    keywords = {"host": "host", "port": "port", "user": "user", "password": "password", "dbname": "database"}
    given: dict[str, object] = {name: params[libpq] for libpq, name in keywords.items() if params.get(libpq)}
    if "port" in given:
        given["port"] = int(str(given["port"]))
    if params.get("sslmode"):
        given["ssl"] = params["sslmode"]
    return await asyncpg.connect(**given)


@asynccontextmanager
async def consumer() -> AsyncIterator[PgQueuer]:
    """The factory ``pgq run`` would be given: a PgQueuer with one no-op entrypoint."""
    connection = await connect(os.environ[DSN_ENV])
    try:
        pgq = PgQueuer(ReadyDriver(connection))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            """The benchmark's no-op."""

        yield pgq
    finally:
        await connection.close()


def main() -> None:
    # pgq run's own loop: uvloop where pgqueuer has it (a dependency on Linux), else asyncio.
    from pgqueuer.adapters.cli.cli import asyncio_run

    asyncio_run(run(consumer))


if __name__ == "__main__":
    main()
