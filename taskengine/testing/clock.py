"""Moving the engine's clock forward in tests, without sleeping, and running the
leader's schedule pass on demand.

The engine reads time only from the database (``now()`` on PostgreSQL,
``strftime(..., 'now')`` on SQLite) and compares it with the instants it stored.
Shifting every stored instant back by Δ is therefore, for the engine, the same as the
database clock jumping forward by Δ: leases, retry times, delayed jobs, worker
heartbeats, leader terms, schedule slots and retention ages all come Δ closer to (or
further past) their deadlines, while every duration between two stored instants stays
as it was. The database's own clock is never touched, so this works inside a test's
transaction (where PostgreSQL's ``now()`` stands still) and needs no privileges.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connections, transaction

# Every timestamp column of the taskengine models, per table. tests/property/test_clock.py
# compares this with the models' DateTimeFields, so a new column cannot be forgotten.
TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "taskengine_job": (
        "run_after",
        "enqueued_at",
        "started_at",
        "last_attempted_at",
        "finished_at",
        "lease_expires_at",
        "cancel_requested_at",
        "slot",
    ),
    "task_execution_logs": ("started_at", "finished_at"),
    "taskengine_worker": ("started_at", "last_heartbeat_at", "stopped_at"),
    "taskengine_leader": ("acquired_at", "renewed_at", "expires_at"),
    "taskengine_schedule": ("last_slot_at", "created_at", "updated_at"),
    "taskengine_missed_slot": ("slot", "recorded_at"),
    "taskengine_operator_action": ("created_at",),
    "taskengine_queue": ("paused_at", "created_at", "updated_at"),
    "taskengine_bulk_operation": ("created_at", "updated_at", "finished_at"),
}

TEST_LEADER_ID = "taskengine.testing"  # holder of the leader term run_schedules() acts under


def _seconds(by: float | timedelta) -> float:
    seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
    if not seconds >= 0:  # also rejects NaN
        raise ValueError(f"the clock only moves forward: cannot advance it by {by!r}")
    return seconds


def advance_clock(by: float | timedelta, using: str | None = None) -> None:
    """Make the engine's clock on database ``using`` read ``by`` (seconds or a
    timedelta) later.

    Every stored instant of the engine's tables moves ``by`` into the past, one UPDATE
    per table, all in one transaction (inside the caller's, if there is one: a reader
    sees the jump whole or not at all). NULLs stay NULL. The columns moved:

    - ``taskengine_job``: run_after, enqueued_at, started_at, last_attempted_at,
      finished_at, lease_expires_at, cancel_requested_at, slot
    - ``task_execution_logs``: started_at, finished_at
    - ``taskengine_worker``: started_at, last_heartbeat_at, stopped_at
    - ``taskengine_leader``: acquired_at, renewed_at, expires_at
    - ``taskengine_schedule``: last_slot_at, created_at, updated_at
    - ``taskengine_missed_slot``: slot, recorded_at
    - ``taskengine_operator_action``: created_at

    Limits: it moves the database's view of time only. Datetimes a test holds in Python
    variables do not move, nor does a process's monotonic clock (the leader's trust
    window, a worker's heartbeat cadence, handler timeouts). Schedule slots lie on the
    database clock's wall-clock grid (a cron fires at whole minutes), so a slot falls
    due when the real clock reaches it; moving by whole periods of a schedule keeps its
    grid where it was. On SQLite a whole number of seconds keeps every stored value's
    fraction exactly; a fractional shift rounds values to the millisecond (the
    precision of SQLite's own clock text). Negative amounts are refused (ValueError):
    moving back would revive expired leases.
    """
    from taskengine.conf import engine_settings
    from taskengine.db import store_for

    using = using or engine_settings.DATABASE
    seconds = _seconds(by)
    if seconds == 0:
        return
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        store = store_for(connection)
        for table, columns in TIMESTAMP_COLUMNS.items():
            cursor.execute(*store.clock_shift(table, columns, seconds))


def engine_now(using: str | None = None) -> datetime:
    """The instant the engine's claims compare ``run_after`` and leases with, aware UTC.

    Outside a transaction it is the database clock's time. Inside one — a test's — it
    is the transaction's start on PostgreSQL (``now()`` stands still there), so a time
    computed in Python (``timezone.now()``) or with ``store.db_now()`` during the test
    lies a little after it: ``advance_clock_to`` accounts for that."""
    from taskengine.conf import engine_settings
    from taskengine.db.queries import sql
    from taskengine.store import to_datetime

    connection = connections[using or engine_settings.DATABASE]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "testing_engine_now"), {})
        now: datetime = to_datetime(cursor.fetchone()[0])
        return now


def advance_clock_to(when: datetime, using: str | None = None) -> float:
    """Advance the engine's clock until ``when`` has been reached (a job with
    ``run_after=when`` is then due); no move if it has been already. Returns the
    seconds moved, rounded up to whole milliseconds (whole seconds on SQLite, which
    keeps its stored fractions exact)."""
    if when.tzinfo is None:
        raise ValueError(f"advance_clock_to() needs an aware datetime, got {when!r}")
    wait = (when - engine_now(using)).total_seconds()
    if wait <= 0:
        return 0.0
    from taskengine.conf import engine_settings
    from taskengine.db import store_for

    step = store_for(connections[using or engine_settings.DATABASE]).clock_step(wait)
    advance_clock(step, using=using)
    return step


def run_schedules(using: str | None = None) -> dict[str, list[int]]:
    """Run the leader's schedule pass once, now: enqueue every due slot of every
    enabled schedule (settings schedules are synced first) and record misfires, exactly
    as the leader does. Returns {schedule name: [ids of the jobs enqueued]}.

    No worker or elector needs to run: this takes the leader term itself (a real
    ``taskengine_leader`` row, holder ``taskengine.testing``), runs
    ``Scheduler.run_once`` under it — so every write is fenced as in production — and
    resigns. Raises RuntimeError if another leader holds a live term (a worker with
    leadership is running against this database)."""
    from taskengine.conf import engine_settings
    from taskengine.leader.election import Elector, current_leader
    from taskengine.leader.schedule_enqueuer import Scheduler

    using = using or engine_settings.DATABASE
    elector = Elector(using, TEST_LEADER_ID)
    if not elector.step():
        leader = current_leader(using) or {}
        raise RuntimeError(
            f"run_schedules() needs the leader term, but {leader.get('holder')!r} holds a live one "
            f"(until {leader.get('expires_at')}); stop that worker's leadership (--no-leader) or "
            "let its schedules run"
        )
    try:
        lease = elector.lease()
        assert lease is not None  # just acquired, within its trust window
        return Scheduler(using).run_once(lease)
    finally:
        elector.resign()
