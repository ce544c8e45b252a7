"""The job store: every write the engine makes to a job row, on either database.

Functions here take a Django connection and run the named SQL of queries.py. They
never open a transaction around user code: each is one short statement (Postgres) or
one short IMMEDIATE transaction (SQLite). Every state change is compare-and-set, and
the functions report which rows they actually changed, so callers know if they won.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Self, overload

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from . import copy_rows, libpq
from .conf import engine_settings
from .jobs import ClaimedJob, InsertedJob, NewJob, Outcome
from .queries import sql

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import Loader, Params, QueryNoTemplate

ADVISORY_LOCK_NAMESPACE = 0x7A5C  # first key of pg_try_advisory_xact_lock(int, int)


@contextmanager
def engine_cursor(connection: BaseDatabaseWrapper) -> Iterator[Any]:
    """A cursor for the engine's own statements.

    - It skips Django's DEBUG query log: a busy worker runs millions of statements, and
      logging each one (connection.queries with DEBUG=True) would cost more than the
      statement.
    - On PostgreSQL it binds parameters on the server and prepares each statement
      once per connection (Django binds on the client and never prepares), so the
      engine's large, hot statements are not parsed and planned again on every run.
      With TASKENGINE["POLL_ONLY"] (PgBouncer in transaction mode) nothing is prepared.
    - One cursor per database connection is kept and reused (a new one per statement
      was a tenth of a single enqueue's time); a nested use gets a cursor of its own.

    Errors are still wrapped as django.db errors, Django's execute wrappers still see
    every statement, and the connection is opened or health-checked as usual."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        connection.validate_thread_sharing()
        kept = getattr(connection, "_taskengine_cursor", None)
        if kept is not None and kept.raw.connection is connection.connection and not kept.busy:
            cursor = kept
        else:
            cursor = _new_engine_cursor(connection)
            if kept is None or not kept.busy:
                connection._taskengine_cursor = cursor  # type: ignore[attr-defined]  # our own attribute
        if connection.vendor == "postgresql":
            cursor.raw.prepare = not engine_settings.POLL_ONLY
            if cursor.raw.prepare:
                _plan_each_run(connection, cursor.raw)
    cursor.busy = True
    try:
        yield cursor.wrapper
    finally:
        cursor.busy = False
        if getattr(connection, "_taskengine_cursor", None) is not cursor:
            cursor.wrapper.close()


def _plan_each_run(connection: BaseDatabaseWrapper, raw: psycopg.Cursor[Any]) -> None:
    """Have PostgreSQL plan the engine's prepared statements on every run
    (``plan_cache_mode = force_custom_plan``, once per physical connection).

    A prepared statement may otherwise switch to a generic plan after five runs, made
    for whatever the table looked like then, and keep it until the next ANALYZE. A
    worker that started on an empty queue kept a claim of sequential scans while a
    burst of 40,000 jobs arrived (the benchmark drained ~6,000 jobs/s instead of
    ~12,000, until autovacuum analysed the table); planned per run, each claim sees the
    table's current size. Preparing still saves parsing the long statements, and the
    custom plans measured faster than the generic ones in the benchmark.

    Only set in autocommit: a SET inside a transaction would be undone by its rollback,
    so inside one it waits for the next engine statement outside a transaction."""
    if getattr(connection, "_taskengine_custom_plans", None) is raw.connection:
        return
    if connection.in_atomic_block or not raw.connection.autocommit:
        return
    raw.execute("SET plan_cache_mode = force_custom_plan", prepare=False)
    connection._taskengine_custom_plans = raw.connection  # type: ignore[attr-defined]  # our own attribute


@dataclass(slots=True)
class _EngineCursor:
    raw: Any  # the driver's cursor
    wrapper: Any  # Django's CursorWrapper around it
    busy: bool = False


def _new_engine_cursor(connection: BaseDatabaseWrapper) -> _EngineCursor:
    if connection.vendor == "postgresql":
        pg = connection.connection
        if pg.prepare_threshold is None and not engine_settings.POLL_ONLY:
            # Django turns preparation off for the whole connection; its own
            # (client-binding) cursors never prepare, ours ask for it explicitly.
            pg.prepare_threshold = 2**31 - 1
        raw = _preparing_cursor_class()(pg)
        # Django loads every timestamptz through a Python wrapper around psycopg's
        # loader (to set its tzinfo); a claim returns four per job, so the engine's
        # cursor uses psycopg's own (C) loader. Values are the same instants, aware.
        raw.adapters.register_loader("timestamptz", _timestamptz_loader())
    else:
        raw = connection.create_cursor()
    # make_cursor wraps the driver's cursor (django-stubs types its argument as a CursorWrapper).
    return _EngineCursor(raw, connection.make_cursor(raw))  # type: ignore[arg-type]  # a driver cursor


@cache
def _timestamptz_loader() -> type[Loader]:
    import psycopg
    from psycopg.pq import Format

    loader = psycopg.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, Format.TEXT)
    assert loader is not None  # psycopg registers a text loader for every builtin type
    return loader


@cache
def _preparing_cursor_class() -> type[psycopg.Cursor[Any]]:
    import psycopg

    class PreparingCursor(psycopg.Cursor[Any]):
        """Server-side binding; prepared on first use unless ``prepare`` is False."""

        prepare = True

        def execute(  # type: ignore[override]  # the engine's statements are text, never a Template
            self,
            query: QueryNoTemplate,
            params: Params | None = None,
            *,
            prepare: bool | None = None,
            binary: bool | None = None,
        ) -> Self:
            return super().execute(query, params, prepare=self.prepare if prepare is None else prepare, binary=binary)

    return PreparingCursor


def db_now(database: str = "default") -> datetime:
    """The database clock's current time, aware UTC."""
    connection = connections[database]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "db_now"), {})
        now: datetime = to_datetime(cursor.fetchone()[0])
        return now


@overload
def to_datetime(value: None) -> None: ...
@overload
def to_datetime(value: datetime | str) -> datetime: ...
def to_datetime(value: datetime | str | None) -> datetime | None:
    """Raw cursors return text for SQLite datetimes; make every value aware UTC."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a datetime: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json(value: Any) -> Any:
    # Most jobs have no arguments: their columns are the empty array and object, made
    # here without the decoder (new objects each time: a handler may change its own).
    if value == "[]":
        return []
    if value == "{}":
        return {}
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _sqlite_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- enqueue -------------------------------------------------------------------------


def insert_jobs(connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob]:
    """Insert ``jobs`` on the caller's connection (inside the caller's transaction, if
    any) and return one InsertedJob per input, in order. A job whose unique key is held
    by a live job is not inserted; the live holder is returned with created=False."""
    if not jobs:
        return []
    if connection.vendor == "postgresql":
        rows = _insert_postgres(connection, jobs)
    else:
        rows = _insert_sqlite(connection, jobs)
    return [
        row if row is not None else _live_holder(connection, job.unique_key)
        for job, row in zip(jobs, rows, strict=True)
    ]


def _row(job: NewJob) -> dict[str, Any]:
    """A job's columns as statement parameters (args/kwargs still Python objects)."""
    return {
        "task_path": job.task_path,
        "backend": job.backend,
        "queue": job.queue,
        "priority": job.priority,
        "args": job.args,
        "kwargs": job.kwargs,
        "run_after": job.run_after,
        "max_attempts": job.max_attempts,
        "timeout_seconds": job.timeout_seconds,
        "retry_backoff_seconds": job.retry_backoff_seconds,
        "on_lease_expired": job.on_lease_expired,
        "unique_key": job.unique_key,
        "tenant": job.tenant,
        "acting_user_id": job.acting_user_id,
    }


_dumps = json.JSONEncoder(allow_nan=False).encode  # json.dumps(value, allow_nan=False), one encoder


def _json_columns(row: dict[str, Any]) -> dict[str, Any]:
    row["args"] = _dumps(row["args"]) if row["args"] else "[]"
    row["kwargs"] = _dumps(row["kwargs"]) if row["kwargs"] else "{}"
    return row


BULK_INSERT_MIN = 100  # from this many jobs without unique keys, Postgres enqueue streams rows with COPY


def _insert_postgres(connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
    if len(jobs) >= BULK_INSERT_MIN and all(job.unique_key is None for job in jobs):
        return _copy_postgres(connection, jobs)
    if len(jobs) == 1 and jobs[0].unique_key is None and libpq.usable(connection):
        # The common enqueue() outside a transaction: one round trip through libpq.
        job_id, _, enqueued_at = libpq.run(connection, "insert_job", _json_columns(_row(jobs[0])))[0]
        assert job_id is not None and enqueued_at is not None  # NOT NULL columns
        return [InsertedJob(int(job_id), libpq.load_timestamptz(connection, enqueued_at), True)]
    with engine_cursor(connection) as cursor:
        if len(jobs) == 1:  # a plain prepared VALUES insert
            name = "insert_job" if jobs[0].unique_key is None else "insert_job_unique"
            cursor.execute(sql(connection, name), _json_columns(_row(jobs[0])))
        else:
            rows = [_row(j) for j in jobs]
            for row in rows:
                row["run_after"] = row["run_after"].isoformat() if row["run_after"] else None
            cursor.execute(
                sql(connection, "insert_jobs"), {"jobs": json.dumps(rows, separators=(",", ":"), allow_nan=False)}
            )
        returned = cursor.fetchall()
    # Rows come back in insertion order (ORDER BY position); rows skipped by ON CONFLICT
    # are absent, and only rows with a unique key can be skipped.
    out: list[InsertedJob | None] = []
    it = iter(returned)
    pending = next(it, None)
    for job in jobs:
        if pending is not None and (job.unique_key is None or pending[1] == job.unique_key):
            out.append(InsertedJob(pending[0], pending[2], True))
            pending = next(it, None)
        else:
            out.append(None)
    return out


def _copy_postgres(connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
    """Many jobs, none with a unique key (so none can conflict): reserve their ids,
    then stream the rows with COPY — in one transaction, the caller's if it has one."""
    with transaction.atomic(using=connection.alias, savepoint=False), engine_cursor(connection) as cursor:
        cursor.execute(sql(connection, "reserve_job_ids"), {"count": len(jobs)})
        enqueued_at, ids = cursor.fetchone()
        with connection.wrap_database_errors, cursor.copy(sql(connection, "copy_jobs")) as copy:
            for chunk in copy_rows.copy_chunks(ids, jobs, enqueued_at):
                copy.write(chunk)
    return [InsertedJob(job_id, enqueued_at, True) for job_id in ids]


def _insert_sqlite(connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
    query = sql(connection, "insert_job")
    out: list[InsertedJob | None] = []
    with transaction.atomic(using=connection.alias), engine_cursor(connection) as cursor:
        for job in jobs:
            params = _json_columns(_row(job))
            params["run_after"] = _sqlite_datetime(job.run_after)
            cursor.execute(query, params)
            row = cursor.fetchone()
            out.append(InsertedJob(row[0], to_datetime(row[2]), True) if row else None)
    return out


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
    if connection.vendor == "postgresql":
        name = "claim_jobs_advisory" if advisory else "claim_jobs"
        params = {
            "queues": list(queues),
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": float(lease_seconds),
            "lock_namespace": ADVISORY_LOCK_NAMESPACE,
        }
        with engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, name), params)
            rows = cursor.fetchall()
    else:
        params = {
            "queues": json.dumps(list(queues)),
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": float(lease_seconds),
        }
        with transaction.atomic(using=connection.alias), engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, "claim_jobs"), params)
            rows = cursor.fetchall()
            if rows:
                cursor.execute(
                    sql(connection, "log_attempts"), {"ids": json.dumps([r[0] for r in rows]), "worker_id": worker_id}
                )
    return _claimed_jobs(rows)


def _claimed_jobs(rows: list[Any]) -> list[ClaimedJob]:
    # The claim has committed: a row that does not decode must still become a ClaimedJob
    # (its attempt fails with the reason), never an error that drops the whole batch.
    jobs = [_claimed_job(r) for r in rows]
    # UPDATE … RETURNING has no order; hand jobs out in claim order.
    jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))
    return jobs


def _claimed_job(r: Any) -> ClaimedJob:
    try:
        args, kwargs, decode_error = _json(r[5]), _json(r[6]), None
    except (ValueError, RecursionError) as exc:
        args, kwargs, decode_error = [], {}, f"the job's stored arguments do not decode: {exc}"
    return ClaimedJob(
        id=r[0],
        task_path=r[1],
        backend=r[2],
        queue=r[3],
        priority=r[4],
        args=args,
        kwargs=kwargs,
        attempt=r[7],
        max_attempts=r[8],
        timeout_seconds=r[9],
        retry_backoff_seconds=r[10],
        enqueued_at=to_datetime(r[11]),
        started_at=to_datetime(r[12]),
        last_attempted_at=to_datetime(r[13]),
        run_after=to_datetime(r[14]),
        tenant=r[15],
        acting_user_id=r[16],
        on_lease_expired=r[17],
        unique_key=r[18],
        decode_error=decode_error,
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
    if connection.vendor == "postgresql":
        with engine_cursor(connection) as cursor:
            cursor.execute(
                sql(connection, "extend_leases"),
                {
                    "ids": [h[0] for h in held],
                    "attempts": [h[1] for h in held],
                    "worker_id": worker_id,
                    "lease_seconds": float(lease_seconds),
                },
            )
            return {row[0]: bool(row[1]) for row in cursor.fetchall()}
    kept: dict[int, bool] = {}
    query = sql(connection, "extend_leases")
    with transaction.atomic(using=connection.alias), engine_cursor(connection) as cursor:
        for job_id, attempt in held:
            cursor.execute(
                query, {"id": job_id, "attempt": attempt, "worker_id": worker_id, "lease_seconds": float(lease_seconds)}
            )
            row = cursor.fetchone()
            if row:
                kept[row[0]] = row[1] is not None
    return kept


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
    if connection.vendor == "postgresql" and (limit <= 0 or not queues):
        return finish_jobs(connection, worker_id=worker_id, outcomes=outcomes), []
    if connection.vendor != "postgresql" or not outcomes:
        with transaction.atomic(using=connection.alias):
            finished = finish_jobs(connection, worker_id=worker_id, outcomes=outcomes)
            claimed = claim_jobs(
                connection,
                worker_id=worker_id,
                queues=queues,
                limit=limit,
                lease_seconds=lease_seconds,
                advisory=advisory,
            )
        return finished, claimed
    params = _finish_params(worker_id, outcomes)
    params.update(
        queues=list(queues),
        limit=limit,
        lease_seconds=float(lease_seconds),
        lock_namespace=ADVISORY_LOCK_NAMESPACE,
    )
    with engine_cursor(connection) as cursor:
        cursor.execute(sql(connection, "finish_and_claim_advisory" if advisory else "finish_and_claim"), params)
        rows = cursor.fetchall()
    won: dict[int, tuple[str, datetime | None]] = {}
    claimed_rows = []
    for row in rows:
        if row[19] is None:
            claimed_rows.append(row)
        else:
            won[row[0]] = (row[19], row[20])
    return won, _claimed_jobs(claimed_rows)


def _finish_params(worker_id: str, outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "ids": [o.job_id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "states": [o.next_state for o in outcomes],
        "outcomes": [o.outcome for o in outcomes],
        "retry_delays": [float(o.retry_delay) for o in outcomes],
        "return_values": [o.return_value for o in outcomes],
        "error_classes": [o.error_class for o in outcomes],
        "error_messages": [o.error_message for o in outcomes],
        "tracebacks": [o.traceback for o in outcomes],
    }


def finish_jobs(
    connection: BaseDatabaseWrapper, *, worker_id: str, outcomes: list[Outcome]
) -> dict[int, tuple[str, datetime | None]]:
    """Write a batch of attempt outcomes, fenced. Returns {job id: (new state,
    finished_at)} for the
    writes that won; a missing id means the worker had lost the lease and nothing
    changed."""
    if not outcomes:
        return {}
    if connection.vendor == "postgresql":
        with engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, "finish_jobs"), _finish_params(worker_id, outcomes))
            return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    won: dict[int, tuple[str, datetime | None]] = {}
    finish, log = sql(connection, "finish_job"), sql(connection, "finish_attempt_log")
    with transaction.atomic(using=connection.alias), engine_cursor(connection) as cursor:
        for o in outcomes:
            cursor.execute(
                finish,
                {
                    "id": o.job_id,
                    "attempt": o.attempt,
                    "worker_id": worker_id,
                    "next_state": o.next_state,
                    "retry_delay": float(o.retry_delay),
                    "return_value": o.return_value,
                },
            )
            row = cursor.fetchone()
            if row is None:
                continue
            won[row[0]] = (row[1], to_datetime(row[2]))
            cursor.execute(
                log,
                {
                    "id": o.job_id,
                    "attempt": o.attempt,
                    "outcome": "cancelled" if row[1] == "cancelled" else o.outcome,
                    "error_class": o.error_class,
                    "error_message": o.error_message,
                    "traceback": o.traceback,
                },
            )
    return won


# How a release records the attempt of a job whose cancellation was requested: as the
# worker's own cancel would (execution.JobCancelled; store cannot import execution).
RELEASED_CANCEL_ERROR_CLASS = "taskengine.execution.JobCancelled"
RELEASED_CANCEL_MESSAGE = "cancelled by an operator; the worker was shutting down and stopped the job"


def release_jobs(
    connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]]
) -> dict[int, tuple[str, datetime | None]]:
    """Hand still-running jobs back to the queue (graceful shutdown). Fenced. A job whose
    cancellation was requested ends ``cancelled`` instead (its attempt too). Returns
    {job id: (new state, finished_at)} for the jobs written; a missing id had lost its
    lease and nothing changed."""
    if not held:
        return {}
    if connection.vendor == "postgresql":
        with engine_cursor(connection) as cursor:
            cursor.execute(
                sql(connection, "release_jobs"),
                {
                    "ids": [h[0] for h in held],
                    "attempts": [h[1] for h in held],
                    "worker_id": worker_id,
                    "cancel_error_class": RELEASED_CANCEL_ERROR_CLASS,
                    "cancel_error_message": RELEASED_CANCEL_MESSAGE,
                },
            )
            return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    written: dict[int, tuple[str, datetime | None]] = {}
    release, log = sql(connection, "release_job"), sql(connection, "finish_attempt_log")
    with transaction.atomic(using=connection.alias), engine_cursor(connection) as cursor:
        for job_id, attempt in held:
            cursor.execute(release, {"id": job_id, "attempt": attempt, "worker_id": worker_id})
            row = cursor.fetchone()
            if row is None:
                continue
            written[row[0]] = (row[1], to_datetime(row[2]))
            cancelled = row[1] == "cancelled"
            cursor.execute(
                log,
                {
                    "id": job_id,
                    "attempt": attempt,
                    "outcome": "cancelled" if cancelled else "released",
                    "error_class": RELEASED_CANCEL_ERROR_CLASS if cancelled else None,
                    "error_message": RELEASED_CANCEL_MESSAGE if cancelled else "",
                    "traceback": "",
                },
            )
    return written
