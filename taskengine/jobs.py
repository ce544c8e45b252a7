"""The job as the engine passes it between modules: what enqueue inserts, what a claim
hands out, what one attempt produced. Plain dataclasses, no I/O: the bottom layer,
imported by the store, the backend, the worker and the runtime alike (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class NewJob:
    task_path: str
    queue: str
    args: list[Any]  # JSON-ready (normalize_json'ed)
    kwargs: dict[str, Any]
    backend: str = "default"
    priority: int = 0
    run_after: datetime | None = None
    max_attempts: int = 3
    timeout_seconds: float | None = None
    retry_backoff_seconds: float | None = None
    on_lease_expired: str = "retry"
    unique_key: str | None = None
    tenant: str | None = None
    acting_user_id: str | None = None
    concurrency_key: str | None = None  # per-key concurrency (taskengine.limits)
    concurrency_limit: int | None = None  # set (default 1) exactly when concurrency_key is


@dataclass(slots=True)
class InsertedJob:
    id: int
    enqueued_at: datetime
    created: bool  # False: a live job already held the unique key; id is that job's


@dataclass(slots=True)
class ClaimedJob:
    id: int
    task_path: str
    backend: str
    queue: str
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int  # the fencing token
    max_attempts: int
    timeout_seconds: float | None
    retry_backoff_seconds: float | None
    enqueued_at: datetime
    started_at: datetime
    last_attempted_at: datetime
    run_after: datetime
    tenant: str | None
    acting_user_id: str | None
    # With the columns above, everything the job was enqueued with: the Task its
    # TaskResults carry is rebuilt from them (DatabaseBackend.stored_task).
    on_lease_expired: str
    unique_key: str | None
    # Set when the stored arguments would not decode (a row written outside enqueue, e.g.
    # an integer past Python's digit limit): the attempt fails with it, the worker goes on.
    decode_error: str | None = None


@dataclass(slots=True)
class Outcome:
    """What one attempt produced, to be written by finish_jobs."""

    job_id: int
    attempt: int
    next_state: str  # succeeded | failed | cancelled | queued (retry)
    outcome: str  # AttemptOutcome value
    retry_delay: float = 0.0
    return_value: str | None = None  # JSON text
    error_class: str | None = None
    error_message: str = ""
    traceback: str = ""
    finished_at: datetime | None = None  # set from the database once written
    exception: BaseException | None = None  # the failure itself, for django.tasks' ERROR line (never stored)
