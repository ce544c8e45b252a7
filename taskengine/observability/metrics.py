"""Prometheus metrics of the engine, in prometheus_client's default registry (which
django-prometheus serves at the web's /metrics and ``runworker --metrics-port`` serves
from a worker). See docs/observability.md for every metric and the alerts built on them.

Invariants:
- Labels are bounded: queue, task path, state, operation — never job ids, worker ids or
  error messages.
- These are per-process counters: a job is counted as submitted by the process that
  enqueued it (on commit) and as finished by the worker that ran it, so the fleet-wide
  identity holds over the sum of all scraped processes::

      submitted + requeued = succeeded + failed + cancelled + queued + running

  (queued and running from the database gauges of taskengine.collectors).
- Updating a metric never touches the database and never raises into the caller.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

# prometheus_client appends ``_total`` to counter names on exposition.
JOBS_SUBMITTED = Counter("taskengine_jobs_submitted", "Jobs enqueued (counted on commit).", ["queue", "task"])
JOBS_REQUEUED = Counter(
    "taskengine_jobs_requeued", "Finished jobs an operator sent back to the queue.", ["queue", "task"]
)
JOBS_RUNNING = Gauge("taskengine_jobs_running", "Jobs running in this process right now.", ["queue"])
JOBS_SUCCEEDED = Counter("taskengine_jobs_succeeded", "Jobs that finished successfully.", ["queue", "task"])
JOBS_FAILED = Counter(
    "taskengine_jobs_failed",
    "Jobs that failed for good (attempts exhausted, or recovered as failed).",
    ["queue", "task"],
)
JOBS_RETRIED = Counter(
    "taskengine_jobs_retried", "Failed attempts sent back to the queue for a retry.", ["queue", "task"]
)
JOBS_CANCELLED = Counter("taskengine_jobs_cancelled", "Jobs that ended cancelled.", ["queue", "task"])
JOBS_RECOVERED = Counter("taskengine_jobs_recovered", "Running jobs whose lease expired and were recovered.", ["queue"])
LEASES_LOST = Counter("taskengine_leases_lost", "Attempts whose lease this worker lost before finishing.", ["queue"])
TABLES_VACUUMED = Counter(
    "taskengine_tables_vacuumed", "VACUUMs the leader ran of the job tables (leader/vacuum.py).", ["table"]
)
VACUUM_SECONDS = Counter(
    "taskengine_vacuum_seconds", "Seconds the leader spent in VACUUM of the job tables.", ["table"]
)
DB_ERRORS = Counter("taskengine_db_errors", "Database errors met by the engine, by operation.", ["operation"])
WORKER_GATE_OPEN = Gauge(
    "taskengine_worker_gate_open",
    "1 once this worker found its database at the head of the migrations; 0 while it waits.",
)
WORKER_SLOTS = Gauge("taskengine_worker_slots", "Execution slots (concurrency) of the worker in this process.")
CLAIM_LATENCY = Histogram(
    "taskengine_claim_latency_seconds",
    "Time one claim statement took (empty claims included).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOB_DURATION = Histogram(
    "taskengine_job_duration_seconds",
    "Handler run time per attempt.",
    ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
)


_CHILDREN: dict[tuple[Any, str, str], Any] = {}  # (metric, queue, task) -> labels() child


def _child(metric: Any, queue: str, task: str) -> Any:
    """``metric.labels(queue, task)``, looked up once per label pair (labels() validates
    and hashes its arguments on every call; the per-job counters call it thousands of
    times a second). Label pairs are bounded: queues times task paths."""
    key = (metric, queue, task)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(queue, task)
    return child


class _Submitted(Protocol):
    """What jobs_submitted reads of a new job."""

    @property
    def queue(self) -> str: ...
    @property
    def task_path(self) -> str: ...


def jobs_submitted(jobs: Sequence[_Submitted]) -> None:
    """Count newly inserted jobs (objects with ``queue`` and ``task_path``)."""
    if len(jobs) == 1:  # the common enqueue(): no tally
        _child(JOBS_SUBMITTED, jobs[0].queue, jobs[0].task_path).inc()
        return
    submitted_counted(tally_submitted(_Tally(), jobs))


def tally_submitted(tally: _Tally[tuple[str, str]], jobs: Iterable[_Submitted]) -> _Tally[tuple[str, str]]:
    """Add ``jobs`` to ``tally`` — what submitted_counted counts once they are committed —
    and return it (a bulk enqueue tallies each chunk while the database takes the next)."""
    tally.update((j.queue, j.task_path) for j in jobs)
    return tally


def submitted_counted(tally: _Tally[tuple[str, str]]) -> None:
    """Count newly inserted jobs tallied by tally_submitted."""
    for (queue, task), n in tally.items():
        _child(JOBS_SUBMITTED, queue, task).inc(n)


def jobs_requeued(queue: str, task: str, count: int = 1) -> None:
    """An operator moved finished jobs back to ``queued`` (console / admin / reconcile)."""
    JOBS_REQUEUED.labels(queue, task).inc(count)


def job_finished(queue: str, task: str, state: str, outcome: str | None = None) -> None:
    """An attempt ended and the job is now in ``state``. ``queued`` means a retry;
    ``cancelled`` also counts an operator's cancel of a job that never ran."""
    if state == "succeeded":
        _child(JOBS_SUCCEEDED, queue, task).inc()
    elif state == "failed":
        _child(JOBS_FAILED, queue, task).inc()
    elif state == "cancelled":
        _child(JOBS_CANCELLED, queue, task).inc()
    elif state == "queued":
        _child(JOBS_RETRIED, queue, task).inc()


def job_recovered(queue: str, task: str, state: str) -> None:
    """Recovery swept an expired lease back to ``queued``, to ``failed``, or — when an
    operator had asked to cancel it — to ``cancelled``; the terminal ones count as
    failed / cancelled jobs too (they will not run again)."""
    JOBS_RECOVERED.labels(queue).inc()
    if state == "failed":
        JOBS_FAILED.labels(queue, task).inc()
    elif state == "cancelled":
        JOBS_CANCELLED.labels(queue, task).inc()


def serve(host: str, port: int) -> None:
    """Serve this process's metrics on http://HOST:PORT/metrics (a daemon thread)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
