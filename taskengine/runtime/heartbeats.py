"""The worker registry: one WorkerProcess row per runworker, heartbeated on the
database clock; a clean exit marks it ``stopped``.

Dead-worker detection: a ``running``/``draining`` row whose heartbeat is older than
WORKER_DEAD_AFTER_SECONDS belongs to a dead worker. The leader marks such rows ``dead``
(maintenance/dead_workers.py) and recovery hands their running jobs back without
waiting for the leases (maintenance/recovery.py). A worker that was only paused finds
its row dead at its next heartbeat (``heartbeat`` returns False) and registers again;
its late finishes are fenced out by the job's attempt number."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from taskengine.conf import engine_settings
from taskengine.models import WorkerProcess, WorkerState


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def register(database: str, worker_id: str, queues: list[str], concurrency: int) -> None:
    WorkerProcess.objects.using(database).update_or_create(
        worker_id=worker_id,
        defaults=dict(
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(queues),
            concurrency=concurrency,
            state=WorkerState.RUNNING,
            started_at=Now(),
            last_heartbeat_at=Now(),
            stopped_at=None,
        ),
    )


def heartbeat(database: str, worker_id: str, state: str) -> bool:
    """Returns False if the row is gone or was marked dead (the worker re-registers)."""
    return bool(
        WorkerProcess.objects.using(database)
        .filter(worker_id=worker_id)
        .exclude(state=WorkerState.DEAD)
        .update(last_heartbeat_at=Now(), state=state)
    )


def mark_stopped(database: str, worker_id: str) -> None:
    WorkerProcess.objects.using(database).filter(worker_id=worker_id).update(
        state=WorkerState.STOPPED, stopped_at=Now(), last_heartbeat_at=Now()
    )


def dead_workers(database: str, dead_after: float | None = None) -> QuerySet[WorkerProcess]:
    """Workers known dead (read-only): marked dead, or running/draining with a
    heartbeat older than ``dead_after`` seconds on the database clock."""
    dead_after = float(dead_after if dead_after is not None else engine_settings.WORKER_DEAD_AFTER_SECONDS)
    stale = Q(
        state__in=[WorkerState.RUNNING, WorkerState.DRAINING],
        last_heartbeat_at__lt=Now() - timedelta(seconds=dead_after),
    )
    return WorkerProcess.objects.using(database).filter(stale | Q(state=WorkerState.DEAD))
