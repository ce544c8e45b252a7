"""The store interface and what both stores share.

``Store`` names every operation the engine runs against a database whose SQL or
transaction shape differs between vendors; ``postgresql/store.py`` and
``sqlite/store.py`` implement it, each beside its own SQL files. Code outside
``taskengine/db/`` asks ``store_for(connection)`` (``taskengine.db``) and never looks at
``connection.vendor`` itself.

Shared here, once for both stores:

- ``Store.array``: a list parameter in the shape the vendor's SQL expects (a PostgreSQL
  array; JSON text that SQLite's ``json_each`` reads);
- ``Store.datetime_param`` and ``to_datetime``: a datetime parameter as the vendor
  stores it, and a fetched value back to an aware UTC datetime;
- ``fetch_as`` / ``rows_as``: rows to dataclasses by column name (``cursor.description``),
  never by position;
- ``engine_cursor``: the engine's own cursor (the store adds its vendor's set-up).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, overload

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db.queries import sql

from ..jobs import ClaimedJob, InsertedJob, NewJob, Outcome
from .rows import PrunedBatch, RecoveredRow, Won, to_datetime

if TYPE_CHECKING:
    pass

JOBS_CHANNEL = "taskengine_jobs"  # the channel the taskengine_job_notify trigger (migration 0004) sends on
ADVISORY_LOCK_NAMESPACE = 0x7A5C  # first key of pg_try_advisory_xact_lock(int, int)

# How a release records the attempt of a job whose cancellation was requested: as the
# worker's own cancel would (execution.JobCancelled; the store cannot import execution).
RELEASED_CANCEL_ERROR_CLASS = "taskengine.runtime.execution.JobCancelled"
RELEASED_CANCEL_MESSAGE = "cancelled by an operator; the worker was shutting down and stopped the job"


# --- the engine's cursor --------------------------------------------------------------


@dataclass(slots=True)
class EngineCursor:
    raw: Any  # the driver's cursor
    wrapper: Any  # Django's CursorWrapper around it
    busy: bool = False


# --- the interface --------------------------------------------------------------------


class Store(ABC):
    """Every operation whose SQL or transaction shape depends on the database. One
    instance per vendor (``store_for``); it keeps no per-connection state."""

    vendor: ClassVar[str]
    # A list parameter is bound as the driver's array (else as JSON text).
    native_arrays: ClassVar[bool]
    # A datetime parameter is bound as the driver's datetime (else as Django's stored text).
    native_datetimes: ClassVar[bool]
    # A client/server database other processes reach: LISTEN/NOTIFY wake-ups, pgbench,
    # the benchmark's multi-process figures.
    server: ClassVar[bool]
    # Many writers at once: claims lock rows and keys and read candidates in batched
    # statements (PostgreSQL); else one writer at a time orders every claim (SQLite).
    concurrent_writers: ClassVar[bool]
    # LISTEN/NOTIFY: a worker can be woken on enqueue (else it polls).
    listen_notify: ClassVar[bool]
    # A statement can be bounded by a timeout (statement_timeout), and the planner's row
    # estimate read without a scan (EXPLAIN): the console's bounded counts use both.
    bounded_statements: ClassVar[bool]
    # A failed statement aborts the whole transaction until rollback (PostgreSQL's
    # INERROR state; SQLite carries on).
    aborts_failed_transactions: ClassVar[bool]
    # Updates and deletes leave dead row versions that only VACUUM removes, and the
    # leader's vacuum (leader/vacuum.py) runs its statements (PostgreSQL; SQLite reuses
    # freed pages by itself).
    dead_tuples_need_vacuum: ClassVar[bool]

    # --- the shared adapters

    @overload
    def array(self, values: None) -> None: ...
    @overload
    def array(self, values: Sequence[Any]) -> Any: ...
    def array(self, values: Sequence[Any] | None) -> Any:
        """A list parameter as the vendor's SQL expects it (None stays None: "no filter")."""
        if values is None:
            return None
        return list(values) if self.native_arrays else json.dumps(list(values))

    def datetime_param(self, connection: BaseDatabaseWrapper, value: datetime | None) -> Any:
        """A datetime parameter as the vendor stores it: compared with what the ORM wrote."""
        if value is None or self.native_datetimes:
            return value
        return connection.ops.adapt_datetimefield_value(value)

    # --- the clock

    def db_now(self, connection: BaseDatabaseWrapper) -> datetime:
        """The database clock's current time, aware UTC."""
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "db_now"), {})
            now: datetime = to_datetime(cursor.fetchone()[0])
            return now

    # --- the engine cursor

    def engine_cursor(self, connection: BaseDatabaseWrapper) -> AbstractContextManager[Any]:
        """The cursor the engine's own statements run on (see ``_engine_cursor``)."""
        return _engine_cursor(self, connection)

    @abstractmethod
    def new_raw_cursor(self, connection: BaseDatabaseWrapper) -> Any:
        """A new driver cursor for engine_cursor."""

    @abstractmethod
    def before_statement(self, connection: BaseDatabaseWrapper, raw: Any) -> None:
        """Called each time engine_cursor hands ``raw`` out."""

    # --- enqueue, claim, heartbeat, finish, release (the job's life; all fenced)

    @abstractmethod
    def insert_rows(self, connection: BaseDatabaseWrapper, jobs: list[NewJob]) -> list[InsertedJob | None]:
        """Insert ``jobs``; None for a job whose unique key a live job holds."""

    def insert_streamed(
        self,
        connection: BaseDatabaseWrapper,
        count: int,
        jobs: Iterable[NewJob],
        sent: Callable[[list[NewJob], list[InsertedJob]], None],
    ) -> None:
        """Insert the ``count`` jobs ``jobs`` yields, none with a unique key, in one
        transaction (a savepoint in the caller's), calling ``sent`` with each run of
        them and their ids as it is handed to the database — before the commit, so
        ``sent`` builds what the caller returns and nothing that assumes the jobs are
        stored. Whatever reading ``jobs`` raises rolls back the whole call. Here: all
        jobs read first, then inserted; a store that streams reads them as it sends."""
        rows = list(jobs)
        with transaction.atomic(using=connection.alias):  # sent's failure rolls the rows back too
            inserted = self.insert_rows(connection, rows)
            sent(rows, [job for job in inserted if job is not None])

    @abstractmethod
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
        """Lease up to ``limit`` due jobs of unpaused ``queues`` (non-empty, limit > 0)."""

    @abstractmethod
    def extend_leases(
        self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]], lease_seconds: float
    ) -> dict[int, bool]:
        """{job id: cancel requested} for the leases still held (``held`` non-empty)."""

    @abstractmethod
    def finish_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, outcomes: list[Outcome]) -> Won:
        """Write the outcomes (non-empty), fenced on (id, attempt, worker)."""

    @abstractmethod
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
        """finish_jobs and claim_jobs committed together."""

    @abstractmethod
    def release_jobs(self, connection: BaseDatabaseWrapper, *, worker_id: str, held: list[tuple[int, int]]) -> Won:
        """Hand running jobs (``held`` non-empty) back, fenced."""

    # --- the other modules' vendor differences

    @abstractmethod
    def recover(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> list[RecoveredRow]:
        """Recovery's one run (maintenance/recovery.py), in one transaction."""

    @abstractmethod
    def prune_terminal(self, connection: BaseDatabaseWrapper, params: dict[str, Any]) -> PrunedBatch:
        """Retention's one batch (leader/retention.py), inside the caller's fenced
        transaction: up to ``batch_size`` jobs of ``state`` finished ``age_seconds`` ago
        or earlier and not before ``after`` (an aware datetime), oldest first, deleted with
        their attempt rows. The only delete of jobs in the engine. SQL, not the ORM: no
        model signals are sent."""

    @abstractmethod
    def notify_queue(self, connection: BaseDatabaseWrapper, channel: str, queue: str) -> None:
        """Wake the LISTENing workers of ``queue`` when the transaction commits (where the
        database has LISTEN/NOTIFY)."""

    def queue_depth(self, connection: BaseDatabaseWrapper, cursor: Any, queue: str, counted: int, cap: int) -> int:
        """A queue's depth for the metrics: ``counted`` (capped at ``cap``), or, where the
        database can estimate it, the larger of the two once the count hit the cap."""
        return counted

    @abstractmethod
    def clock_shift(self, table: str, columns: tuple[str, ...], seconds: float) -> tuple[str, dict[str, Any] | None]:
        """The UPDATE moving ``columns`` of ``table`` ``seconds`` into the past
        (testing.clock), and its parameters."""

    def clock_step(self, wait: float) -> float:
        """The clock move that covers ``wait`` seconds (whole milliseconds)."""
        return math.ceil(wait * 1000) / 1000


@contextmanager
def _engine_cursor(store: Store, connection: BaseDatabaseWrapper) -> Iterator[Any]:
    """A cursor for the engine's own statements.

    - It skips Django's DEBUG query log: a busy worker runs millions of statements, and
      logging each one (connection.queries with DEBUG=True) would cost more than the
      statement.
    - The store sets the driver's cursor up for its vendor (PostgreSQL: server-side
      binding, each statement prepared once per connection; see its store).
    - One cursor per database connection is kept and reused (a new one per statement
      was a tenth of a single enqueue's time); a nested use gets a cursor of its own.

    Errors are still wrapped as django.db errors, Django's execute wrappers still see
    every statement, django-prometheus's database counters count it (the store builds
    its driver cursor inside that backend's counting class; docs/observability.md),
    and the connection is opened or health-checked as usual."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        connection.validate_thread_sharing()
        kept = getattr(connection, "_taskengine_cursor", None)
        if kept is not None and kept.raw.connection is connection.connection and not kept.busy:
            cursor = kept
        else:
            raw = store.new_raw_cursor(connection)
            # make_cursor wraps the driver's cursor (django-stubs types its argument as a CursorWrapper).
            cursor = EngineCursor(raw, connection.make_cursor(raw))
            if kept is None or not kept.busy:
                connection._taskengine_cursor = cursor  # type: ignore[attr-defined]  # our own attribute
        store.before_statement(connection, cursor.raw)
    cursor.busy = True
    try:
        yield cursor.wrapper
    finally:
        cursor.busy = False
        if getattr(connection, "_taskengine_cursor", None) is not cursor:
            cursor.wrapper.close()
