"""Bulk enqueue's COPY: the rows formatted here as text lines in one pass, and the COPY
that streams them (``copy_jobs``).

psycopg's ``Copy.write_row`` adapts every value of every row through its dumpers (about
5 µs a row, half a bulk enqueue's time on the benchmark machine): a bulk of jobs of one
task repeats every column but the id and the arguments, so the rows are written as
PostgreSQL's text COPY format directly — the repeated columns formatted once per
distinct job template, the arguments JSON-encoded and escaped per row — and sent with
``Copy.write`` in chunks. The columns and their order are ``copy_jobs``' (postgresql/jobs.sql).

The jobs are read from an iterator, a chunk at a time, so the caller's work per job
(checking its arguments, building what enqueue returns) runs while the server parses
the chunk before: the server's COPY is the longer of the two (docs/performance.md).

Text format (https://www.postgresql.org/docs/current/sql-copy.html, "Text Format"):
columns separated by a tab, rows ended by a newline, NULL as ``\\N``, and in a value a
backslash, newline, carriage return or tab written as a backslash escape. Text the
engine stores never holds a NUL (values.stored_text_problem refuses it before a row is
formatted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db.queries import sql

from ...jobs import InsertedJob, NewJob
from ..base import Store
from ..rows import records

CHUNK_ROWS = 500  # rows per Copy.write: the server parses a chunk while the next is made and formatted

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def _text(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_ESCAPES)


def _json_text(value: Any) -> str:
    # ASCII JSON holds no raw newline, carriage return or tab: only a backslash needs escaping.
    encoded: str = _dumps(value)
    return encoded.replace("\\", "\\\\") if "\\" in encoded else encoded


def _number(value: float | None) -> str:
    return "\\N" if value is None else repr(float(value))


def _time(value: datetime) -> str:
    return value.isoformat()


def _template_columns(job: NewJob, enqueued_at: str) -> tuple[str, str]:
    """The columns of ``job`` that are not its id or arguments, as two tab-joined runs:
    before the arguments (task_path … priority) and after them (state … concurrency_limit)."""
    before = "\t".join((_text(job.task_path), _text(job.backend), _text(job.queue), str(int(job.priority))))
    after = "\t".join(
        (
            "queued",
            _time(job.run_after) if job.run_after is not None else enqueued_at,
            enqueued_at,
            "0",
            str(int(job.max_attempts)),
            _number(job.timeout_seconds),
            _number(job.retry_backoff_seconds),
            _text(job.on_lease_expired),
            _text(job.unique_key),
            _text(job.tenant),
            _text(job.acting_user_id),
            _text(job.concurrency_key),
            "\\N" if job.concurrency_limit is None else str(int(job.concurrency_limit)),
        )
    )
    return before, after


def copy_chunks(
    ids: Sequence[int], jobs: Iterable[NewJob], enqueued_at: datetime
) -> Iterator[tuple[list[NewJob], str]]:
    """The COPY text of ``jobs`` (ids from reserve_job_ids, in order), in chunks of
    CHUNK_ROWS rows: each chunk's jobs and its text. ``jobs`` is read a chunk at a time,
    as the chunks are asked for; whatever reading it raises comes out of this iterator. Raises ValueError for a NaN or infinity in the arguments."""
    at = _time(enqueued_at)
    templates: dict[tuple[Any, ...], tuple[str, str]] = {}
    chunk: list[NewJob] = []
    lines: list[str] = []
    for job_id, job in zip(ids, jobs, strict=True):
        key = (
            job.task_path,
            job.backend,
            job.queue,
            job.priority,
            job.run_after,
            job.max_attempts,
            job.timeout_seconds,
            job.retry_backoff_seconds,
            job.on_lease_expired,
            job.unique_key,
            job.tenant,
            job.acting_user_id,
            job.concurrency_key,
            job.concurrency_limit,
        )
        columns = templates.get(key)
        if columns is None:
            columns = templates[key] = _template_columns(job, at)
        args = _json_text(job.args) if job.args else "[]"
        kwargs = _json_text(job.kwargs) if job.kwargs else "{}"
        lines.append(f"{job_id}\t{columns[0]}\t{args}\t{kwargs}\t{columns[1]}\n")
        chunk.append(job)
        if len(lines) >= CHUNK_ROWS:
            yield chunk, "".join(lines)
            chunk, lines = [], []
    if lines:
        yield chunk, "".join(lines)


def copy_jobs(
    store: Store,
    connection: BaseDatabaseWrapper,
    count: int,
    jobs: Iterable[NewJob],
    sent: Callable[[list[NewJob], list[InsertedJob]], None],
) -> None:
    """``count`` jobs, none with a unique key (so none can conflict): reserve their ids,
    then stream the rows with COPY, ``sent`` called after each chunk is handed over (so
    its work and the reading of the next chunk run while the server parses this one) —
    in one transaction, a savepoint in the caller's (a refused row or a failed COPY
    leaves the caller's transaction usable)."""
    with transaction.atomic(using=connection.alias), store.engine_cursor(connection) as cursor:
        cursor.execute(sql(connection, "reserve_job_ids"), {"count": count})
        reserved = records(cursor.description, [cursor.fetchone()])[0]
        enqueued_at, ids = reserved["enqueued_at"], sorted(reserved["ids"])
        refused: BaseException | None = None
        try:
            with connection.wrap_database_errors, cursor.copy(sql(connection, "copy_jobs")) as copy:
                _stream(copy, ids, enqueued_at, jobs, sent)
        except _CopyStopped as stopped:
            refused = stopped.__cause__
        if refused is not None:  # raised here, outside the handler: no cycle through _CopyStopped
            raise refused


def _stream(
    copy: Any,
    ids: list[int],
    enqueued_at: datetime,
    jobs: Iterable[NewJob],
    sent: Callable[[list[NewJob], list[InsertedJob]], None],
) -> None:
    """Write the COPY's chunks, ``sent`` after each; whatever this process raises meanwhile
    (not the driver) comes out as _CopyStopped."""
    import psycopg

    first = 0
    try:
        for rows, text in copy_chunks(ids, jobs, enqueued_at):
            copy.write(text)
            sent(rows, [InsertedJob(job_id, enqueued_at, True) for job_id in ids[first : first + len(rows)]])
            first += len(rows)
    except psycopg.Error:
        raise
    except Exception as exc:
        raise _CopyStopped from exc


class _CopyStopped(Exception):
    """This process stopped a COPY (a refused row, a failing callback). psycopg ends a COPY
    left by an exception with a CopyFail message made of the exception's text, which the
    server writes to its log; a refusal's text quotes the caller's values, so the COPY is
    ended with this one's instead (the class name alone), and the refusal is raised."""
