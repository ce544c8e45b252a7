"""The job store: every write the engine makes to a job row, on either database.

The public face of the stores in ``taskengine/db/`` (one per vendor, behind
``db.base.Store``): the functions here take a Django connection and hand the work to
``store_for(connection)``. They never open a transaction around user code: each is one
short statement (Postgres) or one short IMMEDIATE transaction (SQLite). Every state
change is compare-and-set, and the functions report which rows they actually changed,
so callers know if they won.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .db import store_for
from .db.base import ADVISORY_LOCK_NAMESPACE, RELEASED_CANCEL_ERROR_CLASS, RELEASED_CANCEL_MESSAGE
from .db.postgresql import libpq as libpq  # LIBPQ_FAST_PATH's single enqueue (tests count its calls)
from .db.postgresql.store import BULK_INSERT_MIN
from .db.rows import to_datetime
from .jobs import ClaimedJob, InsertedJob, NewJob, Outcome

__all__ = [
    "ADVISORY_LOCK_NAMESPACE",
    "BULK_INSERT_MIN",
    "RELEASED_CANCEL_ERROR_CLASS",
    "RELEASED_CANCEL_MESSAGE",
    "ClaimedJob",
    "InsertedJob",
    "NewJob",
    "Outcome",
    "StoredArgumentsNotDecodable",
    "UniqueKeyRace",
    "claim_jobs",
    "db_now",
    "engine_cursor",
    "ensure_decoded",
    "extend_leases",
    "finish_and_claim",
    "finish_jobs",
    "insert_jobs",
    "insert_streamed",
    "libpq",
    "release_jobs",
    "to_datetime",
]


@contextmanager
def engine_cursor(connection: BaseDatabaseWrapper) -> Iterator[Any]:
    """The cursor for the engine's own statements (see ``db.base._engine_cursor``)."""
    with store_for(connection).engine_cursor(connection) as cursor:
        yield cursor


@contextmanager
def worker_connection(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """While the block runs, ``connection`` (this thread's) is a worker's own: it runs
    the engine's statements (and the receivers of the signals the worker sends from this
    thread), never a handler's, so its store may set its session up for them
    (PostgreSQL: ``worker_planner_settings`` in db/postgresql/jobs.sql, applied on the
    connection's next engine statement and again after a reconnect). On leaving, a
    connection that got such settings is closed, so nothing planned after the block (a
    test's queries, say) inherits them."""
    connection._taskengine_worker_connection = True  # type: ignore[attr-defined]  # our own attribute
    try:
        yield
    finally:
        connection._taskengine_worker_connection = False  # type: ignore[attr-defined]  # our own attribute
        if getattr(connection, "_taskengine_worker_settings", None) is not None:
            connection._taskengine_worker_settings = None  # type: ignore[attr-defined]  # our own attribute
            connection.close()


def db_now(database: str = "default") -> datetime:
    """The database clock's current time, aware UTC."""
    connection = connections[database]
    return store_for(connection).db_now(connection)


# --- enqueue -------------------------------------------------------------------------


def insert_jobs(connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob]:
    """Insert ``jobs`` on the caller's connection (inside the caller's transaction, if
    any) and return one InsertedJob per input, in order. A job whose unique key is held
    by a live job is not inserted; the live holder is returned with created=False."""
    if not jobs:
        return []
    rows = store_for(connection).insert_rows(connection, jobs)
    return [
        row if row is not None else _live_holder(connection, job.unique_key)
        for job, row in zip(jobs, rows, strict=True)
    ]


def insert_streamed(
    connection: BaseDatabaseWrapper,
    count: int,
    jobs: Iterable[NewJob],
    sent: Callable[[list[NewJob], list[InsertedJob]], None],
) -> None:
    """Insert the ``count`` jobs ``jobs`` yields — none may have a unique key — on the
    caller's connection, in one transaction (a savepoint inside the caller's). ``jobs``
    may be read while earlier ones are on their way: on PostgreSQL from
    BULK_INSERT_MIN jobs they are streamed with COPY, and ``sent`` is called with each
    chunk and its InsertedJobs once the chunk is handed over, before the commit — for
    building what the caller returns while the server parses. An exception from
    ``jobs`` or ``sent`` rolls the whole call back."""
    store_for(connection).insert_streamed(connection, count, jobs, sent)


def _live_holder(connection: BaseDatabaseWrapper, unique_key: str | None) -> InsertedJob:
    from .models import Job

    holder = (
        Job.objects.using(connection.alias)
        .live()
        .filter(unique_key=unique_key)
        .values_list("id", "enqueued_at")
        .first()
    )
    if holder is None:
        # The holder finished between our insert and this read: the key is free now,
        # which the caller resolves by enqueueing again.
        raise UniqueKeyRace(unique_key)
    return InsertedJob(holder[0], holder[1], False)


class UniqueKeyRace(Exception):
    """The live holder of a unique key finished while we looked it up; retry."""


# --- claim, heartbeat, finish --------------------------------------------------------


def claim_jobs(
    connection: BaseDatabaseWrapper,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float,
    advisory: bool = False,
) -> list[ClaimedJob]:
    """Lease up to ``limit`` due jobs, highest priority first, and start their attempts."""
    if limit <= 0 or not queues:
        return []
    return store_for(connection).claim_jobs(
        connection,
        worker_id=worker_id,
        queues=list(queues),
        limit=limit,
        lease_seconds=lease_seconds,
        advisory=advisory,
    )


class StoredArgumentsNotDecodable(ValueError):
    """A claimed job's stored arguments would not decode; its attempt fails with this."""


def ensure_decoded(job: ClaimedJob) -> None:
    """Raise StoredArgumentsNotDecodable for a job whose arguments did not decode."""
    if job.decode_error is not None:
        raise StoredArgumentsNotDecodable(job.decode_error)


def extend_leases(
    connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]], lease_seconds: float
) -> dict[int, bool]:
    """Extend the leases of ``held`` (job id, attempt) pairs. Returns {job id: cancel
    requested} for the leases still held; a missing id has lost its lease."""
    if not held:
        return {}
    return store_for(connection).extend_leases(connection, worker_id=worker_id, held=held, lease_seconds=lease_seconds)


def finish_and_claim(
    connection: BaseDatabaseWrapper,
    *,
    worker_id: str,
    outcomes: list[Outcome],
    queues: list[str],
    limit: int,
    lease_seconds: float,
    advisory: bool = False,
) -> tuple[dict[int, tuple[str, datetime | None]], list[ClaimedJob]]:
    """finish_jobs(``outcomes``) and claim_jobs(``limit``) as one unit, committed
    together: (the finishes that won, the jobs claimed). On PostgreSQL one statement
    (finish_and_claim: one round trip and one commit for the batch); elsewhere the two
    calls in one transaction. Raises like either; then neither part was written."""
    return store_for(connection).finish_and_claim(
        connection,
        worker_id=worker_id,
        outcomes=outcomes,
        queues=list(queues),
        limit=limit,
        lease_seconds=lease_seconds,
        advisory=advisory,
    )


def finish_jobs(
    connection: BaseDatabaseWrapper, *, worker_id: str, outcomes: list[Outcome]
) -> dict[int, tuple[str, datetime | None]]:
    """Write a batch of attempt outcomes, fenced. Returns {job id: (new state,
    finished_at)} for the writes that won; a missing id means the worker had lost the
    lease and nothing changed."""
    if not outcomes:
        return {}
    return store_for(connection).finish_jobs(connection, worker_id=worker_id, outcomes=outcomes)


def release_jobs(
    connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]]
) -> dict[int, tuple[str, datetime | None]]:
    """Hand still-running jobs back to the queue (graceful shutdown). Fenced. A job whose
    cancellation was requested ends ``cancelled`` instead (its attempt too). Returns
    {job id: (new state, finished_at)} for the jobs written; a missing id had lost its
    lease and nothing changed."""
    if not held:
        return {}
    return store_for(connection).release_jobs(connection, worker_id=worker_id, held=held)
