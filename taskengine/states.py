"""The job state machine. Pure: no database, no Django models.

::

                enqueue                claim (lease)            handler returns
      (none) ──────────► queued ───────────────────► running ───────────────────► succeeded
                          ▲  │                        │  │ handler raises / timeout
              retry after │  │ cancel                 │  └──────────► queued (run_after = now()+backoff)
              backoff     │  ▼                        │               or failed (attempts exhausted)
                          │ cancelled ◄────cancel─────┘ (cooperative: seen at next heartbeat)
                          └──── recover: lease expired ─┘ (→ failed if attempts exhausted)

``queued``
    Waiting for ``run_after`` and a free worker. Never holds a lease.
``running``
    Claimed by exactly one worker (``locked_by``) until ``lease_expires_at``; the
    attempt number is the fencing token every finishing write must present.
``succeeded`` / ``failed`` / ``cancelled``
    Terminal: ``finished_at`` is set, the lease is cleared, nothing moves the job again
    except an operator's explicit requeue (which records an audit row).

The same rules are CHECK constraints on the table (see models.Job.Meta) and every
transition is a compare-and-set UPDATE guarded by the expected state.
"""

from __future__ import annotations

from django.db import models

from .compat import TaskResultStatus


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATES: frozenset[str] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
LIVE_STATES: frozenset[str] = frozenset({JobState.QUEUED, JobState.RUNNING})

# (from, to) pairs the engine or an operator may perform.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (JobState.QUEUED, JobState.RUNNING),  # claim
        (JobState.QUEUED, JobState.CANCELLED),  # cancel before it ran
        (JobState.RUNNING, JobState.SUCCEEDED),  # complete
        (JobState.RUNNING, JobState.FAILED),  # fail (attempts exhausted) or recover
        (JobState.RUNNING, JobState.QUEUED),  # retry, release on shutdown, recover
        (JobState.RUNNING, JobState.CANCELLED),  # cooperative cancel
        (JobState.FAILED, JobState.QUEUED),  # operator requeue
        (JobState.CANCELLED, JobState.QUEUED),  # operator requeue
    }
)


def can_transition(current: str, target: str) -> bool:
    return (current, target) in TRANSITIONS


class AttemptOutcome(models.TextChoices):
    """How one attempt ended. ``None`` on the row while it is still running."""

    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (final)"
    RETRY = "retry", "Failed, will retry"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    RELEASED = "released", "Released on shutdown"
    LOST = "lost", "Lease lost (recovered)"


def to_task_result_status(state: str) -> TaskResultStatus:
    """django.tasks has no CANCELLED status: a cancelled job reads as FAILED."""
    return {
        JobState.QUEUED: TaskResultStatus.READY,
        JobState.RUNNING: TaskResultStatus.RUNNING,
        JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
        JobState.FAILED: TaskResultStatus.FAILED,
        JobState.CANCELLED: TaskResultStatus.FAILED,
    }[JobState(state)]
