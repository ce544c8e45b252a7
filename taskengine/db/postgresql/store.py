"""The PostgreSQL store: each operation one statement (its SQL beside this file), the
engine's cursor binding on the server and preparing each statement once per connection."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db.queries import sql

from ...conf import engine_settings
from ...jobs import ClaimedJob, InsertedJob, NewJob, Outcome
from ..base import ADVISORY_LOCK_NAMESPACE, RELEASED_CANCEL_ERROR_CLASS, RELEASED_CANCEL_MESSAGE, Store
from ..limited_claim import LIMITS_WAITING, claim_limited_after
from ..rows import (
    ClaimColumns,
    LeaseRow,
    PrunedBatch,
    RecoveredRow,
    Won,
    claimed_job,
    column_names,
    fetch_as,
    in_claim_order,
    job_params,
    json_columns,
    won,
)
from . import array_literals as literal
from . import libpq
from .copy_rows import copy_jobs
from .cursors import engine_cursor_class, timestamptz_loader

if TYPE_CHECKING:
    import psycopg

BULK_INSERT_MIN = 100  # from this many jobs without unique keys, enqueue streams rows with COPY


class PostgresStore(Store):
    vendor: ClassVar[str] = "postgresql"
    native_arrays: ClassVar[bool] = True
    native_datetimes: ClassVar[bool] = True
    server: ClassVar[bool] = True
    concurrent_writers: ClassVar[bool] = True
    listen_notify: ClassVar[bool] = True
    bounded_statements: ClassVar[bool] = True
    aborts_failed_transactions: ClassVar[bool] = True
    dead_tuples_need_vacuum: ClassVar[bool] = True

    # --- the engine cursor

    def new_raw_cursor(self, connection: BaseDatabaseWrapper) -> Any:
        pg = connection.connection
        if pg.prepare_threshold is None and not engine_settings.POLL_ONLY:
            # Django turns preparation off for the whole connection; its own
            # (client-binding) cursors never prepare, ours ask for it explicitly.
            pg.prepare_threshold = 2**31 - 1
        raw = engine_cursor_class(connection)(pg)
        # Django loads every timestamptz through a Python wrapper around psycopg's
        # loader (to set its tzinfo); a claim returns four per job, so the engine's
        # cursor uses psycopg's own (C) loader. Values are the same instants, aware.
        raw.adapters.register_loader("timestamptz", timestamptz_loader())
        return raw

    def before_statement(self, connection: BaseDatabaseWrapper, raw: Any) -> None:
        raw.prepare = not engine_settings.POLL_ONLY
        if raw.prepare:
            _plan_each_run(connection, raw)
            if getattr(connection, "_taskengine_worker_connection", False):
                _worker_planner_settings(connection, raw)

    # --- enqueue

    def insert_rows(self, connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
        if len(jobs) == 1:
            return [self._insert_one(connection, jobs[0])]
        if len(jobs) >= BULK_INSERT_MIN and all(job.unique_key is None for job in jobs):
            inserted: list[InsertedJob | None] = []
            copy_jobs(self, connection, len(jobs), jobs, lambda _, chunk: inserted.extend(chunk))
            return inserted
        rows = [job_params(j) for j in jobs]
        for row in rows:
            row["run_after"] = row["run_after"].isoformat() if row["run_after"] else None
        with self.engine_cursor(connection) as cursor:
            cursor.execute(
                sql(connection, "insert_jobs"), {"jobs": json.dumps(rows, separators=(",", ":"), allow_nan=False)}
            )
            returned = _returned(cursor, "insert_jobs")
        # Rows come back in insertion order (ORDER BY position); rows skipped by ON CONFLICT
        # are absent, and only rows with a unique key can be skipped.
        out: list[InsertedJob | None] = []
        it = iter(returned)
        pending = next(it, None)
        for job in jobs:
            if pending is not None and (job.unique_key is None or pending["unique_key"] == job.unique_key):
                out.append(InsertedJob(pending["id"], pending["enqueued_at"], True))
                pending = next(it, None)
            else:
                out.append(None)
        return out

    def insert_streamed(
        self,
        connection: BaseDatabaseWrapper,
        count: int,
        jobs: Iterable[NewJob],
        sent: Callable[[list[NewJob], list[InsertedJob]], None],
    ) -> None:
        if count < BULK_INSERT_MIN:
            super().insert_streamed(connection, count, jobs, sent)
        else:
            copy_jobs(self, connection, count, jobs, sent)

    def _insert_one(self, connection: BaseDatabaseWrapper, job: NewJob) -> InsertedJob | None:
        """One job (the common ``enqueue()``): a plain prepared VALUES insert, with ON
        CONFLICT only for a unique key (None: a live job holds it)."""
        params = json_columns(job_params(job))
        if job.unique_key is None and libpq.usable(connection):
            # TASKENGINE["LIBPQ_FAST_PATH"]: enqueue() outside a transaction through libpq itself.
            job_id, _, enqueued_at = libpq.run(connection, "insert_job", params)[0]
            assert job_id is not None and enqueued_at is not None  # NOT NULL columns
            return InsertedJob(int(job_id), libpq.load_timestamptz(connection, enqueued_at), True)
        name = "insert_job" if job.unique_key is None else "insert_job_unique"
        with self.engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, name), params)
            returned = _returned(cursor, name)
        return InsertedJob(returned[0]["id"], returned[0]["enqueued_at"], True) if returned else None

    # --- claim, heartbeat, finish, release

    def claim_jobs(
        self,
        connection: BaseDatabaseWrapper,
        *,
        worker_id: str,
        queues: list[str],
        limit: int,
        lease_seconds: float,
        advisory: bool,
    ) -> list[ClaimedJob]:
        params = {
            "queues": literal.texts(queues),
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": float(lease_seconds),
            "lock_namespace": ADVISORY_LOCK_NAMESPACE,
        }
        statement = sql(connection, "claim_jobs_advisory" if advisory else "claim_jobs")
        with self.engine_cursor(connection) as cursor:
            cursor.execute(statement, params)
            rows = cursor.fetchall()
            columns = ClaimColumns.for_statement(statement, cursor)
        # A row of NULLs: limited queues or keyed jobs wait (claim_jobs_result).
        id_at = columns.fields[0]
        jobs = in_claim_order([claimed_job(row, columns) for row in rows if row[id_at] is not None])
        if len(jobs) < len(rows) and len(jobs) < limit:
            jobs += claim_limited_after(
                self,
                connection,
                worker_id=worker_id,
                queues=queues,
                limit=limit - len(jobs),
                lease_seconds=lease_seconds,
            )
        return jobs

    def extend_leases(
        self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]], lease_seconds: float
    ) -> dict[int, bool]:
        with self.engine_cursor(connection) as cursor:
            cursor.execute(
                sql(connection, "extend_leases"),
                {
                    "ids": literal.integers([h[0] for h in held]),
                    "attempts": literal.integers([h[1] for h in held]),
                    "worker_id": worker_id,
                    "lease_seconds": float(lease_seconds),
                },
            )
            return {row.id: bool(row.cancel_requested) for row in fetch_as(LeaseRow, cursor)}

    def finish_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, outcomes: list[Outcome]) -> Won:
        with self.engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, "finish_jobs"), self._finish_params(worker_id, outcomes))
            return won(cursor.description, cursor.fetchall())

    def finish_and_claim(
        self,
        connection: BaseDatabaseWrapper,
        *,
        worker_id: str,
        outcomes: list[Outcome],
        queues: list[str],
        limit: int,
        lease_seconds: float,
        advisory: bool,
    ) -> tuple[Won, list[ClaimedJob]]:
        """One statement: one round trip and one commit for the batch."""
        if limit <= 0 or not queues:
            return (self.finish_jobs(connection, worker_id=worker_id, outcomes=outcomes) if outcomes else {}), []
        if not outcomes:
            return {}, self.claim_jobs(
                connection,
                worker_id=worker_id,
                queues=queues,
                limit=limit,
                lease_seconds=lease_seconds,
                advisory=advisory,
            )
        params = self._finish_params(worker_id, outcomes)
        params.update(
            queues=literal.texts(queues),
            limit=limit,
            lease_seconds=float(lease_seconds),
            lock_namespace=ADVISORY_LOCK_NAMESPACE,
        )
        statement = sql(connection, "finish_and_claim_advisory" if advisory else "finish_and_claim")
        with self.engine_cursor(connection) as cursor:
            cursor.execute(statement, params)
            rows = cursor.fetchall()
            columns = ClaimColumns.for_statement(statement, cursor)
        finished, claimed, limits_waiting = _finished_and_claimed(rows, columns)
        if limits_waiting and len(claimed) < limit:
            claimed += claim_limited_after(
                self,
                connection,
                worker_id=worker_id,
                queues=queues,
                limit=limit - len(claimed),
                lease_seconds=lease_seconds,
            )
        return finished, claimed

    def _finish_params(self, worker_id: str, outcomes: list[Outcome]) -> dict[str, Any]:
        return {
            "worker_id": worker_id,
            # Array literals written here, not lists for psycopg to adapt (array_literals.py).
            "ids": literal.integers([o.job_id for o in outcomes]),
            "attempts": literal.integers([o.attempt for o in outcomes]),
            "states": literal.texts([o.next_state for o in outcomes]),
            "outcomes": literal.texts([o.outcome for o in outcomes]),
            "retry_delays": literal.floats([o.retry_delay for o in outcomes]),
            "return_values": literal.texts([o.return_value for o in outcomes]),
            "error_classes": literal.texts([o.error_class for o in outcomes]),
            "error_messages": literal.texts([o.error_message for o in outcomes]),
            "tracebacks": literal.texts([o.traceback for o in outcomes]),
        }

    def release_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]]) -> Won:
        with self.engine_cursor(connection) as cursor:
            cursor.execute(
                sql(connection, "release_jobs"),
                {
                    "ids": literal.integers([h[0] for h in held]),
                    "attempts": literal.integers([h[1] for h in held]),
                    "worker_id": worker_id,
                    "cancel_error_class": RELEASED_CANCEL_ERROR_CLASS,
                    "cancel_error_message": RELEASED_CANCEL_MESSAGE,
                },
            )
            return won(cursor.description, cursor.fetchall())

    # --- the other modules'

    def recover(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> list[RecoveredRow]:
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "recover_expired_leases"), params)
            return fetch_as(RecoveredRow, cursor)

    def prune_terminal(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> PrunedBatch:
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "prune_retention_batch"), params)
            [batch] = fetch_as(PrunedBatch, cursor)
            return batch

    def notify_queue(self, connection: BaseDatabaseWrapper, channel: str, queue: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, queue])

    def queue_depth(self, connection: BaseDatabaseWrapper, cursor: Any, queue: str, counted: int, cap: int) -> int:
        """Past the cap, the planner's estimate (EXPLAIN, no scan) if it is larger."""
        if counted < cap:
            return counted
        cursor.execute(sql(connection, "metrics_queue_depth_estimate"), {"queue": queue})
        plan = cursor.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return max(counted, int(plan[0]["Plan"]["Plan Rows"]))

    def clock_shift(self, table: str, columns: tuple[str, ...], seconds: float) -> tuple[str, dict[str, Any] | None]:
        moves = ", ".join(f"{c} = {c} - make_interval(secs => %(seconds)s)" for c in columns)
        return f"UPDATE {table} SET {moves}", {"seconds": seconds}


def _finished_and_claimed(rows: Sequence[Sequence[Any]], columns: ClaimColumns) -> tuple[Won, list[ClaimedJob], bool]:
    """finish_and_claim's rows apart: a claimed job has finished_state NULL; a finished one
    its id, finished_state and finished_at and NULL in every claim column; a row with
    finished_state 'limits' says limited queues or keyed jobs wait (finish_and_claim_result)."""
    finished: Won = {}
    claimed: list[ClaimedJob] = []
    limits_waiting = False
    id_at, state_at, finished_at_at = columns.fields[0], columns.others["finished_state"], columns.others["finished_at"]
    for row in rows:
        state = row[state_at]
        if state is None:
            claimed.append(claimed_job(row, columns))
        elif state == LIMITS_WAITING:
            limits_waiting = True
        else:
            finished[row[id_at]] = (state, row[finished_at_at])
    return finished, in_claim_order(claimed), limits_waiting


_RETURNED_COLUMNS: dict[str, list[str]] = {}


def _returned(cursor: Any, statement: str) -> list[dict[str, Any]]:
    """``records`` of the rows the named ``statement`` returned. A named statement always
    returns the same columns, so their names are read from ``cursor.description`` once
    per statement (psycopg builds a Column object per column on each read: ~10 µs of a
    single enqueue's client CPU, docs/performance.md)."""
    rows = cursor.fetchall()
    names = _RETURNED_COLUMNS.get(statement)
    if names is None:
        names = _RETURNED_COLUMNS[statement] = column_names(cursor.description)
    return [dict(zip(names, row, strict=True)) for row in rows]


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
    _set_once(connection, raw, "_taskengine_custom_plans", "SET plan_cache_mode = force_custom_plan")


def _worker_planner_settings(connection: BaseDatabaseWrapper, raw: psycopg.Cursor[Any]) -> None:
    """Give a worker's own connection (``store.worker_connection``) the planner settings
    of ``worker_planner_settings`` (no sequential or bitmap scans, no JIT; jobs.sql says
    why), once per physical connection. As with ``_plan_each_run``: only in autocommit (a
    rollback would undo the SET), and never with POLL_ONLY (the caller's check: behind
    PgBouncer in transaction mode a session's SET reaches other clients; docs/queues.md
    says what to do there instead)."""
    _set_once(connection, raw, "_taskengine_worker_settings", sql(connection, "worker_planner_settings"))


def _set_once(connection: BaseDatabaseWrapper, raw: psycopg.Cursor[Any], marker: str, statement: str) -> None:
    """Run the session ``statement`` once per physical connection (``marker``, an
    attribute of ours on Django's wrapper, names the connection it last ran on): only in
    autocommit, since a rollback would undo a SET made inside a transaction; inside one
    it waits for the connection's next engine statement outside a transaction."""
    if getattr(connection, marker, None) is raw.connection:
        return
    if connection.in_atomic_block or not raw.connection.autocommit:
        return
    raw.execute(statement, prepare=False)
    setattr(connection, marker, raw.connection)
