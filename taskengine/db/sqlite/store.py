"""The SQLite store: one writer at a time, so each batch is a short IMMEDIATE
transaction of per-row statements (its SQL beside this file); list parameters are
JSON text read with ``json_each``, instants UTC text as Django stores them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from typing import Any, ClassVar

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db.queries import sql

from ...jobs import ClaimedJob, InsertedJob, NewJob, Outcome
from ..base import RELEASED_CANCEL_ERROR_CLASS, RELEASED_CANCEL_MESSAGE, Store
from ..limited_claim import claim_limited_after
from ..rows import (
    FinishedRow,
    LeaseRow,
    PrunedBatch,
    RecoveredRow,
    Won,
    claimed_jobs,
    fetch_as,
    job_params,
    json_columns,
    records,
    to_datetime,
)


@dataclass(slots=True)
class _Recoverable:
    """A running job select_recoverable found lost."""

    id: int
    locked_by: str | None
    attempts: int
    worker_dead: Any


class SQLiteStore(Store):
    vendor: ClassVar[str] = "sqlite"
    native_arrays: ClassVar[bool] = False
    native_datetimes: ClassVar[bool] = False
    server: ClassVar[bool] = False
    concurrent_writers: ClassVar[bool] = False
    listen_notify: ClassVar[bool] = False
    bounded_statements: ClassVar[bool] = False
    aborts_failed_transactions: ClassVar[bool] = False
    dead_tuples_need_vacuum: ClassVar[bool] = False

    def new_raw_cursor(self, connection: BaseDatabaseWrapper) -> Any:
        return connection.create_cursor()

    def before_statement(self, connection: BaseDatabaseWrapper, raw: Any) -> None:
        """Nothing to set: SQLite's cursor binds and caches statements itself."""

    # --- enqueue

    def insert_rows(self, connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
        query = sql(connection, "insert_job")
        out: list[InsertedJob | None] = []
        with transaction.atomic(using=connection.alias), self.engine_cursor(connection) as cursor:
            for job in jobs:
                params = json_columns(job_params(job))
                params["run_after"] = self.datetime_param(connection, job.run_after)
                cursor.execute(query, params)
                row = cursor.fetchone()  # none: a live job holds the unique key (ON CONFLICT DO NOTHING)
                fetched = records(cursor.description, [row])[0] if row else None
                out.append(InsertedJob(fetched["id"], to_datetime(fetched["enqueued_at"]), True) if fetched else None)
        return out

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
            "queues": self.array(queues),
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": float(lease_seconds),
        }
        with transaction.atomic(using=connection.alias), self.engine_cursor(connection) as cursor:
            cursor.execute(sql(connection, "claim_jobs"), params)
            rows = cursor.fetchall()
            jobs = claimed_jobs(cursor.description, rows)
            if len(jobs) < limit and self._limits_waiting(cursor, connection, queues):
                jobs += claim_limited_after(
                    self,
                    connection,
                    worker_id=worker_id,
                    queues=queues,
                    limit=limit - len(jobs),
                    lease_seconds=lease_seconds,
                )
            if jobs:
                cursor.execute(
                    sql(connection, "log_attempts"),
                    {"ids": self.array([job.id for job in jobs]), "worker_id": worker_id},
                )
        return jobs

    def _limits_waiting(self, cursor: Any, connection: BaseDatabaseWrapper, queues: list[str]) -> bool:
        """Whether limited queues or due keyed jobs wait for ``queues`` (on PostgreSQL the
        claim statement says so itself)."""
        cursor.execute(sql(connection, "claim_needs_limits"), {"queues": self.array(queues)})
        row = cursor.fetchone()
        return bool(row and row[0])

    def extend_leases(
        self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]], lease_seconds: float
    ) -> dict[int, bool]:
        kept: dict[int, bool] = {}
        query = sql(connection, "extend_leases")
        with transaction.atomic(using=connection.alias), self.engine_cursor(connection) as cursor:
            for job_id, attempt in held:
                cursor.execute(
                    query,
                    {"id": job_id, "attempt": attempt, "worker_id": worker_id, "lease_seconds": float(lease_seconds)},
                )
                for row in fetch_as(LeaseRow, cursor):
                    kept[row.id] = row.cancel_requested_at is not None
        return kept

    def finish_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, outcomes: list[Outcome]) -> Won:
        won: Won = {}
        finish, log = sql(connection, "finish_job"), sql(connection, "finish_attempt_log")
        with transaction.atomic(using=connection.alias), self.engine_cursor(connection) as cursor:
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
                rows = fetch_as(FinishedRow, cursor)
                if not rows:
                    continue
                row = rows[0]
                won[row.id] = (row.state, to_datetime(row.finished_at))
                cursor.execute(
                    log,
                    {
                        "id": o.job_id,
                        "attempt": o.attempt,
                        "outcome": "cancelled" if row.state == "cancelled" else o.outcome,
                        "error_class": o.error_class,
                        "error_message": o.error_message,
                        "traceback": o.traceback,
                    },
                )
        return won

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
        """The two in one transaction."""
        with transaction.atomic(using=connection.alias):
            finished = self.finish_jobs(connection, worker_id=worker_id, outcomes=outcomes) if outcomes else {}
            claimed = (
                self.claim_jobs(
                    connection,
                    worker_id=worker_id,
                    queues=queues,
                    limit=limit,
                    lease_seconds=lease_seconds,
                    advisory=advisory,
                )
                if limit > 0 and queues
                else []
            )
        return finished, claimed

    def release_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]]) -> Won:
        written: Won = {}
        release, log = sql(connection, "release_job"), sql(connection, "finish_attempt_log")
        with transaction.atomic(using=connection.alias), self.engine_cursor(connection) as cursor:
            for job_id, attempt in held:
                cursor.execute(release, {"id": job_id, "attempt": attempt, "worker_id": worker_id})
                rows = fetch_as(FinishedRow, cursor)
                if not rows:
                    continue
                row = rows[0]
                written[row.id] = (row.state, to_datetime(row.finished_at))
                cancelled = row.state == "cancelled"
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

    # --- the other modules'

    def recover(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> list[RecoveredRow]:
        """select_recoverable, then per job the fenced recover_job and its lost attempt's
        log row, in one transaction."""
        recovered: list[RecoveredRow] = []
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(sql(connection, "select_recoverable"), params)
            for lost in fetch_as(_Recoverable, cursor):
                cursor.execute(
                    sql(connection, "recover_job"),
                    {
                        "id": lost.id,
                        "locked_by": lost.locked_by,
                        "attempts": lost.attempts,
                        "dead_after": params["dead_after"],
                    },
                )
                rows = fetch_as(RecoveredRow, cursor)
                if not rows:
                    continue
                if lost.worker_dead:
                    error_class, message = "taskengine.WorkerDead", f"worker {lost.locked_by} is dead"
                else:
                    error_class, message = (
                        "taskengine.LeaseExpired",
                        f"lease expired: worker {lost.locked_by} stopped heartbeating",
                    )
                cursor.execute(
                    sql(connection, "log_lost_attempt"),
                    {"id": lost.id, "attempt": lost.attempts, "error_class": error_class, "error_message": message},
                )
                row = rows[0]
                row.locked_by, row.worker_dead = lost.locked_by, bool(lost.worker_dead)
                recovered.append(row)
        return recovered

    def prune_terminal(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> PrunedBatch:
        """select_retention_batch, then its attempt rows and its jobs, in the caller's
        transaction (SQLite's one writer: the batch cannot change in between)."""
        # The resume point as text at the millisecond, rounded down: stored instants have
        # 3 (the engine's strftime) or 6 (the ORM's) decimals, and as text '….027' sorts
        # before '….027000', so a full-precision bound would pass over a job finished in
        # that millisecond. A bound at or before the true one only rescans a few rows.
        after = params["after"].astimezone(UTC)
        bound = after.strftime("%Y-%m-%d %H:%M:%S.") + f"{after.microsecond // 1000:03d}"
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "select_retention_batch"), {**params, "after": bound})
            batch = cursor.fetchall()
            ids = self.array([row[0] for row in batch])
            cursor.execute(sql(connection, "delete_retention_attempts"), {"ids": ids})
            cursor.execute(sql(connection, "delete_retention_jobs"), {"ids": ids, "state": params["state"]})
            last = max((to_datetime(row[1]) for row in batch), default=None)
            return PrunedBatch(deleted=int(cursor.rowcount), last_finished_at=last)

    def notify_queue(self, connection: BaseDatabaseWrapper, channel: str, queue: str) -> None:
        """Nothing: SQLite has no LISTEN/NOTIFY, its workers poll."""

    def clock_shift(self, table: str, columns: tuple[str, ...], seconds: float) -> tuple[str, dict[str, Any] | None]:
        """Instants are UTC text ('YYYY-MM-DD HH:MM:SS[.fff[fff]]', compared as text). A
        whole-second shift rewrites the date and time and keeps the original fraction
        (characters from the 20th on); a fractional one goes through '%f'."""
        if seconds == int(seconds):
            modifier = f"'{-int(seconds):+d} seconds'"
            moves = [f"{c} = strftime('%Y-%m-%d %H:%M:%S', {c}, {modifier}) || substr({c}, 20)" for c in columns]
        else:
            modifier = f"'{-seconds:+.6f} seconds'"
            moves = [f"{c} = strftime('%Y-%m-%d %H:%M:%f', {c}, {modifier})" for c in columns]
        # No parameters: the statement is run as it is, its '%' not placeholders.
        return f"UPDATE {table} SET {', '.join(moves)}", None

    def clock_step(self, wait: float) -> float:
        """Whole seconds: they keep every stored value's fraction exactly."""
        return float(math.ceil(wait))
