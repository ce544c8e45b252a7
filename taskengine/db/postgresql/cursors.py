"""The psycopg cursor classes of the PostgreSQL engine cursor (``db/base.py``'s
``engine_cursor``; the store makes one per connection and keeps it).

- ``PreparingCursor`` binds on the server and prepares each statement on first use
  (unless told ``prepare=False``).
- On django-prometheus's backends, ``counted_cursor_class(alias, vendor)`` adds what
  django-prometheus's own cursor class (``ExportingCursorWrapper``) counts for each
  statement of Django's cursors, in the same metrics and with the same labels:
  ``django_db_execute_total`` (+1 per execute, +len per executemany, which also adds to
  ``django_db_execute_many_total``), ``django_db_query_duration_seconds`` (observed
  whether the statement succeeded or raised) and ``django_db_errors_total`` (by
  exception class name). The label children are looked up once per class (alias and
  vendor are fixed), not per statement: ``labels()`` with keywords and the timer cost
  ~12 µs of client CPU per statement, a sixth of a single ``enqueue()``'s own
  (docs/performance.md, "Single enqueue").
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from time import perf_counter
from typing import TYPE_CHECKING, Any, Self

from django.db.backends.base.base import BaseDatabaseWrapper
from django_prometheus.db import errors_total, execute_many_total, execute_total, query_duration_seconds
from django_prometheus.db.common import DatabaseWrapperMixin

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import Loader, Params, QueryNoTemplate


def engine_cursor_class(connection: BaseDatabaseWrapper) -> type[psycopg.Cursor[Any]]:
    """The preparing cursor; on django-prometheus's backend, the counted one
    (``django_db_execute_total`` and the query durations and errors count the engine's
    statements too; docs/observability.md)."""
    if isinstance(connection, DatabaseWrapperMixin):
        return counted_cursor_class(connection.alias, connection.vendor)
    return preparing_cursor_class()


@cache
def counted_cursor_class(alias: str, vendor: str) -> type[psycopg.Cursor[Any]]:
    """PreparingCursor counting as django-prometheus's ExportingCursorWrapper does."""
    executed = execute_total.labels(alias, vendor)
    executed_many = execute_many_total.labels(alias, vendor)
    duration = query_duration_seconds.labels(alias, vendor)

    def failed(exc: BaseException) -> None:
        errors_total.labels(alias, vendor, type(exc).__name__).inc()

    class CountedCursor(preparing_cursor_class()):  # type: ignore[misc]  # a class made at run time
        def execute(
            self,
            query: QueryNoTemplate,
            params: Params | None = None,
            *,
            prepare: bool | None = None,
            binary: bool | None = None,
        ) -> Self:
            executed.inc()
            started = perf_counter()
            try:
                return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[no-any-return]  # the base class is made at run time
            except BaseException as exc:
                failed(exc)
                raise
            finally:
                duration.observe(max(perf_counter() - started, 0))

        def executemany(self, query: QueryNoTemplate, params_seq: Iterable[Params], **kwargs: Any) -> None:
            params_seq = list(params_seq)
            executed.inc(len(params_seq))
            executed_many.inc(len(params_seq))
            started = perf_counter()
            try:
                super().executemany(query, params_seq, **kwargs)
            except BaseException as exc:
                failed(exc)
                raise
            finally:
                duration.observe(max(perf_counter() - started, 0))

    counted: type[psycopg.Cursor[Any]] = CountedCursor
    return counted


@cache
def preparing_cursor_class() -> type[psycopg.Cursor[Any]]:
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


@cache
def timestamptz_loader() -> type[Loader]:
    """psycopg's own (C) timestamptz loader: Django's wraps it in Python to set the
    tzinfo; the values are the same instants, aware."""
    import psycopg
    from psycopg.pq import Format

    loader = psycopg.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, Format.TEXT)
    assert loader is not None  # psycopg registers a text loader for every builtin type
    return loader
