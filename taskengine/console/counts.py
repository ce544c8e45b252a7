"""Cheap numbers for big tables: bounded counts, planner estimates, distinct values,
and the database clock.

No console page or API call runs an unbounded ``count(*)``. ``bounded_count`` on
PostgreSQL first asks the planner (``EXPLAIN``, fed by ``pg_statistic``: no rows are
read); an estimate at or above ``COUNT_LIMIT`` is the answer ("≈ N"). Below it, the
rows are counted, at most ``COUNT_LIMIT + 1`` of them (a scan that stops early), so a
small number is exact; a count that would take longer than ``COUNT_TIMEOUT_MS`` (a
rare filter combination scanning many candidates) is cancelled and the estimate shown. SQLite has no estimates: it counts up to the bound and answers
"N+" past it. All functions here only read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet

from taskengine.db.queries import sql

from ..db import store_for

COUNT_LIMIT = 10_000
COUNT_TIMEOUT_MS = 100  # PostgreSQL: longest a console count may run before the estimate wins
DISTINCT_LIMIT = 100
RECENT_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class BoundedCount:
    value: int
    exact: bool
    # "exact", "at_least" (value is the bound) or "estimate" (the planner's guess).
    kind: str

    def display(self) -> str:
        if self.kind == "exact":
            return f"{self.value:,}"
        if self.kind == "at_least":
            return f"{self.value:,}+"
        return f"≈{self.value:,}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "display": self.display()}

    def __str__(self) -> str:
        return self.display()


def bounded_count(queryset: QuerySet[Any], limit: int = COUNT_LIMIT) -> BoundedCount:
    """Exact up to ``limit``; beyond it an estimate (PostgreSQL) or a lower bound."""
    estimate = planner_estimate(queryset)
    if estimate is not None and estimate >= limit:
        return BoundedCount(estimate, False, "estimate")
    n = _count_upto(queryset, limit)
    if n is None:  # PostgreSQL gave up after COUNT_TIMEOUT_MS: the estimate it is
        return BoundedCount(estimate or 0, False, "estimate")
    if n <= limit:
        return BoundedCount(n, True, "exact")
    return BoundedCount(limit, False, "at_least")


def _count_upto(queryset: QuerySet[Any], limit: int) -> int | None:
    """Count at most ``limit + 1`` rows. On PostgreSQL the count also stops after
    COUNT_TIMEOUT_MS (a filter that matches few of many candidate rows reads them all
    to find out): then None. The timeout is transaction-local: it ends with our own
    transaction, or is restored when we run inside the caller's."""
    counting = queryset.order_by()[: limit + 1]
    connection = connections[queryset.db]
    if not store_for(connection).bounded_statements:
        return counting.count()
    timeout = f"{COUNT_TIMEOUT_MS}ms"
    try:
        if not connection.in_atomic_block:
            with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
                return counting.count()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)", [timeout]
            )
            previous = cursor.fetchone()[0]
            try:
                with transaction.atomic(using=queryset.db):  # a savepoint the cancel can roll back
                    return counting.count()
            finally:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
    except OperationalError as exc:
        if _is_query_cancel(exc):
            return None
        raise


def _is_query_cancel(exc: BaseException) -> bool:
    from psycopg import errors

    return isinstance(exc.__cause__, errors.QueryCanceled)


def planner_estimate(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's row estimate for ``queryset`` (EXPLAIN only plans; it reads no rows)."""
    connection = connections[queryset.db]
    if not store_for(connection).bounded_statements:
        return None
    try:
        query, params = queryset.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:  # e.g. tenant__in=[]: nothing can match
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {query}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, (str, bytes)):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def queued_queues(using: str = "default", limit: int = DISTINCT_LIMIT) -> list[str]:
    """Queues that have queued jobs, walking the claim index (sql/console.*.sql)."""
    return _values("console_queued_queues", using, limit)


def distinct_tenants(using: str = "default", limit: int = DISTINCT_LIMIT) -> list[str]:
    """Every tenant that has jobs, walking the tenant index (sql/console.*.sql)."""
    return _values("console_distinct_tenants", using, limit)


def recent_values(queryset: QuerySet[Any], field: str, sample: int | None = None) -> list[str]:
    """Distinct values of ``field`` among the newest ``sample`` rows of ``queryset``
    (a backward primary-key scan that stops after ``sample`` rows), for columns with
    no index to walk (task paths)."""
    newest = queryset.order_by("-pk").values_list(field, flat=True)[: sample or RECENT_SAMPLE]
    return sorted({value for value in newest if value is not None})


def _values(name: str, using: str, limit: int) -> list[str]:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, name), {"limit": limit})
        return [row[0] for row in cursor.fetchall()]
