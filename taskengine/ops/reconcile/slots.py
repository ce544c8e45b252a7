"""Schedule-slot reconcile checks: missed slots (gaps), duplicated slots and overdue
schedules.

For each enabled schedule, reconcile reads every *recorded* slot in the look-back
window (RECONCILE_SLOT_LOOKBACK_SECONDS): the schedule's jobs (any state) and its
MissedSlot rows, in slot order, and walks them with the scheduler's own slot arithmetic
(``taskengine.schedule_slots.next_slot``: cron in the schedule's time zone, or multiples of
the interval since the epoch), starting from the first recorded slot:

- **missed**: a slot the walk expects between two recorded slots that has neither a
  job nor a MissedSlot row — the scheduler moved past it without accounting for it.
  Fix: record it as missed (reason ``reconcile``) with ``INSERT … ON CONFLICT DO
  NOTHING`` on taskengine_missed_slot_uniq, so two reconciles record it once.
- **duplicated**: more than one non-cancelled job inside one slot period (the unique
  (schedule, slot) index stops exact duplicates; this catches near-duplicates such as
  a slot enqueued twice with different timestamps). Fix: cancel the extra jobs that
  are still queued (compare-and-set on state = 'queued'); extras that already ran are
  report only.
- **overdue**: the next slot after the last recorded one (or ``last_slot_at``, or the
  schedule's creation) has been due for more than STALE_QUEUED_SECONDS: no leader is
  enqueueing. Report only — the scheduler's misfire policy decides about those slots
  when a leader runs again.

Limits: a schedule disabled for a while shows the slots of that time as missed (the
scheduler does not record slots while disabled); keep the look-back below the shortest
retention, or pruned jobs read as gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction

from taskengine import schedule_slots
from taskengine.conf import engine_settings
from taskengine.ops import audit
from taskengine.ops.reconcile.base import Applied, Check, Context, Finding, iso
from taskengine.store import to_datetime

POINTS_LIMIT = 100_000  # recorded slots read per schedule
MISSED_LIMIT = 10_000  # missed slots enumerated per schedule


@dataclass(slots=True)
class ScheduleRow:
    id: int
    name: str
    cron: str | None
    interval_seconds: int | None
    timezone: str
    last_slot_at: datetime | None
    created_at: datetime
    tenant: str | None

    def next_slot(self, after: datetime) -> datetime:
        """The scheduler's own slot arithmetic: the first slot strictly after ``after``."""
        return schedule_slots.next_slot(
            schedule_slots.SlotSpec(self.cron or None, self.interval_seconds, self.timezone or "UTC"), after
        )


@dataclass(slots=True)
class Walk:
    schedule: ScheduleRow
    missed: list[datetime] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)  # (job id, state)
    overdue_since: datetime | None = None


def _schedules(ctx: Context) -> list[ScheduleRow]:
    rows = ctx.fetch("reconcile_schedules")
    return [ScheduleRow(r[0], r[1], r[2], r[3], r[4], to_datetime(r[5]), to_datetime(r[6]), r[7]) for r in rows]


def walk(ctx: Context, schedule: ScheduleRow) -> Walk:
    result = Walk(schedule)
    points = [
        (to_datetime(slot), kind, ident, state)
        for slot, kind, ident, state in ctx.fetch(
            "reconcile_schedule_points", schedule_id=schedule.id, limit=POINTS_LIMIT
        )
    ]
    anchor: datetime | None = None
    active = False  # the anchor's period already has a non-cancelled job
    for slot, kind, ident, state in points:
        is_active_job = kind == "job" and state != "cancelled"
        if anchor is not None and slot < schedule.next_slot(anchor):
            if is_active_job and active:
                result.duplicates.append((ident, state))
            active = active or is_active_job
            continue
        if anchor is not None:
            expected = schedule.next_slot(anchor)
            while expected < slot and len(result.missed) < MISSED_LIMIT:
                result.missed.append(expected)
                expected = schedule.next_slot(expected)
        anchor, active = slot, is_active_job
    last = max([s for s in (anchor, schedule.last_slot_at) if s is not None], default=schedule.created_at)
    due = schedule.next_slot(last)
    if due < ctx.now - timedelta(seconds=float(engine_settings.STALE_QUEUED_SECONDS)):
        result.overdue_since = due
    return result


def _all_walks(ctx: Context) -> tuple[list[Walk], dict[str, str]]:
    """Walk every enabled schedule; one that cannot be evaluated (bad cron or time zone
    stored behind the validation's back) is reported, not allowed to stop the others."""
    done, broken = [], {}
    for schedule in _schedules(ctx):
        try:
            done.append(walk(ctx, schedule))
        except (ValueError, KeyError, ArithmeticError) as exc:
            broken[schedule.name] = f"{type(exc).__name__}: {exc}"
    return done, broken


def walks(ctx: Context) -> list[Walk]:
    """The walks of this run, computed once per report (the three checks share them)."""
    if "_slot_walks" not in ctx.__dict__:
        ctx.__dict__["_slot_walks"], ctx.__dict__["_broken_schedules"] = _all_walks(ctx)
    done: list[Walk] = ctx.__dict__["_slot_walks"]
    return done


def _slot_id(schedule_id: int, slot: datetime) -> str:
    return f"{schedule_id}@{iso(slot)}"


def _inspect_missed(ctx: Context, check: Check) -> Finding:
    found = [(w.schedule.id, slot) for w in walks(ctx) for slot in w.missed]
    per_schedule = {w.schedule.name: len(w.missed) for w in walks(ctx) if w.missed}
    detail = {"schedules": per_schedule}
    if ctx.__dict__["_broken_schedules"]:
        detail["unreadable_schedules"] = ctx.__dict__["_broken_schedules"]
    return check.finding(len(found), [_slot_id(s, slot) for s, slot in found[: ctx.sample_size]], **detail)


def _inspect_duplicates(ctx: Context, check: Check) -> Finding:
    found = [(ident, state) for w in walks(ctx) for ident, state in w.duplicates]
    not_queued = sum(1 for _, state in found if state != "queued")
    return check.finding(len(found), [ident for ident, _ in found[: ctx.sample_size]], already_ran=not_queued)


def _inspect_overdue(ctx: Context, check: Check) -> Finding:
    late = [w for w in walks(ctx) if w.overdue_since is not None]
    return check.finding(
        len(late),
        [w.schedule.id for w in late[: ctx.sample_size]],
        due_since={w.schedule.name: iso(w.overdue_since) for w in late},
    )


def _fix_missed(ctx: Context) -> Applied:
    applied = Applied("missed_slots")
    for w in _all_walks(ctx)[0]:
        for start in range(0, len(w.missed), ctx.batch_size):
            with transaction.atomic(using=ctx.database):
                for slot in w.missed[start : start + ctx.batch_size]:
                    if not ctx.fetch(
                        "reconcile_record_missed_slot",
                        schedule_id=w.schedule.id,
                        slot=ctx.db_datetime(slot),
                        reason="reconcile",
                    ):
                        continue  # another reconcile (or the scheduler) recorded it first
                    audit.record(
                        actor=ctx.actor,
                        action="reconcile.missed_slots",
                        target_type="schedule",
                        target_id=w.schedule.id,
                        tenant=w.schedule.tenant,
                        before=None,
                        after={"slot": iso(slot), "recorded_missed": True},
                        reason="slot had neither a job nor a missed-slot record",
                        using=ctx.database,
                    )
                    applied.add(_slot_id(w.schedule.id, slot))
            ctx.progress(f"missed_slots: {applied.fixed} recorded")
    return applied


def _fix_duplicates(ctx: Context) -> Applied:
    applied = Applied("duplicate_slots")
    for w in _all_walks(ctx)[0]:
        for job_id, state in w.duplicates:
            if state != "queued":
                continue
            with transaction.atomic(using=ctx.database):
                won = ctx.fetch("reconcile_cancel_queued_job", id=job_id)
                if not won:
                    continue
                audit.record(
                    actor=ctx.actor,
                    action="reconcile.duplicate_slots",
                    target_type="job",
                    target_id=job_id,
                    tenant=won[0][3],
                    before={"state": "queued"},
                    after={"state": "cancelled"},
                    reason=f"second job in one slot of schedule {w.schedule.name}",
                    using=ctx.database,
                )
                applied.add(job_id)
    return applied


CHECKS = [
    Check(
        name="missed_slots",
        description="Schedule slots inside the look-back window with neither a job nor a "
        "missed-slot record, between slots that were recorded.",
        action="record each as a missed slot (reason 'reconcile'; insert-if-absent on the "
        "unique (schedule, slot) index)",
        inspect=_inspect_missed,
        fix=_fix_missed,
    ),
    Check(
        name="duplicate_slots",
        description="More than one non-cancelled job within one slot period of a schedule.",
        action="cancel the extra jobs still queued (the earliest job of the slot is kept); "
        "extras that already ran are report only",
        inspect=_inspect_duplicates,
        fix=_fix_duplicates,
    ),
    Check(
        name="overdue_schedules",
        description="Enabled schedules whose next slot has been due for more than "
        "STALE_QUEUED_SECONDS without a job: no leader is enqueueing.",
        action="none (report only): start a worker that can lead; the schedule's misfire "
        "policy decides about the missed slots",
        inspect=_inspect_overdue,
    ),
]
