"""Build each inconsistency reconcile must find, on purpose, plus healthy look-alikes
it must leave alone. Times derive from the database clock (``db_now``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection

from taskengine import store
from taskengine.models import ExecutionLog, Job, Schedule, WorkerProcess

TASK = "tests.tasks.noop"


def db_now() -> datetime:
    return store.db_now(connection.alias)


@dataclass
class Scenario:
    expected: dict[str, list] = field(default_factory=dict)
    healthy_running: list[int] = field(default_factory=list)
    future_queued: list[int] = field(default_factory=list)


def running_job(
    now: datetime, worker: str, lease_delta: float, *, tenant: str | None = "acme", unique_key: str | None = None
) -> Job:
    job = Job.objects.create(
        task_path=TASK,
        state="running",
        attempts=1,
        max_attempts=3,
        locked_by=worker,
        lease_expires_at=now + timedelta(seconds=lease_delta),
        tenant=tenant,
        unique_key=unique_key,
        run_after=now - timedelta(minutes=5),
        started_at=now - timedelta(minutes=2),
        last_attempted_at=now - timedelta(minutes=2),
    )
    ExecutionLog.objects.create(
        job=job, attempt=1, worker_id=worker, started_at=now - timedelta(minutes=2), user_id=1, user_id_str="1"
    )
    return job


def worker(worker_id: str, now: datetime, heartbeat_age: float) -> WorkerProcess:
    return WorkerProcess.objects.create(
        worker_id=worker_id,
        host="test",
        pid=1,
        queues=["default"],
        concurrency=1,
        last_heartbeat_at=now - timedelta(seconds=heartbeat_age),
    )


def finished_job(now: datetime, **fields) -> Job:
    fields = {"state": "succeeded", "attempts": 1, **fields}
    return Job.objects.create(task_path=TASK, finished_at=now, run_after=now, **fields)


def build(copies: int = 1, *, tenant: str | None = "acme", tag: str = "") -> Scenario:
    """Each inconsistency ``copies`` times (slots once per schedule)."""
    now = db_now()
    sc = Scenario(
        expected={
            name: []
            for name in (
                "expired_leases",
                "dead_worker_jobs",
                "stale_queued_jobs",
                "blocked_unique_keys",
                "missed_slots",
                "duplicate_slots",
                "overdue_schedules",
                "user_id_str_mismatch",
                "user_id_str_missing",
            )
        }
    )
    worker(f"w-dead{tag}", now, heartbeat_age=600)
    worker(f"w-live{tag}", now, heartbeat_age=1)
    for i in range(copies):
        expired = running_job(now, f"w-gone{tag}", -60, tenant=tenant, unique_key=f"key{tag}-{i}")
        sc.expected["expired_leases"].append(expired.id)
        sc.expected["blocked_unique_keys"].append(expired.id)
        sc.expected["dead_worker_jobs"].append(running_job(now, f"w-dead{tag}", 600, tenant=tenant).id)
        sc.healthy_running.append(running_job(now, f"w-live{tag}", 600, tenant=tenant).id)
        stale = Job.objects.create(task_path=TASK, tenant=tenant, run_after=now - timedelta(hours=2))
        sc.expected["stale_queued_jobs"].append(stale.id)
        sc.future_queued.append(
            Job.objects.create(task_path=TASK, tenant=tenant, run_after=now + timedelta(hours=1)).id
        )
        history = finished_job(now, tenant=tenant, attempts=5, max_attempts=5)
        logs = [
            ExecutionLog.objects.create(
                job=history, attempt=n + 1, worker_id="w", started_at=now, user_id=uid, user_id_str=ustr
            )
            for n, (uid, ustr) in enumerate([(5, "6"), (7, None), (8, "8"), (None, "abc"), (None, None)])
        ]
        sc.expected["user_id_str_mismatch"].append(logs[0].id)
        sc.expected["user_id_str_missing"].append(logs[1].id)
    _schedules(sc, now, tenant, tag)
    return sc


def _schedules(sc: Scenario, now: datetime, tenant: str | None, tag: str) -> None:
    """Slots on the scheduler's grid: interval slots are multiples of the interval since
    the epoch, so with 60 s intervals the whole minutes."""
    minute = now.replace(second=0, microsecond=0)
    # Interval schedule with a gap: minute-4, -3 and -1 ran; minute-2 has no record.
    gap = Schedule.objects.create(name=f"gap{tag}", task_path=TASK, interval_seconds=60, tenant=tenant)
    for back in (4, 3, 1):
        finished_job(now, schedule=gap, slot=minute - timedelta(minutes=back), tenant=tenant)
    Schedule.objects.filter(pk=gap.pk).update(last_slot_at=minute - timedelta(minutes=1))
    sc.expected["missed_slots"].append(f"{gap.id}@{(minute - timedelta(minutes=2)).isoformat()}")
    # Cron schedule in a non-UTC zone with a gap: c, c+10min ran; c+5min did not.
    cron = Schedule.objects.create(
        name=f"cron{tag}", task_path=TASK, cron="*/5 * * * *", timezone="Europe/Paris", tenant=tenant
    )
    c = minute - timedelta(minutes=now.minute % 5 + 15)
    for offset in (0, 10):
        finished_job(now, schedule=cron, slot=c + timedelta(minutes=offset), tenant=tenant)
    sc.expected["missed_slots"].append(f"{cron.id}@{(c + timedelta(minutes=5)).isoformat()}")
    # Two jobs inside one slot period: the queued extra (one second later) is the duplicate.
    dup = Schedule.objects.create(name=f"dup{tag}", task_path=TASK, interval_seconds=60, tenant=tenant)
    b = minute - timedelta(minutes=2)
    finished_job(now, schedule=dup, slot=b, tenant=tenant)
    extra = Job.objects.create(
        task_path=TASK, schedule=dup, slot=b + timedelta(seconds=1), tenant=tenant, run_after=now + timedelta(hours=1)
    )
    sc.expected["duplicate_slots"].append(extra.id)
    # Nothing enqueued for an hour: overdue.
    late = Schedule.objects.create(name=f"late{tag}", task_path=TASK, interval_seconds=60, tenant=tenant)
    finished_job(now, schedule=late, slot=minute - timedelta(hours=1), tenant=tenant)
    sc.expected["overdue_schedules"].append(late.id)
