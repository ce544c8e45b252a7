"""Building blocks shared by reconcile's checks: the context a run carries, findings and
applied fixes, and small database helpers that hide the vendor differences.

A ``Context`` is read-only until a check's ``fix`` runs; ``check`` functions only read.
Times come from the database clock (``Context.now``), never from Python's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.conf import engine_settings
from taskengine.db import Store, store_for
from taskengine.db.queries import sql
from taskengine.store import db_now

SYSTEM_ACTOR = "system:reconcile"
MAX_REPORTED_IDS = 1000  # applied fixes list at most this many ids (the count is exact)


@dataclass(slots=True)
class Finding:
    category: str
    count: int
    sample_ids: list[Any]
    action: str  # what --apply does for this category ("none: ..." when it does nothing)
    description: str = ""
    fixable: bool = True
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "count": self.count,
            "sample_ids": self.sample_ids,
            "action": self.action,
            "description": self.description,
            "fixable": self.fixable,
            "detail": self.detail,
        }


@dataclass(slots=True)
class Applied:
    category: str
    fixed: int = 0
    ids: list[Any] = field(default_factory=list)
    note: str = ""

    def add(self, ident: Any) -> None:
        self.fixed += 1
        if len(self.ids) < MAX_REPORTED_IDS:
            self.ids.append(ident)

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "fixed": self.fixed, "ids": self.ids, "note": self.note}


@dataclass
class Context:
    """One reconcile run: which database, whose view (tenants), who acts."""

    database: str = "default"
    tenants: list[str] | None = None  # None: every tenant
    actor: Any = SYSTEM_ACTOR
    progress: Callable[[str], None] = lambda message: None
    sample_size: int = 10
    batch_size: int = 500

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    @property
    def store(self) -> Store:
        return store_for(self.connection)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "tenants": self.store.array(self.tenants),
            "dead_after": float(engine_settings.WORKER_DEAD_AFTER_SECONDS),
            "stale_after": float(engine_settings.STALE_QUEUED_SECONDS),
            "lookback": float(engine_settings.RECONCILE_SLOT_LOOKBACK_SECONDS),
            **extra,
        }

    def fetch(self, name: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql(self.connection, name), self.params(**params))
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows

    def execute(self, name: str, **params: Any) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute(sql(self.connection, name), self.params(**params))
            rowcount: int = cursor.rowcount
            return rowcount

    @cached_property
    def now(self) -> datetime:
        """The database clock, read once per run."""
        return db_now(self.database)

    def db_datetime(self, value: datetime) -> Any:
        """A datetime as the vendor stores it (SQLite: Django's text format, UTC)."""
        return self.store.datetime_param(self.connection, value)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def page(ctx: Context, name: str, **params: Any) -> Iterator[list[tuple[Any, ...]]]:
    """Yield batches of candidate rows of the named query (rows start with id and end
    their fixed columns with the window count), in id order, ``batch_size`` at a time."""
    after_id = 0
    while True:
        rows = ctx.fetch(name, after_id=after_id, limit=ctx.batch_size, **params)
        if not rows:
            return
        yield rows
        after_id = rows[-1][0]


def first_page(ctx: Context, name: str, count_column: int, **params: Any) -> tuple[int, list[tuple[Any, ...]]]:
    """(total count, first ``sample_size`` rows) of a candidate query."""
    rows = ctx.fetch(name, after_id=0, limit=ctx.sample_size, **params)
    return (rows[0][count_column] if rows else 0), rows


@dataclass(frozen=True, slots=True)
class Check:
    """One reconcile category: ``inspect`` reads (never writes); ``fix`` applies the
    category's compare-and-set fixes, or is None for report-only categories."""

    name: str
    description: str
    action: str
    inspect: Callable[[Context, Check], Finding]
    fix: Callable[[Context], Applied] | None = None

    def finding(self, count: int, sample_ids: list[Any], **detail: Any) -> Finding:
        return Finding(
            self.name, count, sample_ids, self.action, self.description, fixable=self.fix is not None, detail=detail
        )
