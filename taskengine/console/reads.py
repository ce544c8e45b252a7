"""The console's read models: dashboard summary, job lists and detail, workers and
leader, schedules. Every function takes the requesting user and scopes what it reads
with ``tenancy``; none writes. Times come from the database clock (``store.db_now``).

Cost on a big table (see docs/performance.md): counts are bounded (``counts.
bounded_count``), the throughput chart reads the last hour through the
``finished_at`` index, lists are keyset pages.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Count, Min, Prefetch, QuerySet
from django.db.models.functions import TruncMinute

from taskengine.ops.tenancy import RequestUser, scope_jobs, tenants_for

from .. import gate
from ..conf import engine_settings
from ..models import (
    ExecutionLog,
    Job,
    JobQuerySet,
    Leader,
    MissedSlot,
    OperatorAction,
    Schedule,
    WorkerProcess,
    WorkerState,
)
from ..ops import queue_control
from ..schedule_slots import SlotSpec, next_slot
from ..states import JobState
from ..store import db_now as db_now  # the console's views read the clock through this module
from . import serialize
from .counts import bounded_count, queued_queues

CHART_MINUTES = 60
LIST_DEFER = ("args", "kwargs", "return_value")


def jobs_for(user: RequestUser, using: str = "default") -> JobQuerySet:
    return scope_jobs(Job.objects.using(using), user)


def audit_for(user: RequestUser, using: str = "default") -> QuerySet[OperatorAction]:
    tenants = tenants_for(user)
    rows = OperatorAction.objects.using(using)
    return rows if tenants is None else rows.filter(tenant__in=tenants)


def schedules_for(user: RequestUser, using: str = "default") -> QuerySet[Schedule]:
    tenants = tenants_for(user)
    rows = Schedule.objects.using(using)
    return rows if tenants is None else rows.filter(tenant__in=tenants)


def gate_banner(using: str = "default") -> dict[str, Any]:
    """Cached once open; a closed gate is re-read live so the banner says why."""
    if gate.is_ready(using):
        return {"ready": True, "reason": ""}
    status = gate.status(using)
    return {"ready": status.ready, "reason": status.reason, "pending": status.pending}


def known_queues(using: str = "default") -> list[str]:
    """Configured queues, queues with queued jobs (claim index walk) and queues live
    workers serve. Never a scan of the job table."""
    served = {
        q
        for w in WorkerProcess.objects.using(using)
        .filter(state=WorkerState.RUNNING)
        .values_list("queues", flat=True)[:500]
        for q in (w or [])
    }
    return sorted(_configured_queues() | set(queued_queues(using)) | served)


def counts_by_state(user: RequestUser, using: str = "default") -> dict[str, dict[str, Any]]:
    jobs = jobs_for(user, using)
    return {state: bounded_count(jobs.filter(state=state)).as_dict() for state in JobState.values}


def _configured_queues() -> set[str]:
    return {q for backend in settings.TASKS.values() for q in backend.get("QUEUES", [])}


class FinishedRow(TypedDict):
    """Jobs finished in one minute, of one queue, in one final state."""

    minute: datetime
    queue: str
    state: str
    n: int


def finished_rows(user: RequestUser, now: datetime, using: str = "default") -> tuple[datetime, list[FinishedRow]]:
    """Jobs finished in the last CHART_MINUTES minutes, counted per (minute, queue,
    state). Index: taskengine_job_finished_idx (finished_at, partial)."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=CHART_MINUTES)
    rows = (
        jobs_for(user, using)
        .filter(finished_at__gte=start, finished_at__lt=end)
        .annotate(minute=TruncMinute("finished_at"))
        .values("minute", "queue", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    return start, list(rows)


def counts_by_queue(
    user: RequestUser, finished: list[FinishedRow], using: str = "default"
) -> dict[str, dict[str, Any]]:
    """Per queue: queued and running jobs now (bounded counts through the claim and
    lease indexes) and jobs finished in the last hour by final state."""
    jobs = jobs_for(user, using)
    last_hour: dict[str, dict[str, int]] = {}
    for row in finished:
        per_state = last_hour.setdefault(row["queue"], {"succeeded": 0, "failed": 0, "cancelled": 0})
        per_state[row["state"]] = per_state.get(row["state"], 0) + row["n"]
    out: dict[str, dict[str, Any]] = {}
    for queue in sorted(set(known_queues(using)) | set(last_hour)):
        out[queue] = {
            "queued": bounded_count(jobs.filter(queue=queue, state=JobState.QUEUED)).as_dict(),
            "running": bounded_count(jobs.filter(queue=queue, state=JobState.RUNNING)).as_dict(),
            "finished_last_hour": last_hour.get(queue, {"succeeded": 0, "failed": 0, "cancelled": 0}),
        }
    return out


def throughput(start: datetime, finished: list[FinishedRow]) -> dict[str, Any]:
    """Per-minute buckets of the last hour (every minute present, zeros included)."""
    buckets = {
        start + timedelta(minutes=i): {"succeeded": 0, "failed": 0, "cancelled": 0} for i in range(CHART_MINUTES)
    }
    for row in finished:
        bucket = buckets.get(row["minute"])
        if bucket is not None and row["state"] in bucket:
            bucket[row["state"]] += row["n"]
    return {
        "bucket_seconds": 60,
        "since": serialize.iso(start),
        "until": serialize.iso(start + timedelta(minutes=CHART_MINUTES)),
        "buckets": [{"start": serialize.iso(t), **v} for t, v in buckets.items()],
    }


def oldest_queued_age(user: RequestUser, now: datetime, using: str = "default") -> float | None:
    """Seconds the longest-waiting due job has been waiting (None: nothing due).
    Index: taskengine_job_claim_idx (partial on queued rows)."""
    oldest = jobs_for(user, using).queued().filter(run_after__lte=now).aggregate(m=Min("run_after"))["m"]
    return None if oldest is None else max(0.0, (now - oldest).total_seconds())


def workers(now: datetime, using: str = "default", limit: int = 200) -> list[dict[str, Any]]:
    cutoff = now - timedelta(seconds=engine_settings.WORKER_DEAD_AFTER_SECONDS)
    rows = WorkerProcess.objects.using(using).order_by("-last_heartbeat_at")[:limit]
    return [serialize.worker_row(w, _alive(w, cutoff)) for w in rows]


def _alive(worker: WorkerProcess, cutoff: datetime) -> bool:
    live_states = (WorkerState.RUNNING, WorkerState.DRAINING)
    return worker.state in live_states and worker.last_heartbeat_at >= cutoff


def leaders(now: datetime, using: str = "default") -> list[dict[str, Any]]:
    return [serialize.leader_row(row, now) for row in Leader.objects.using(using).order_by("name")]


def summary(user: RequestUser, using: str = "default") -> dict[str, Any]:
    now = db_now(using)
    worker_rows = workers(now, using)
    start, finished = finished_rows(user, now, using)
    return {
        "generated_at": serialize.iso(now),
        "gate": gate_banner(using),
        "counts": {"by_state": counts_by_state(user, using), "by_queue": counts_by_queue(user, finished, using)},
        "oldest_queued_age_seconds": oldest_queued_age(user, now, using),
        "throughput": throughput(start, finished),
        "workers": {"alive": sum(1 for w in worker_rows if w["alive"]), "listed": len(worker_rows)},
        "leaders": leaders(now, using),
    }


def job_detail(user: RequestUser, job_id: int, using: str = "default") -> tuple[Job, dict[str, Any]] | None:
    job = jobs_for(user, using).select_related("schedule").filter(pk=job_id).first()
    if job is None:
        return None
    attempts = list(ExecutionLog.objects.using(using).filter(job=job).order_by("attempt"))
    audit = list(audit_for(user, using).filter(target_type="job", target_id=str(job.pk))[:100])
    return job, serialize.job_detail(job, user, attempts=attempts, audit=audit)


def next_slots(schedule: Schedule, now: datetime, n: int = 3) -> list[datetime]:
    """The next ``n`` slots the scheduler will enqueue — computed by the scheduler's own
    ``schedule_slots.next_slot`` (same interval grid, cron in the schedule's time zone, DST)
    — after both the last enqueued slot and now, shown in the schedule's time zone."""
    spec, zone = SlotSpec.of(schedule), ZoneInfo(schedule.timezone or "UTC")
    slot, out = max(schedule.last_slot_at or now, now), []
    for _ in range(n):
        slot = next_slot(spec, slot)
        out.append(slot.astimezone(zone))
    return out


def schedules(user: RequestUser, using: str = "default") -> list[dict[str, Any]]:
    now = db_now(using)
    recent_runs = Job.objects.using(using).order_by("-slot").only("id", "state", "slot", "schedule_id")[:5]
    recent_missed = MissedSlot.objects.using(using).order_by("-slot")[:5]
    rows = (
        schedules_for(user, using)
        .order_by("name")
        .prefetch_related(
            Prefetch("jobs", queryset=recent_runs, to_attr="recent_runs"),
            Prefetch("missed_slots", queryset=recent_missed, to_attr="recent_missed"),
        )[:500]
    )
    out = []
    for schedule in rows:
        out.append(
            {
                "name": schedule.name,
                "task_path": schedule.task_path,
                "cron": schedule.cron,
                "interval_seconds": schedule.interval_seconds,
                "timezone": schedule.timezone,
                "queue": schedule.queue,
                "tenant": schedule.tenant,
                "enabled": schedule.enabled,
                "misfire_policy": schedule.misfire_policy,
                "last_slot_at": serialize.iso(schedule.last_slot_at),
                "next_slots": [serialize.iso(s) for s in next_slots(schedule, now)] if schedule.enabled else [],
                "last_runs": [
                    {"id": j.pk, "state": j.state, "slot": serialize.iso(j.slot)} for j in schedule.recent_runs
                ],
                "missed_slots": [{"slot": serialize.iso(m.slot), "reason": m.reason} for m in schedule.recent_missed],
            }
        )
    return out


def queue_rows(user: Any, using: str = "default") -> list[dict[str, Any]]:
    """Every known queue with its pause state and the user's queued and running jobs
    (bounded counts through the claim and lease indexes). Reads only."""
    rows = queue_control.statuses(using, user=user, extra=known_queues(using), count=bounded_count)
    return [
        {
            **serialize.queue_status(row),
            "can_pause": queue_control.has_permission(user, row.tenant),
            "can_limit": queue_control.may_limit(user, row.tenant),
        }
        for row in rows
    ]
