"""Recovery: running jobs whose lease expired — or whose worker is known dead (state
``dead``/``stopped``, or no heartbeat for WORKER_DEAD_AFTER_SECONDS) — go back to
``queued`` (run again at once) or to ``failed`` when their attempts are spent or their
task says ``on_lease_expired="fail"``. Each is counted in
taskengine_jobs_recovered_total and its attempt log row is closed as ``lost``.

This is the engine's one and only recovery path: the claim never takes a running job,
and nothing else resets a lease. Every write is compare-and-set on ``state =
'running'`` and the attempt that was read (``locked_by``, ``attempts``), with the lease
still expired or its holder still dead re-checked under the row lock, so a job that
finished, was renewed by a heartbeat or was claimed again between our read and our
write is left as it is, and two recoverers at once recover each job once.

Fencing: the leader passes its ``lease``; the statement then changes nothing unless
that lease is still the live leader's (see leadership.py). ``lease=None`` is an
unfenced, explicit run (tests, an operator's reconcile).

Failure: database errors propagate to the caller (the maintenance ticker logs them and
tries again next tick); nothing is half-written, each run is one transaction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import metrics
from ..conf import engine_settings
from ..leadership import LeaderLease, lease_params
from ..queries import sql

logger = logging.getLogger("taskengine.recovery")


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    id: int
    attempt: int
    state: str  # queued or failed
    queue: str
    task_path: str
    worker_id: str | None = None  # who held the lost attempt
    worker_dead: bool = False  # recovered before its lease ran out: its worker is dead


def run_once(
    database: str = "default",
    *,
    limit: int | None = None,
    lease: LeaderLease | None = None,
    dead_after: float | None = None,
    job_ids: list[int] | None = None,
) -> list[RecoveredJob]:
    """Recover up to ``limit`` jobs; returns what was recovered. ``job_ids`` restricts the
    sweep to those jobs (reconcile --apply recovers what it reported, by this same path)."""
    connection = connections[database]
    ids: object = None
    if job_ids is not None:
        ids = list(job_ids) if connection.vendor == "postgresql" else json.dumps(list(job_ids))
    params = {
        "job_ids": ids,
        "limit": int(limit if limit is not None else engine_settings.RECOVERY_BATCH_SIZE),
        "dead_after": float(dead_after if dead_after is not None else engine_settings.WORKER_DEAD_AFTER_SECONDS),
        **lease_params(lease),
    }
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "recover_expired_leases"), params)
            recovered = [RecoveredJob(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in cursor.fetchall()]
    else:
        recovered = _run_sqlite(connection, params)
    for job in recovered:
        metrics.job_recovered(job.queue, job.task_path, job.state)  # recovered as failed counts as failed
        reason = f"worker {job.worker_id} is dead" if job.worker_dead else "lease expired"
        logger.warning(
            "recovered a running job (%s) -> %s",
            reason,
            job.state,
            extra={
                "event": "recovered",
                "job_id": job.id,
                "task_path": job.task_path,
                "queue": job.queue,
                "attempt": job.attempt,
                "worker_id": job.worker_id,
                "state": job.state,
            },
        )
    return recovered


def _run_sqlite(connection: BaseDatabaseWrapper, params: dict[str, Any]) -> list[RecoveredJob]:
    recovered: list[RecoveredJob] = []
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(sql(connection, "select_recoverable"), params)
        for job_id, locked_by, attempts, worker_dead in cursor.fetchall():
            cursor.execute(
                sql(connection, "recover_job"),
                {"id": job_id, "locked_by": locked_by, "attempts": attempts, "dead_after": params["dead_after"]},
            )
            row = cursor.fetchone()
            if row is None:
                continue
            if worker_dead:
                error_class, message = "taskengine.WorkerDead", f"worker {locked_by} is dead"
            else:
                error_class, message = (
                    "taskengine.LeaseExpired",
                    f"lease expired: worker {locked_by} stopped heartbeating",
                )
            cursor.execute(
                sql(connection, "log_lost_attempt"),
                {"id": job_id, "attempt": attempts, "error_class": error_class, "error_message": message},
            )
            recovered.append(RecoveredJob(row[0], row[1], row[2], row[3], row[4], locked_by, bool(worker_dead)))
    return recovered
