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

import logging
from dataclasses import dataclass

from django.db import connections

from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.leader.election import LeaderLease, lease_params
from taskengine.observability import metrics

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
    store = store_for(connection)
    params = {
        "job_ids": store.array(job_ids),
        "limit": int(limit if limit is not None else engine_settings.RECOVERY_BATCH_SIZE),
        "dead_after": float(dead_after if dead_after is not None else engine_settings.WORKER_DEAD_AFTER_SECONDS),
        **lease_params(lease),
    }
    recovered = [
        RecoveredJob(row.id, row.attempts, row.state, row.queue, row.task_path, row.locked_by, bool(row.worker_dead))
        for row in store.recover(connection, params)
    ]
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
