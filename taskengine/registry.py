"""The worker registry: one WorkerProcess row per runworker, heartbeated on the
database clock. A row whose heartbeat is older than WORKER_DEAD_AFTER_SECONDS belongs
to a dead worker (see maintenance)."""
from __future__ import annotations

import os
import socket
import uuid

from django.db.models.functions import Now

from .models import WorkerProcess, WorkerState


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def register(database: str, worker_id: str, queues: list[str], concurrency: int) -> None:
    WorkerProcess.objects.using(database).update_or_create(
        worker_id=worker_id,
        defaults=dict(host=socket.gethostname(), pid=os.getpid(), queues=list(queues),
                      concurrency=concurrency, state=WorkerState.RUNNING, started_at=Now(),
                      last_heartbeat_at=Now(), stopped_at=None),
    )


def heartbeat(database: str, worker_id: str, state: str) -> bool:
    """Returns False if the row is gone or was marked dead (the worker re-registers)."""
    return bool(
        WorkerProcess.objects.using(database)
        .filter(worker_id=worker_id).exclude(state=WorkerState.DEAD)
        .update(last_heartbeat_at=Now(), state=state)
    )


def mark_stopped(database: str, worker_id: str) -> None:
    WorkerProcess.objects.using(database).filter(worker_id=worker_id).update(
        state=WorkerState.STOPPED, stopped_at=Now(), last_heartbeat_at=Now()
    )
