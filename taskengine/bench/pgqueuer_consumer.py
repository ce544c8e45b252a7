"""One pgqueuer consumer with pgqueuer's defaults, the program behind ``manage.py
benchmark --compare pgqueuer`` (issue #16): a no-op async entrypoint, started the way
``pgq run`` starts a factory (pgqueuer's own supervisor with none of its options given:
batch size 10, no concurrency limit, its event loop choice), on one psycopg connection
to the database named by the environment variable DSN_ENV.

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

import psycopg
from pgqueuer import Job, PgQueuer, PsycopgDriver, run
from pgqueuer.ports.driver import NotifyCallback

DSN_ENV = "TASKENGINE_BENCH_PGQUEUER_DSN"
ENTRYPOINT = "taskengine_bench_noop"
READY = "ready"


class ReadyDriver(PsycopgDriver):
    """pgqueuer's psycopg driver, saying READY once the first LISTEN is done (the queue
    manager's, the only listener a consumer adds)."""

    said_ready = False

    async def add_listener(self, channel: str, callback: NotifyCallback) -> None:
        await super().add_listener(channel, callback)
        if not self.said_ready:
            self.said_ready = True
            print(READY, flush=True)


@asynccontextmanager
async def consumer() -> AsyncIterator[PgQueuer]:
    """The factory ``pgq run`` would be given: a PgQueuer with one no-op entrypoint."""
    async with await psycopg.AsyncConnection.connect(os.environ[DSN_ENV], autocommit=True) as connection:
        pgq = PgQueuer(ReadyDriver(connection))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            """The benchmark's no-op."""

        yield pgq


def main() -> None:
    # pgq run's own loop: uvloop where pgqueuer has it (a dependency on Linux), else asyncio.
    from pgqueuer.adapters.cli.cli import asyncio_run

    asyncio_run(run(consumer))


if __name__ == "__main__":
    main()
