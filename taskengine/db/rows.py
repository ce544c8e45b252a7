"""Rows by column name, the one datetime adapter, and the job columns both stores share:
what a fetched row becomes (a dict or a dataclass, by column name) and what a job's
parameters are. No SQL runs here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, overload

from django.utils.dateparse import parse_datetime

from ..jobs import ClaimedJob, NewJob

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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


_CLAIM_FIELDS = tuple(f.name for f in fields(ClaimedJob) if f.name != "decode_error")
_ARGS_AT, _KWARGS_AT = _CLAIM_FIELDS.index("args"), _CLAIM_FIELDS.index("kwargs")
_DATETIMES_AT = tuple(_CLAIM_FIELDS.index(name) for name in _CLAIM_DATETIMES)


@dataclass(frozen=True, slots=True)
class ClaimColumns:
    """Where a claim statement's columns are, by name: ``fields`` the position of each
    ClaimedJob field in field order, ``others`` those of the columns that are not fields
    (finish_and_claim's finished_state and finished_at). A statement's columns never
    change, so this is worked out once per statement (``for_statement``), not per row."""

    fields: tuple[int, ...]
    others: Mapping[str, int]

    @classmethod
    def of(cls, description: Sequence[Sequence[Any]]) -> ClaimColumns:
        names = column_names(description, CLAIM_RENAMES)
        missing = [name for name in _CLAIM_FIELDS if name not in names]
        if missing or len(set(names)) != len(names):
            raise ValueError(f"a claim's columns {names} do not name every ClaimedJob field once: missing {missing}")
        return cls(
            fields=tuple(names.index(name) for name in _CLAIM_FIELDS),
            others={name: at for at, name in enumerate(names) if name not in _CLAIM_FIELDS},
        )

    @classmethod
    def for_statement(cls, statement: str, cursor: Any) -> ClaimColumns:
        """The columns of ``statement``, whose rows ``cursor`` has just fetched."""
        columns = _STATEMENT_COLUMNS.get(statement)
        if columns is None:
            columns = _STATEMENT_COLUMNS[statement] = cls.of(cursor.description)
        return columns


_STATEMENT_COLUMNS: dict[str, ClaimColumns] = {}


def claimed_jobs(description: Sequence[Sequence[Any]], rows: Sequence[Sequence[Any]]) -> list[ClaimedJob]:
    """The claimed rows as ClaimedJobs, in claim order. The claim has committed: a row
    that does not decode must still become a ClaimedJob (its attempt fails with the
    reason), never an error that drops the whole batch."""
    if not rows:
        return []
    columns = ClaimColumns.of(description)
    return in_claim_order([claimed_job(row, columns) for row in rows])


def in_claim_order(jobs: list[ClaimedJob]) -> list[ClaimedJob]:
    """UPDATE … RETURNING has no order; jobs are handed out in claim order."""
    jobs.sort(key=lambda j: (-j.priority, j.run_after, j.id))
    return jobs


def claimed_job(row: Sequence[Any], columns: ClaimColumns) -> ClaimedJob:
    """One claimed row (its columns where ``columns`` says) as a ClaimedJob."""
    values = [row[at] for at in columns.fields]
    try:
        values[_ARGS_AT], values[_KWARGS_AT] = json_value(values[_ARGS_AT]), json_value(values[_KWARGS_AT])
        decode_error = None
    except (ValueError, RecursionError) as exc:
        values[_ARGS_AT], values[_KWARGS_AT] = [], {}
        decode_error = f"the job's stored arguments do not decode: {exc}"
    for at in _DATETIMES_AT:
        values[at] = to_datetime(values[at])
    values.append(decode_error)  # the last field
    return ClaimedJob(*values)


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


@dataclass(slots=True)
class PrunedBatch:
    """One retention batch: the jobs deleted, and the latest ``finished_at`` among them
    (where the next batch of the same pass resumes; None when nothing was deleted)."""

    deleted: int
    last_finished_at: datetime | None
