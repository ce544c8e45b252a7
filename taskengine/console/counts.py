"""Cheap numbers for big tables: bounded counts, planner estimates, distinct values,
and the database clock.

No console page or API call runs an unbounded ``count(*)``: ``bounded_count`` counts
at most ``COUNT_LIMIT + 1`` rows (an index scan that stops early). Past the bound,
PostgreSQL answers with the planner's row estimate for the same query (``EXPLAIN``,
fed by ``pg_statistic``: no rows are read); SQLite answers "at least COUNT_LIMIT".
All functions here only read.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import connections

from ..queries import sql
from ..store import to_datetime

COUNT_LIMIT = 10_000
DISTINCT_LIMIT = 100


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

    def as_dict(self) -> dict:
        return {**asdict(self), "display": self.display()}

    def __str__(self) -> str:
        return self.display()


def bounded_count(queryset, limit: int = COUNT_LIMIT) -> BoundedCount:
    """Exact up to ``limit``; beyond it an estimate (PostgreSQL) or a lower bound."""
    n = queryset.order_by()[: limit + 1].count()
    if n <= limit:
        return BoundedCount(n, True, "exact")
    estimate = planner_estimate(queryset)
    if estimate is None:
        return BoundedCount(limit, False, "at_least")
    return BoundedCount(max(estimate, limit + 1), False, "estimate")


def planner_estimate(queryset) -> int | None:
    """PostgreSQL's row estimate for ``queryset`` (EXPLAIN only plans; it reads no rows)."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    query, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {query}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, (str, bytes)):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def distinct_values(column: str, using: str = "default", limit: int = DISTINCT_LIMIT) -> list[str]:
    """Distinct non-null values of ``queue``, ``task`` or ``tenant`` across all jobs,
    walking the column's index (see sql/console.*.sql)."""
    name = {"queue": "console_distinct_queues", "task": "console_distinct_tasks",
            "tenant": "console_distinct_tenants"}[column]
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, name), {"limit": limit})
        return [row[0] for row in cursor.fetchall()]


def db_now(using: str = "default") -> datetime:
    """The database clock, aware UTC."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "console_now"), {})
        return to_datetime(cursor.fetchone()[0])
