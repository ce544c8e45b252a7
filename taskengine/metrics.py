"""Prometheus metrics of the engine (prometheus_client's default registry, which
django-prometheus serves at /metrics). Labels are bounded: queue, task path, state —
never job ids. See docs/observability.md.
"""
from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

JOBS_SUBMITTED = Counter("taskengine_jobs_submitted", "Jobs enqueued (committed).", ["queue", "task"])
JOBS_RUNNING = Gauge("taskengine_jobs_running", "Jobs running in this process.", ["queue"])
JOBS_SUCCEEDED = Counter("taskengine_jobs_succeeded", "Jobs that finished successfully.", ["queue", "task"])
JOBS_FAILED = Counter("taskengine_jobs_failed", "Jobs that failed for good (attempts exhausted).", ["queue", "task"])
JOBS_RETRIED = Counter("taskengine_jobs_retried", "Failed attempts sent back to the queue.", ["queue", "task"])
JOBS_CANCELLED = Counter("taskengine_jobs_cancelled", "Running jobs that ended cancelled.", ["queue", "task"])
JOBS_RECOVERED = Counter("taskengine_jobs_recovered", "Running jobs whose lease expired and were recovered.", ["queue"])
LEASES_LOST = Counter("taskengine_leases_lost", "Attempts whose lease this worker lost before finishing.", ["queue"])
DB_ERRORS = Counter("taskengine_db_errors", "Database errors met by the engine.", ["operation"])
CLAIM_LATENCY = Histogram(
    "taskengine_claim_latency_seconds", "Time the claim statement took.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOB_DURATION = Histogram(
    "taskengine_job_duration_seconds", "Handler run time per attempt.", ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
)


def jobs_submitted(jobs: Iterable) -> None:
    for (queue, task), n in _Tally((j.queue, j.task_path) for j in jobs).items():
        JOBS_SUBMITTED.labels(queue, task).inc(n)


def job_finished(queue: str, task: str, state: str, outcome: str) -> None:
    if state == "succeeded":
        JOBS_SUCCEEDED.labels(queue, task).inc()
    elif state == "failed":
        JOBS_FAILED.labels(queue, task).inc()
    elif state == "cancelled":
        JOBS_CANCELLED.labels(queue, task).inc()
    elif state == "queued":
        JOBS_RETRIED.labels(queue, task).inc()


def serve(host: str, port: int) -> None:
    """Serve this process's metrics on http://HOST:PORT/metrics (a daemon thread)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
