"""Moving the database clock forward in tests, without sleeping.

The engine reads time only from the database (``now()`` on PostgreSQL,
``strftime(..., 'now')`` on SQLite) and compares it with the instants it stored.
Shifting every stored instant back by Δ seconds is therefore, for the engine,
the same as the database clock jumping forward by Δ: leases, retry times, worker
heartbeats, leader terms and retention ages all come Δ closer to (or further past)
their deadlines, while every duration between two stored instants stays as it was.
"""
from __future__ import annotations

from django.db import connections, transaction

# Every timestamp column of the taskengine models, per table. tests/property/test_clock.py
# compares this with the models' DateTimeFields, so a new column cannot be forgotten.
TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "taskengine_job": ("run_after", "enqueued_at", "started_at", "last_attempted_at", "finished_at",
                       "lease_expires_at", "cancel_requested_at", "slot"),
    "task_execution_logs": ("started_at", "finished_at"),
    "taskengine_worker": ("started_at", "last_heartbeat_at", "stopped_at"),
    "taskengine_leader": ("acquired_at", "renewed_at", "expires_at"),
    "taskengine_schedule": ("last_slot_at", "created_at", "updated_at"),
    "taskengine_missed_slot": ("slot", "recorded_at"),
    "taskengine_operator_action": ("created_at",),
}


def advance_clock(seconds: float, using: str = "default") -> None:
    """Make the database clock of ``using`` read ``seconds`` later, as the engine sees it.

    Every stored instant of the engine's tables moves ``seconds`` into the past, one
    UPDATE per table, all in one transaction (a reader sees the jump whole or not at all).
    NULLs stay NULL. The columns moved:

    - ``taskengine_job``: run_after, enqueued_at, started_at, last_attempted_at,
      finished_at, lease_expires_at, cancel_requested_at, slot
    - ``task_execution_logs``: started_at, finished_at
    - ``taskengine_worker``: started_at, last_heartbeat_at, stopped_at
    - ``taskengine_leader``: acquired_at, renewed_at, expires_at
    - ``taskengine_schedule``: last_slot_at, created_at, updated_at
    - ``taskengine_missed_slot``: slot, recorded_at
    - ``taskengine_operator_action``: created_at

    Limits: it moves the database's view of time only. A process's monotonic clock
    (the leader's trust window, a worker's heartbeat cadence and handler timeouts) does
    not move; tests inject a clock there. Schedule slots are wall-clock aligned (a cron
    fires at whole minutes), so a test of schedules should move the clock by whole
    multiples of the schedule's period. On SQLite, a whole number of seconds keeps every
    stored value's fraction exactly; a fractional shift rounds values to the millisecond
    (the precision of SQLite's own clock text).
    """
    connection = connections[using]
    seconds = float(seconds)
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for table, columns in TIMESTAMP_COLUMNS.items():
            if connection.vendor == "postgresql":
                moves = ", ".join(f"{c} = {c} - make_interval(secs => %(seconds)s)" for c in columns)
                cursor.execute(f"UPDATE {table} SET {moves}", {"seconds": seconds})
            else:
                cursor.execute(f"UPDATE {table} SET {', '.join(_sqlite_moves(columns, seconds))}")


def _sqlite_moves(columns: tuple[str, ...], seconds: float) -> list[str]:
    """SQLite stores instants as UTC text ('YYYY-MM-DD HH:MM:SS[.fff[fff]]', compared as
    text). A whole-second shift rewrites the date and time and keeps the original
    fraction (characters from the 20th on); a fractional one goes through '%f'."""
    if seconds == int(seconds):
        modifier = f"'{-int(seconds):+d} seconds'"
        return [f"{c} = strftime('%Y-%m-%d %H:%M:%S', {c}, {modifier}) || substr({c}, 20)" for c in columns]
    modifier = f"'{-seconds:+.6f} seconds'"
    return [f"{c} = strftime('%Y-%m-%d %H:%M:%f', {c}, {modifier})" for c in columns]
