"""One named statement, one round trip, through libpq itself.

A single ``enqueue()`` outside a transaction is one INSERT and its commit; the whole
call is that round trip. psycopg's cursor drives the protocol from Python generators
around non-blocking libpq calls, which costs about 60 µs per round trip more than
libpq's own blocking ``PQexecPrepared`` on the same connection (measured in
docs/performance.md) — a sixth of the call. ``run`` executes a named statement of
``db/postgresql/*.sql`` with ``PQexecPrepared`` (which releases the GIL) on the
psycopg connection Django already holds, preparing it once per connection.

It is off unless ``TASKENGINE["LIBPQ_FAST_PATH"]`` is true (docs/performance.md has the
measured gain and docs/observability.md what it costs: django-prometheus's database
counters never see these statements). Even then it is used only where nothing else is
owed to the connection (``usable``):
- PostgreSQL in autocommit, outside any atomic block, with psycopg idle: the
  statement is its own transaction, so no BEGIN of Django's or psycopg's is skipped
  (inside a transaction the engine's cursor is used, and the caller commits);
- statements may be prepared: not ``TASKENGINE["POLL_ONLY"]`` (PgBouncer in
  transaction mode cannot keep prepared statements);
- no execute wrapper is installed (``connection.execute_wrapper()``): wrappers see
  statements through cursors, so with one installed the cursor path is taken.

Parameters are sent as text (the server infers their types from the statement, as
for any untyped parameter); values come back as text, the caller converts them.
Errors are psycopg's own exception classes, raised inside Django's
``wrap_database_errors`` like any cursor's.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Any, overload

import psycopg
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.abc import Loader
from psycopg.pq import ConnStatus, DiagnosticField, ExecStatus, Format, TransactionStatus
from psycopg.pq.abc import PGconn, PGresult

from taskengine.db.queries import load

from ...conf import engine_settings

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@cache
def _statement(name: str) -> tuple[bytes, bytes, tuple[str, ...]]:
    """(server-side statement name, text with $n placeholders, parameter names in $n
    order) of the named PostgreSQL block."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        key = match.group(1)
        if key is None:
            return "%"  # '%%' is a literal '%' in the pyformat text
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    text = _PLACEHOLDER.sub(number, load("postgresql")[name])
    return f"taskengine_{name}".encode(), text.encode(), tuple(order)


def usable(connection: BaseDatabaseWrapper) -> bool:
    """May ``run`` be used on this Django connection now? (See the module docstring.)"""
    if not engine_settings.LIBPQ_FAST_PATH or connection.vendor != "postgresql" or engine_settings.POLL_ONLY:
        return False
    if connection.in_atomic_block or connection.execute_wrappers:
        return False
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    pg: psycopg.Connection[Any] = connection.connection
    return pg.autocommit and pg.pgconn.transaction_status == TransactionStatus.IDLE


class _Prepared:
    """What one physical connection has prepared, its client encoding (Django never
    changes it) and its timestamptz loader."""

    def __init__(self, pg: psycopg.Connection[Any]) -> None:
        self.pg = pg
        self.names: set[bytes] = set()
        self.encoding = pg.info.encoding
        oid = psycopg.adapters.types["timestamptz"].oid
        loader = psycopg.adapters.get_loader(oid, Format.TEXT)
        assert loader is not None  # psycopg registers a text loader for every builtin type
        self.timestamptz: Loader = loader(oid, pg)


def _prepared(connection: BaseDatabaseWrapper) -> _Prepared:
    state = getattr(connection, "_taskengine_libpq", None)
    if state is None or state.pg is not connection.connection:
        # Kept on Django's wrapper, which lives as long as its physical connections do.
        state = connection._taskengine_libpq = _Prepared(connection.connection)  # type: ignore[attr-defined]  # our own attribute
    return state


def run(connection: BaseDatabaseWrapper, name: str, params: dict[str, Any]) -> list[tuple[bytes | None, ...]]:
    """Execute the named statement with ``params`` and return its rows as text
    (bytes, or None for NULL). Call only when ``usable(connection)`` is true."""
    statement, text, order = _statement(name)
    with connection.wrap_database_errors:
        connection.validate_thread_sharing()
        pg: psycopg.Connection[Any] = connection.connection
        state = _prepared(connection)
        encoding = state.encoding
        values = [_text(params[key], encoding) for key in order]
        with pg.lock:
            pgconn = pg.pgconn
            for attempt in (1, 2):
                if statement not in state.names:
                    _check(pgconn.prepare(statement, text), pgconn, encoding)
                    state.names.add(statement)
                # psycopg's PGconn protocol says bytes only; its implementations take None (NULL).
                result = pgconn.exec_prepared(statement, values)  # type: ignore[arg-type]  # None is NULL
                if (
                    attempt == 1
                    and result.status == ExecStatus.FATAL_ERROR
                    and result.error_field(DiagnosticField.SQLSTATE) == b"26000"
                ):
                    state.names.discard(statement)  # deallocated behind our back (DISCARD ALL)
                    continue
                _check(result, pgconn, encoding)
                break
        width = result.nfields
        return [tuple(result.get_value(row, col) for col in range(width)) for row in range(result.ntuples)]


@overload
def load_timestamptz(connection: BaseDatabaseWrapper, value: bytes) -> datetime: ...
@overload
def load_timestamptz(connection: BaseDatabaseWrapper, value: None) -> None: ...
def load_timestamptz(connection: BaseDatabaseWrapper, value: bytes | None) -> datetime | None:
    """A timestamptz column ``run`` returned, as an aware datetime."""
    return None if value is None else _prepared(connection).timestamptz.load(value)


def _check(result: PGresult, pgconn: PGconn, encoding: str) -> None:
    if result.status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
        return
    if pgconn.status != ConnStatus.OK:
        message = pgconn.error_message.decode(encoding, "replace").strip()
        raise psycopg.OperationalError(f"connection lost: {message}")
    raise psycopg.errors.error_from_result(result, encoding=encoding)


def _text(value: Any, encoding: str) -> bytes | None:
    """A parameter in PostgreSQL's text input format."""
    if value is None:
        return None
    if isinstance(value, str):
        if "\x00" in value:  # libpq takes C strings: the text would silently end there
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode(encoding)
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(int(value)).encode()
    if isinstance(value, float):
        return repr(float(value)).encode()
    if isinstance(value, datetime):
        return value.isoformat().encode()
    raise TypeError(f"no text form for a {type(value).__name__} parameter")
