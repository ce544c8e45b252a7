"""The engine's own vacuum of its job tables, on the leader (PostgreSQL; nothing on SQLite).

Every job leaves dead tuples behind: the claim and the finish are two non-HOT updates of
``taskengine_job`` (``state`` is in index predicates), so a busy queue leaves two dead
tuples per job in the table and one dead entry per job in the claim index, which every
claim walks from its start until a vacuum removes them. Long drains and sustained load
slow down as they pile up (docs/performance.md, "The engine's vacuum").

Migration 0011 asks autovacuum to vacuum the job table after a fixed 10,000 dead tuples,
but that only helps where autovacuum runs: a server with ``autovacuum = off`` (this
project's CI machine class is one) never vacuums the table, and with it on the launcher
looks at each database only every ``autovacuum_naptime`` (a minute by default), which at a
few thousand jobs a second is hundreds of thousands of dead tuples. So the leader looks
every ``VACUUM_INTERVAL_SECONDS`` and runs ``VACUUM (SKIP_LOCKED, ANALYZE)`` on each of
the two tables that has at least ``VACUUM_DEAD_TUPLES`` dead tuples, unless a vacuum
(autovacuum's or anyone's) is already working on it. ``VACUUM_DEAD_TUPLES = None`` turns
the service off (autovacuum alone, as tuned by the server and migration 0011).

VACUUM takes no lock that claims, finishes or enqueues wait for (SHARE UPDATE EXCLUSIVE
conflicts only with other vacuums, DDL and the like), writes no rows, and is safe to run
under any leader term, so it carries no fence. It must run outside a transaction: the
ticker's connection is in autocommit. A role that may not vacuum the tables (neither
their owner nor the database's, nor a member of their roles) never picks them: the
service then does nothing, and autovacuum is left to do it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.db.queries import sql
from taskengine.leader.election import LeaderLease
from taskengine.observability import metrics

logger = logging.getLogger("taskengine.vacuum")

# Which statement vacuums which table (the names tables_due_for_vacuum returns).
VACUUM_STATEMENTS = {"taskengine_job": "vacuum_job_table", "task_execution_logs": "vacuum_attempt_table"}


class VacuumInTransaction(RuntimeError):
    """run_once was called inside a transaction, where PostgreSQL refuses VACUUM."""


@dataclass(frozen=True, slots=True)
class Vacuumed:
    table: str
    dead_tuples: int  # by the statistics, when the table was picked
    seconds: float


def run_once(database: str, lease: LeaderLease | None = None, *, dead_tuples: int | None = None) -> list[Vacuumed]:
    """Vacuum the job tables that have at least ``dead_tuples`` (default
    ``VACUUM_DEAD_TUPLES``) dead tuples; returns what was vacuumed (not a table skipped
    because another vacuum held it). ``lease`` is the
    ticker's (a service's signature); VACUUM needs none."""
    threshold = engine_settings.VACUUM_DEAD_TUPLES if dead_tuples is None else dead_tuples
    connection = connections[database]
    if threshold is None or not store_for(connection).dead_tuples_need_vacuum:
        return []
    if connection.in_atomic_block:
        raise VacuumInTransaction("the engine's vacuum runs outside transactions (VACUUM cannot run inside one)")
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "tables_due_for_vacuum"), {"dead_tuples": int(threshold)})
        due = cursor.fetchall()
    delay = cost_delay_ms()
    done = []
    for table, dead, count_before in due:
        started = time.monotonic()
        with connection.cursor() as cursor:
            with _paced(connection, cursor, delay):
                cursor.execute(sql(connection, VACUUM_STATEMENTS[table]))
            seconds = time.monotonic() - started
            cursor.execute(sql(connection, "table_vacuum_count"), {"table": table})
            [(count_after,)] = cursor.fetchall()
        if count_after <= count_before:  # SKIP_LOCKED: another vacuum held the table
            logger.debug("vacuum of %s skipped: another vacuum holds it", table)
            continue
        done.append(Vacuumed(table, int(dead), seconds))
        metrics.TABLES_VACUUMED.labels(table).inc()
        metrics.VACUUM_SECONDS.labels(table).inc(seconds)
        logger.debug("vacuumed %s (%d dead tuples) in %.2fs", table, dead, seconds)
    return done


def cost_delay_ms() -> float | None:
    """``VACUUM_COST_DELAY_MS`` checked: None (or 0) for a vacuum at full speed, else a
    number of milliseconds from 0 to 100 (PostgreSQL's range for vacuum_cost_delay)."""
    value = engine_settings.VACUUM_COST_DELAY_MS
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ImproperlyConfigured(
            f"TASKENGINE VACUUM_COST_DELAY_MS must be None or a number of milliseconds from 0 to 100, not {value!r}."
        )
    return float(value) or None


@contextmanager
def _paced(connection: BaseDatabaseWrapper, cursor: Any, delay_ms: float | None) -> Iterator[None]:
    """The VACUUM inside paced as autovacuum's is: the session's vacuum_cost_delay set for
    it and reset after. Not behind a transaction-mode pooler (POLL_ONLY), where the next
    statement may run on another server session and the SET would stay on this one."""
    if delay_ms is None or engine_settings.POLL_ONLY:
        yield
        return
    cursor.execute(sql(connection, "pace_vacuum"), {"delay": f"{delay_ms:g}ms"})
    try:
        yield
    finally:
        try:
            cursor.execute(sql(connection, "unpace_vacuum"))
        except DatabaseError:  # the connection is gone, and the setting with it
            logger.debug("could not reset vacuum_cost_delay", exc_info=True)
