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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, overload

from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from ..jobs import ClaimedJob, InsertedJob, NewJob, Outcome
from ..queries import sql

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ADVISORY_LOCK_NAMESPACE = 0x7A5C  # first key of pg_try_advisory_xact_lock(int, int)

# How a release records the attempt of a job whose cancellation was requested: as the
# worker's own cancel would (execution.JobCancelled; the store cannot import execution).
RELEASED_CANCEL_ERROR_CLASS = "taskengine.execution.JobCancelled"
RELEASED_CANCEL_MESSAGE = "cancelled by an operator; the worker was shutting down and stopped the job"

Won = dict[int, tuple[str, datetime | None]]  # job id -> (new state, finished_at), the writes that won


# --- the one datetime adapter ---------------------------------------------------------


@overload
def to_datetime(value: None) -> None: ...
@overload
def to_datetime(value: datetime | str) -> datetime: ...
def to_datetime(value: datetime | str | None) -> datetime | None:
    """A fetched datetime as aware UTC (raw SQLite cursors return text)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a datetime: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- rows by column name --------------------------------------------------------------


def column_names(description: Sequence[Sequence[Any]], renames: Mapping[str, str] | None = None) -> list[str]:
    """The fetched columns' names (from ``cursor.description``), ``renames`` applied."""
    names = [column[0] for column in description]
    return [renames.get(name, name) for name in names] if renames else names


def records(
    description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]], renames: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Fetched rows as {column name: value}."""
    if not rows:
        return []
    names = column_names(description, renames)
    return [dict(zip(names, row, strict=True)) for row in rows]


_FIELDS: dict[type, frozenset[str]] = {}


def _field_names(cls: type[DataclassInstance]) -> frozenset[str]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    return names


def rows_as[T: DataclassInstance](
    cls: type[T],
    description: Sequence[Sequence[Any]],
    rows: Sequence[Sequence[Any]],
    renames: Mapping[str, str] | None = None,
) -> list[T]:
    """Fetched rows as ``cls`` (a dataclass) instances, each column given to the field of
    its name. A column no field is named after is an error, not silently dropped."""
    if not rows:
        return []
    names = column_names(description, renames)
    unknown = set(names) - _field_names(cls)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for the columns {sorted(unknown)}")
    return [cls(**dict(zip(names, row, strict=True))) for row in rows]


def fetch_as[T: DataclassInstance](cls: type[T], cursor: Any, renames: Mapping[str, str] | None = None) -> list[T]:
    """``rows_as`` on everything the cursor's statement returned."""
    return rows_as(cls, cursor.description, cursor.fetchall(), renames)


# --- job columns shared by the stores -------------------------------------------------


def json_value(value: Any) -> Any:
    # Most jobs have no arguments: their columns are the empty array and object, made
    # here without the decoder (new objects each time: a handler may change its own).
    if value == "[]":
        return []
    if value == "{}":
        return {}
    return json.loads(value) if isinstance(value, (str, bytes)) else value


_dumps = json.JSONEncoder(allow_nan=False).encode  # json.dumps(value, allow_nan=False), one encoder


def job_params(job: NewJob) -> dict[str, Any]:
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
        "concurrency_key": job.concurrency_key,
        "concurrency_limit": job.concurrency_limit,
    }


def json_columns(row: dict[str, Any]) -> dict[str, Any]:
    row["args"] = _dumps(row["args"]) if row["args"] else "[]"
    row["kwargs"] = _dumps(row["kwargs"]) if row["kwargs"] else "{}"
    return row


# The claim's columns are the ClaimedJob fields, but for the job's attempt counter: the
# column is ``attempts`` (the SQL reads it so too), the field ``attempt`` (the fencing token).
CLAIM_RENAMES: Mapping[str, str] = {"attempts": "attempt"}
_CLAIM_DATETIMES = ("enqueued_at", "started_at", "last_attempted_at", "run_after")


def claimed_jobs(description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]) -> list[ClaimedJob]:
    """The claimed rows as ClaimedJobs, in claim order. The claim has committed: a row
    that does not decode must still become a ClaimedJob (its attempt fails with the
    reason), never an error that drops the whole batch."""
    return in_claim_order([claimed_job(record) for record in records(description, rows, CLAIM_RENAMES)])


def in_claim_order(jobs: list[ClaimedJob]) -> list[ClaimedJob]:
    """UPDATE … RETURNING has no order; jobs are handed out in claim order."""
    jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))
    return jobs


def claimed_job(record: dict[str, Any]) -> ClaimedJob:
    try:
        record["args"], record["kwargs"], decode_error = json_value(record["args"]), json_value(record["kwargs"]), None
    except (ValueError, RecursionError) as exc:
        record["args"], record["kwargs"] = [], {}
        decode_error = f"the job's stored arguments do not decode: {exc}"
    for name in _CLAIM_DATETIMES:
        record[name] = to_datetime(record[name])
    return ClaimedJob(**record, decode_error=decode_error)


@dataclass(slots=True)
class FinishedRow:
    """A fenced write that won: finish_jobs, release_jobs."""

    id: int
    state: str
    finished_at: datetime | None
    attempts: int | None = None  # PostgreSQL's statements return it too


def won(description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]) -> Won:
    return {row.id: (row.state, to_datetime(row.finished_at)) for row in rows_as(FinishedRow, description, rows)}


@dataclass(slots=True)
class LeaseRow:
    """A lease extend_leases kept."""

    id: int
    cancel_requested: Any = None  # PostgreSQL: a boolean
    cancel_requested_at: Any = None  # SQLite: the column (see its SQL)


@dataclass(slots=True)
class RecoveredRow:
    """A job recovery wrote back (recover_expired_leases / recover_job): the attempt
    that was lost (``attempts``), held by ``locked_by``."""

    id: int
    attempts: int
    state: str
    queue: str
    task_path: str
    locked_by: str | None = None
    worker_dead: bool = False


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
    every statement, and the connection is opened or health-checked as usual."""
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
