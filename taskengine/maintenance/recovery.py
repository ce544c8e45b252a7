"""Recovery: running jobs whose lease expired go back to ``queued`` (run again at once)
or to ``failed`` when their attempts are spent or their task says
``on_lease_expired="fail"``. Each is counted in taskengine_jobs_recovered_total.

This is the engine's one and only recovery path: the claim never takes a running job,
and nothing else resets a lease. Every write is compare-and-set on ``state = 'running'
AND lease_expires_at < now()``, so a job that finished between our read and our write
is left as it is, and two recoverers at once recover each job once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import connections, transaction

from .. import metrics
from ..queries import sql

logger = logging.getLogger("taskengine.recovery")


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    id: int
    attempt: int
    state: str  # queued or failed
    queue: str
    task_path: str


def run_once(database: str = "default", *, limit: int = 500) -> list[RecoveredJob]:
    """Recover up to ``limit`` expired leases; returns what was recovered."""
    connection = connections[database]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "recover_expired_leases"), {"limit": limit})
            rows = cursor.fetchall()
    else:
        with transaction.atomic(using=database), connection.cursor() as cursor:
            cursor.execute(sql(connection, "recover_expired_leases"), {"limit": limit})
            rows = cursor.fetchall()
            for row in rows:
                cursor.execute(sql(connection, "log_lost_attempt"), {"id": row[0], "attempt": row[1]})
    recovered = [RecoveredJob(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    for job in recovered:
        metrics.JOBS_RECOVERED.labels(job.queue).inc()
        logger.warning("recovered job with an expired lease -> %s", job.state,
                       extra={"job_id": job.id, "task_path": job.task_path, "queue": job.queue,
                              "attempt": job.attempt})
    return recovered
