"""Operator writes on jobs: requeue, retry now, cancel.

Every operation is the same four steps, in one database transaction:

1. **permission** — the actor must be an active user holding the job permission
   (``taskengine.requeue_job`` / ``retry_job`` / ``cancel_job``); otherwise
   :class:`OperationForbidden` (HTTP 403) and nothing is read or written;
2. **tenant scope** — the job is looked up through ``tenancy.scope_jobs``; a job the
   actor may not see is reported exactly like a job that does not exist
   (:class:`JobNotFound`, HTTP 404), so ids of other tenants leak nothing;
3. **compare-and-set** — one ``UPDATE … WHERE id = … AND state = <expected> AND
   attempts = <as read>`` with every time taken from the database clock (``Now()``).
   A job in the wrong state is refused with a message (:class:`OperationRefused`,
   HTTP 409); if the job moved between the read and the UPDATE, the UPDATE matches no
   row and the operation is refused the same way — it never overwrites a newer state;
4. **audit** — ``audit.record()`` writes the OperatorAction row (actor, action, target,
   tenant, state before and after, reason; ``created_at`` from the database clock)
   inside the same transaction. If the audit insert fails, the exception propagates
   and the change rolls back with it: no unaudited operator write can commit.

Semantics:

``cancel``
    queued → cancelled at once (``finished_at = now()``, ``cancel_requested_at =
    now()``). running → only ``cancel_requested_at = now()``: cancellation is
    cooperative. The worker that holds the lease sees the flag at its next heartbeat
    (``store.extend_leases`` returns it), interrupts the handler with ``JobCancelled``
    and the job ends ``cancelled``; if the attempt fails and would be retried, the
    fenced finish turns the retry into ``cancelled`` as well. Finished jobs are
    refused, as is a second cancel of a running job already asked to stop.
``requeue``
    failed or cancelled → queued, due at once (``run_after = now()``), with
    ``finished_at``, ``return_value`` and ``cancel_requested_at`` cleared. ``attempts``
    is never reset: it is the fencing token, and (job, attempt) is unique in
    ``task_execution_logs``. Instead ``max_attempts = attempts + 1``: a requeued job
    gets exactly one more attempt (no automatic retries after it), which keeps the
    CHECK ``attempts <= max_attempts`` true and makes the operator's intent — "run this
    once more" — explicit. Requeue again for another attempt. A job whose unique key is
    now held by another live job is refused.
``retry now``
    a queued job waiting for a future ``run_after`` (a backoff or a delayed job) is made
    due at once (``run_after = now()``). Refused for running and finished jobs, and
    for a queued job that is already due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Now

from taskengine.models import Job
from taskengine.observability import metrics
from taskengine.ops import audit
from taskengine.ops.tenancy import RequestUser, scope_jobs
from taskengine.states import TERMINAL_STATES, JobState, can_transition

# Action name -> the permission codename guarding it (app label "taskengine").
PERMISSIONS: dict[str, str] = {
    "requeue": "requeue_job",
    "retry": "retry_job",
    "cancel": "cancel_job",
}


class OperationError(Exception):
    """Base class; ``status`` is the HTTP status the console and API answer with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OperationForbidden(OperationError):
    status = 403


class JobNotFound(OperationError):
    status = 404


class OperationRefused(OperationError):
    """The job is in a state the operation does not apply to (or just changed)."""

    status = 409


@dataclass(frozen=True, slots=True)
class OperationResult:
    job: Job
    action: str
    audit_id: int
    message: str


def has_permission(user: RequestUser | None, action: str) -> bool:
    codename = PERMISSIONS[action]
    return bool(user is not None and user.is_active and user.has_perm(f"taskengine.{codename}"))


def allowed(job: Job, action: str) -> bool:
    """Whether ``action`` applies to ``job`` in its current state (buttons, admin)."""
    return _refusal(job, action) is None


def refusal(job: Job, action: str) -> str | None:
    """Why ``action`` does not apply to ``job`` now, or None if it does (the bulk
    operations' per-job check: bulk.py)."""
    return _refusal(job, action)


def applicable(action: str) -> Q:
    """The jobs ``action`` applies to, as a filter (the SQL form of ``_refusal``): what a
    bulk operation counts and selects, so its count is what it changes."""
    if action == "cancel":
        return Q(state=JobState.QUEUED) | Q(state=JobState.RUNNING, cancel_requested_at__isnull=True)
    if action == "requeue":
        return Q(state__in=[JobState.FAILED, JobState.CANCELLED])
    if action == "retry":
        return Q(state=JobState.QUEUED, run_after__gt=Now())
    raise ValueError(f"unknown action {action!r}")


def _refusal(job: Job, action: str) -> str | None:
    """Why ``action`` does not apply to ``job`` now, or None if it does."""
    state = job.state
    if action == "cancel":
        if not can_transition(state, JobState.CANCELLED):
            return f"job {job.pk} is already {state}; only queued or running jobs can be cancelled"
        if state == JobState.RUNNING and job.cancel_requested_at is not None:
            return f"cancellation of job {job.pk} was already requested; the worker stops it at its next heartbeat"
        return None
    if action == "requeue":
        # An operator requeue is a terminal → queued transition (succeeded jobs ran:
        # the state machine has no way back for them).
        if state not in TERMINAL_STATES or not can_transition(state, JobState.QUEUED):
            return f"job {job.pk} is {state}; only failed or cancelled jobs can be requeued"
        return None
    if action == "retry":
        if state != JobState.QUEUED:
            return f"job {job.pk} is {state}; only a queued job waiting for its run time can be retried now"
        return None
    raise ValueError(f"unknown action {action!r}")


def _cancel_update(job: Job) -> tuple[Q, dict[str, Any], str]:
    if job.state == JobState.QUEUED:
        changes = {"state": JobState.CANCELLED, "finished_at": Now(), "cancel_requested_at": Now()}
        return Q(state=JobState.QUEUED), changes, f"Cancelled job {job.pk}."
    changes = {"cancel_requested_at": Now()}
    return (
        Q(state=JobState.RUNNING, cancel_requested_at__isnull=True),
        changes,
        f"Cancellation of running job {job.pk} requested; the worker stops it at its next heartbeat.",
    )


def _requeue_update(job: Job) -> tuple[Q, dict[str, Any], str]:
    changes = {
        "state": JobState.QUEUED,
        "run_after": Now(),
        "finished_at": None,
        "return_value": None,
        "cancel_requested_at": None,
        "max_attempts": job.attempts + 1,
    }
    return Q(state=job.state), changes, f"Requeued job {job.pk} (one more attempt)."


def _retry_update(job: Job) -> tuple[Q, dict[str, Any], str]:
    return (Q(state=JobState.QUEUED, run_after__gt=Now()), {"run_after": Now()}, f"Job {job.pk} is due now.")


UPDATES: dict[str, Callable[[Job], tuple[Q, dict[str, Any], str]]] = {
    "cancel": _cancel_update,
    "requeue": _requeue_update,
    "retry": _retry_update,
}


def perform(
    action: str, job_id: Any, *, actor: RequestUser, reason: str = "", using: str = "default"
) -> OperationResult:
    """Run ``action`` on job ``job_id`` for ``actor``; see the module docstring.

    Raises OperationForbidden, JobNotFound or OperationRefused (nothing changed), or
    the database error of a failed audit insert (the change rolled back)."""
    if action not in UPDATES:
        raise ValueError(f"unknown action {action!r}")
    if not has_permission(actor, action):
        raise OperationForbidden(f"you do not have permission to {action} jobs")
    with transaction.atomic(using=using):
        job = _scoped_job(job_id, actor, using)
        refusal = _refusal(job, action)
        if refusal:
            raise OperationRefused(refusal)
        guard, changes, message = UPDATES[action](job)
        before = audit.job_snapshot(job)
        if not _compare_and_set(job, guard, changes, using):
            raise OperationRefused(_lost_race_message(action, job))
        job.refresh_from_db(using=using)
        row = audit.record(
            actor=actor,
            action=action,
            target_type="job",
            target_id=job.pk,
            tenant=job.tenant,
            before=before,
            after=audit.job_snapshot(job),
            reason=reason,
            using=using,
        )
        transaction.on_commit(lambda: _count(action, before["state"], job), using=using)
    return OperationResult(job=job, action=action, audit_id=row.pk, message=message)


def compare_and_set(job: Job, guard: Q, changes: dict[str, Any], using: str = "default") -> bool:
    """The single-job compare-and-set (raises OperationRefused on a held unique key)."""
    return _compare_and_set(job, guard, changes, using)


def count(action: str, state_before: str, job: Job) -> None:
    """The metrics of one committed change (call it from ``transaction.on_commit``)."""
    _count(action, state_before, job)


def _count(action: str, state_before: str, job: Job) -> None:
    """Keep the metrics' identity (submitted + requeued = finished + queued + running):
    a queued job cancelled here never reaches a worker, and a requeue re-opens a job."""
    if action == "cancel" and job.state == JobState.CANCELLED and state_before == JobState.QUEUED:
        metrics.job_finished(job.queue, job.task_path, JobState.CANCELLED)
    elif action == "requeue":
        metrics.jobs_requeued(job.queue, job.task_path)


def _lost_race_message(action: str, job: Job) -> str:
    if action == "retry":
        # The guard also requires run_after in the future (on the database clock).
        return f"job {job.pk} is already due (or no longer queued); a worker runs it as soon as a slot is free"
    return f"job {job.pk} changed state meanwhile; reload and try again"


def _scoped_job(job_id: Any, actor: RequestUser, using: str) -> Job:
    try:
        pk = int(job_id)
    except (TypeError, ValueError):
        raise JobNotFound(f"no job {job_id!r}") from None
    job = scope_jobs(Job.objects.using(using), actor).filter(pk=pk).first()
    if job is None:
        raise JobNotFound(f"no job {pk}")
    return job


def _compare_and_set(job: Job, guard: Q, changes: dict[str, Any], using: str) -> bool:
    """One UPDATE guarded by the expected state and the attempt number as read."""
    rows = Job.objects.using(using).filter(guard, pk=job.pk, attempts=job.attempts)
    try:
        with transaction.atomic(using=using):
            return rows.update(**changes) == 1
    except IntegrityError as exc:
        if "unique" in str(exc).lower():
            raise OperationRefused(
                f"job {job.pk} cannot be requeued: another live job holds its unique key {job.unique_key!r}"
            ) from None
        raise


@dataclass(slots=True)
class BulkResult:
    done: list[int]
    refused: dict[int, str]


def perform_many(
    action: str, job_ids: list[int], *, actor: RequestUser, reason: str = "", using: str = "default"
) -> BulkResult:
    """Apply ``action`` job by job, each in its own transaction (one refusal never
    blocks the others; each change has its own audit row)."""
    result = BulkResult(done=[], refused={})
    for job_id in job_ids:
        try:
            perform(action, job_id, actor=actor, reason=reason, using=using)
        except OperationError as exc:
            result.refused[job_id] = exc.message
        else:
            result.done.append(job_id)
    return result
