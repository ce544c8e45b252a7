"""The scheduler: enqueue one ordinary job per due schedule slot, on the leader.

Each run reads the database clock once, then for every enabled schedule looks at the
slots after its ``last_slot_at`` (or its creation) up to now:
- slots due less than SCHEDULE_MISFIRE_GRACE_SECONDS ago are on time: always enqueued;
- older slots misfired (nothing ran while they fell due). The schedule's policy says
  what happens: ``skip`` enqueues none; ``run_once`` enqueues only the newest (if no
  slot is on time); ``catch_up`` enqueues the newest ``catch_up_limit``. Every slot not
  enqueued is recorded once in MissedSlot.

Invariants: exactly one job per (schedule, slot) — the insert is ``ON CONFLICT
(schedule_id, slot) DO NOTHING`` on a unique index, never check-then-insert — across
restarts, leader changes and any number of nodes. Every write carries the leader's
lease; one schedule's writes share one transaction, so a stale leader changes nothing
and a schedule never advances without its jobs.

Failure: a schedule whose task no longer imports is skipped (logged once) and not
advanced; its slots then age into the misfire policy. Database errors propagate.

The service also writes the settings-defined schedules (TASKENGINE["SCHEDULES"]) into
Schedule rows once per leader term, in a fenced transaction (``sync_settings_schedules``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.db import DatabaseError, connections, transaction

from taskengine.compat import task_backends
from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.db.queries import sql
from taskengine.leader.election import LeaderLease, fenced_transaction
from taskengine.models import Schedule
from taskengine.observability import metrics
from taskengine.resolution import resolve_task
from taskengine.schedule_slots import SlotSpec, recent_slots
from taskengine.schedules import SYNCED_FIELDS, settings_schedules, stored_fields_problem
from taskengine.store import db_now

if TYPE_CHECKING:
    from taskengine.backend import DatabaseBackend, EngineTask

logger = logging.getLogger("taskengine.schedules")

MAX_MISSED_RECORDED = 100  # per schedule per run; older misfires are only counted in the log


@dataclass(slots=True)
class SlotPlan:
    enqueue: list[datetime] = field(default_factory=list)
    missed: list[datetime] = field(default_factory=list)
    newest: datetime | None = None
    truncated: bool = False  # more misfired slots than were looked at


def plan_slots(
    spec: SlotSpec, *, after: datetime, now: datetime, policy: str, catch_up_limit: int, grace: float
) -> SlotPlan:
    """Which slots in (after, now] to enqueue and which to record as missed. Pure."""
    slots, truncated = recent_slots(spec, after=after, until=now, limit=catch_up_limit + MAX_MISSED_RECORDED + 1)
    plan = SlotPlan(newest=slots[-1] if slots else None, truncated=truncated)
    cutoff = now - timedelta(seconds=grace)
    on_time = [s for s in slots if s > cutoff]
    late = [s for s in slots if s <= cutoff]
    if policy == "catch_up":
        keep = late[len(late) - catch_up_limit :] if catch_up_limit else []
    elif policy == "run_once":
        keep = late[-1:] if not on_time else []
    else:
        keep = []
    plan.enqueue = keep + on_time
    plan.missed = [s for s in late if s not in keep]
    return plan


class Scheduler:
    """The scheduler service. ``run_once(lease)`` is one pass; the ticker calls it on
    the leader every SCHEDULER_INTERVAL_SECONDS."""

    name = "schedules"

    def __init__(self, database: str, *, definitions: list[dict[str, Any]] | None = None) -> None:
        self.database = database
        self.definitions = settings_schedules() if definitions is None else definitions
        self._synced_term: int | None = None
        self._broken: set[tuple[int, str]] = set()

    def run_once(self, lease: LeaderLease, *, now: datetime | None = None) -> dict[str, list[int]]:
        """Enqueue due slots; returns {schedule name: [new job ids]}. ``now`` replaces
        the database clock for planning (tests); the writes stay fenced on the DB clock."""
        if self._synced_term != lease.term:
            with fenced_transaction(self.database, lease):
                sync_settings_schedules(self.database, self.definitions)
            self._synced_term = lease.term
        now = now or db_now(self.database)
        grace = float(engine_settings.SCHEDULE_MISFIRE_GRACE_SECONDS)
        created: dict[str, list[int]] = {}
        for schedule in Schedule.objects.using(self.database).filter(enabled=True).order_by("id"):
            ids = self._run_schedule(schedule, lease, now, grace)
            if ids:
                created[schedule.name] = ids
        return created

    def _run_schedule(self, schedule: Schedule, lease: LeaderLease, now: datetime, grace: float) -> list[int]:
        after = schedule.last_slot_at or schedule.created_at
        plan = plan_slots(
            SlotSpec.of(schedule),
            after=after,
            now=now,
            policy=schedule.misfire_policy,
            catch_up_limit=schedule.catch_up_limit,
            grace=grace,
        )
        if plan.newest is None:
            return []
        try:
            job = self._job_template(schedule)
        except Exception as exc:
            key = (schedule.pk, str(exc))
            if key not in self._broken:
                self._broken.add(key)
                logger.error("schedule %r cannot enqueue: %s", schedule.name, exc)
            return []
        connection = connections[self.database]
        created: list[int] = []
        with transaction.atomic(using=self.database), connection.cursor() as cursor:
            base = {**lease.params(), "schedule_id": schedule.pk}
            for slot in plan.enqueue:
                cursor.execute(
                    sql(connection, "enqueue_schedule_slot"), {**base, **job, "slot": self._slot_param(slot)}
                )
                created.extend(row[0] for row in cursor.fetchall())
            for slot in plan.missed:
                cursor.execute(
                    sql(connection, "record_missed_slot"),
                    {**base, "slot": self._slot_param(slot), "reason": f"misfire:{schedule.misfire_policy}"},
                )
                cursor.fetchall()
            cursor.execute(sql(connection, "advance_schedule"), {**base, "slot": self._slot_param(plan.newest)})
            cursor.fetchall()
        self._report(schedule, plan, created, job)
        return created

    def _job_template(self, schedule: Schedule) -> dict[str, Any]:
        """The schedule's job as the backend would store it (same defaults as
        ``task.enqueue()``), minus slot and schedule."""
        # A schedule's task is taskengine's (EngineTask), on its DatabaseBackend.
        task = cast("EngineTask", resolve_task(schedule.task_path)).using(
            queue_name=schedule.queue, priority=schedule.priority
        )
        if schedule.tenant:
            task = task.using(tenant=schedule.tenant)
        backend = cast("DatabaseBackend", task_backends[task.backend])
        new = backend.new_job(task, schedule.args or [], schedule.kwargs or {})
        return {
            "task_path": new.task_path,
            "backend": new.backend,
            "queue": new.queue,
            "priority": new.priority,
            "args": _json_text(new.args),
            "kwargs": _json_text(new.kwargs),
            "max_attempts": new.max_attempts,
            "timeout_seconds": new.timeout_seconds,
            "retry_backoff_seconds": new.retry_backoff_seconds,
            "on_lease_expired": new.on_lease_expired,
            "tenant": new.tenant,
        }

    def _slot_param(self, slot: datetime) -> datetime | str | None:
        connection = connections[self.database]
        param: datetime | str | None = store_for(connection).datetime_param(connection, slot)
        return param

    def _report(self, schedule: Schedule, plan: SlotPlan, created: list[int], job: dict[str, Any]) -> None:
        if created:
            assert plan.newest is not None  # set whenever a slot is enqueued
            metrics.JOBS_SUBMITTED.labels(job["queue"], job["task_path"]).inc(len(created))
            logger.debug(
                "schedule %r: enqueued %d slot(s) up to %s", schedule.name, len(created), plan.newest.isoformat()
            )
        if plan.missed:
            logger.warning(
                "schedule %r: %d slot(s) misfired and were not run (policy %s)%s",
                schedule.name,
                len(plan.missed),
                schedule.misfire_policy,
                "; older misfired slots were not recorded" if plan.truncated else "",
            )


def _json_text(value: Any) -> str:
    """NewJob carries arguments as JSON text or as JSON-ready values; SQL wants text."""
    return value if isinstance(value, str) else json.dumps(value, allow_nan=False)


def sync_settings_schedules(database: str, definitions: list[dict[str, Any]] | None = None) -> list[str]:
    """Upsert settings-defined schedules (from_settings=True) by name and disable the
    ones no longer defined. A schedule of the same name created in the admin is left
    alone. Race-safe: an INSERT … ON CONFLICT (name) DO UPDATE, so two workers syncing
    at once write the same rows once. Returns the names written."""
    definitions = settings_schedules() if definitions is None else definitions
    manual = set(
        Schedule.objects.using(database)
        .filter(name__in=[d["name"] for d in definitions], from_settings=False)
        .values_list("name", flat=True)
    )
    rows = []
    for definition in definitions:
        if definition["name"] in manual:
            continue
        if problem := stored_fields_problem(definition):
            logger.error("settings schedule %r cannot be stored, skipped: %s", definition["name"], problem)
            continue
        row = Schedule(**definition, from_settings=True)
        try:
            # One savepoint per row: a row the database refuses is skipped, the others are
            # written (the caller's fenced transaction goes on).
            with transaction.atomic(using=database):
                Schedule.objects.using(database).bulk_create(
                    [row], update_conflicts=True, unique_fields=["name"], update_fields=SYNCED_FIELDS
                )
        except DatabaseError as exc:
            logger.error("settings schedule %r cannot be stored, skipped: %s", definition["name"], exc)
            continue
        rows.append(row)
    (
        Schedule.objects.using(database)
        .filter(from_settings=True, enabled=True)
        .exclude(name__in=[d["name"] for d in definitions])
        .update(enabled=False)
    )
    return [row.name for row in rows]
