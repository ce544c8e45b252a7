"""The job and its attempts: ``taskengine_job`` (CHECK constraints mirror the state
machine of states.py) and ``task_execution_logs`` (one row per attempt)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from ..states import LIVE_STATES, TERMINAL_STATES, AttemptOutcome, JobState

STATE_VALUES = [s.value for s in JobState]
LIVE = sorted(str(s) for s in LIVE_STATES)
TERMINAL = sorted(str(s) for s in TERMINAL_STATES)


class LeaseExpiryPolicy(models.TextChoices):
    RETRY = "retry", "Retry (back to queued)"
    FAIL = "fail", "Fail the job"


class JobQuerySet(models.QuerySet["Job"]):
    def queued(self) -> JobQuerySet:
        return self.filter(state=JobState.QUEUED)

    def running(self) -> JobQuerySet:
        return self.filter(state=JobState.RUNNING)

    def succeeded(self) -> JobQuerySet:
        return self.filter(state=JobState.SUCCEEDED)

    def failed(self) -> JobQuerySet:
        return self.filter(state=JobState.FAILED)

    def cancelled(self) -> JobQuerySet:
        return self.filter(state=JobState.CANCELLED)

    def live(self) -> JobQuerySet:
        return self.filter(state__in=LIVE)

    def terminal(self) -> JobQuerySet:
        return self.filter(state__in=TERMINAL)

    def for_tenants(self, tenants: list[str] | None) -> JobQuerySet:
        """``None`` means every tenant (superusers); a list scopes to those tenants."""
        if tenants is None:
            return self
        return self.filter(tenant__in=list(tenants))


class Job(models.Model):
    task_path = models.CharField(max_length=300, help_text="Import path of the @task object.")
    backend = models.CharField(max_length=64, default="default")
    queue = models.CharField(max_length=64, default="default")
    priority = models.SmallIntegerField(default=0, help_text="-100…100; higher runs first.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)

    run_after = models.DateTimeField(db_default=Now(), help_text="Earliest time the job may start.")
    enqueued_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True, help_text="First attempt's start.")
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    attempts = models.PositiveIntegerField(
        default=0, help_text="Claims so far; the current attempt number is the fencing token."
    )
    max_attempts = models.PositiveIntegerField(default=3)
    timeout_seconds = models.FloatField(null=True, blank=True)
    retry_backoff_seconds = models.FloatField(null=True, blank=True)
    on_lease_expired = models.CharField(
        max_length=8, choices=LeaseExpiryPolicy.choices, default=LeaseExpiryPolicy.RETRY
    )

    locked_by = models.CharField(max_length=128, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    return_value = models.JSONField(null=True, blank=True)
    unique_key = models.CharField(max_length=255, null=True, blank=True)
    tenant = models.CharField(max_length=64, null=True, blank=True)
    acting_user_id = models.CharField(
        max_length=64, null=True, blank=True, help_text="Primary key of the acting user, as text."
    )
    schedule = models.ForeignKey(
        "Schedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        db_index=False,  # taskengine_job_schedule_slot_uniq leads with schedule_id
    )
    slot = models.DateTimeField(null=True, blank=True, help_text="Schedule slot this job runs.")
    # Per-key concurrency (docs/queues.md): at most concurrency_limit running jobs share a
    # key, fleet-wide. NULL for jobs without a key (the claim's fast path).
    concurrency_key = models.CharField(max_length=255, null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        db_table = "taskengine_job"
        ordering = ["-id"]
        permissions = [
            ("requeue_job", "Can requeue a finished job"),
            ("retry_job", "Can retry a queued job now"),
            ("cancel_job", "Can cancel a job"),
            ("reconcile_apply", "Can apply reconcile fixes"),
            ("view_backfill_report", "Can view backfill reports"),
        ]
        indexes = [
            # The claim: WHERE state = 'queued' AND queue = … ORDER BY priority DESC,
            # run_after, id. Partial, so finished rows cost the claim nothing.
            models.Index(
                "queue",
                models.F("priority").desc(),
                "run_after",
                "id",
                condition=Q(state="queued"),
                name="taskengine_job_claim_idx",
            ),
            # The running set: recovery, heartbeats' dead-worker checks, metrics. Running
            # rows are few (bounded by the fleet's execution slots), so one small index
            # serves every query on them; lease_expires_at is deliberately not indexed, so
            # a heartbeat (which only moves the lease) is a HOT update.
            models.Index(fields=["locked_by"], condition=Q(state="running"), name="taskengine_job_worker_idx"),
            # Console filters and retention. Every index here is written on each state
            # change that moves a row into it, so they are partial: the hot path (claim
            # and finish of ordinary jobs) touches as few as possible. A job list
            # filtered to succeeded/queued/running jobs walks the primary key or the
            # claim/lease indexes instead.
            models.Index(
                "state",
                models.F("id").desc(),
                condition=Q(state__in=["failed", "cancelled"]),
                name="taskengine_job_problem_idx",
            ),
            models.Index(
                "tenant",
                models.F("id").desc(),
                condition=Q(tenant__isnull=False),
                name="taskengine_job_tenant_idx",
            ),
            models.Index(
                fields=["finished_at"],
                condition=Q(finished_at__isnull=False),
                name="taskengine_job_finished_idx",
            ),
            # Per-key concurrency (taskengine.limits): the running jobs of a key, counted
            # under the key's lock, and the queued keyed jobs the limited claim walks.
            # Partial on the key, so jobs without one never enter either index.
            models.Index(
                fields=["concurrency_key"],
                condition=Q(state="running", concurrency_key__isnull=False),
                name="taskengine_job_key_running_idx",
            ),
            models.Index(
                "queue",
                "concurrency_key",
                models.F("priority").desc(),
                "run_after",
                "id",
                condition=Q(state="queued", concurrency_key__isnull=False),
                name="taskengine_job_key_queued_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=STATE_VALUES), name="taskengine_job_state_valid"),
            models.CheckConstraint(
                condition=Q(priority__gte=-100, priority__lte=100), name="taskengine_job_priority_range"
            ),
            models.CheckConstraint(
                condition=Q(max_attempts__gte=1) & Q(attempts__lte=models.F("max_attempts")),
                name="taskengine_job_attempts_bounded",
            ),
            # finished_at is set exactly when the job is terminal.
            models.CheckConstraint(
                condition=Q(state__in=TERMINAL, finished_at__isnull=False)
                | Q(state__in=LIVE, finished_at__isnull=True),
                name="taskengine_job_finished_iff_terminal",
            ),
            # A lease exists exactly while the job is running, and a running job has
            # been attempted.
            models.CheckConstraint(
                condition=Q(state="running", locked_by__isnull=False, lease_expires_at__isnull=False, attempts__gte=1)
                | (~Q(state="running") & Q(locked_by__isnull=True, lease_expires_at__isnull=True)),
                name="taskengine_job_lease_iff_running",
            ),
            # One live job per unique key; a finished job frees its key. Partial on the
            # key too, so jobs without one never enter the index.
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=Q(state__in=LIVE, unique_key__isnull=False),
                name="taskengine_job_unique_live_key",
            ),
            # Exactly one job per schedule slot, ever (ON CONFLICT (schedule_id, slot)
            # WHERE schedule_id IS NOT NULL names it).
            models.UniqueConstraint(
                fields=["schedule", "slot"],
                condition=Q(schedule__isnull=False),
                name="taskengine_job_schedule_slot_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} {self.task_path} [{self.state}]"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class ExecutionLog(models.Model):
    """One row per attempt, written by the claim itself, finished by the fenced
    completion (or by recovery as ``lost``). ``user_id`` is the legacy integer key of the
    acting user; ``user_id_str`` the canonical text form that works for any user model."""

    job = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,
        related_name="attempt_logs",
        db_index=False,  # task_execution_logs_job_attempt_uniq leads with job_id
        # No database constraint (migration 0007): its per-row check took a row lock on
        # the job for every attempt the claim wrote, a third of the drain's throughput.
        # The claim writes attempt rows only for the jobs it leased in the same
        # statement, and retention (the only deleter) deletes them with their job, under
        # the job's row lock; Django still cascades ORM deletes.
        db_constraint=False,
    )
    attempt = models.PositiveIntegerField()
    worker_id = models.CharField(max_length=128)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, null=True, blank=True)
    error_class = models.CharField(max_length=300, null=True, blank=True)
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    user_id = models.BigIntegerField(null=True, blank=True)
    # Added by migration 0002 after the table existed; filled for old rows by 0003.
    user_id_str = models.CharField(max_length=64, null=True, blank=True)

    class Meta:
        db_table = "task_execution_logs"
        ordering = ["job_id", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="task_execution_logs_job_attempt_uniq"),
        ]
        # No other index: the finishing UPDATE then changes no indexed column and can
        # be a HOT update (PostgreSQL; see migration 0005's fillfactor).

    def __str__(self) -> str:
        return f"Job {self.job_id} attempt {self.attempt} ({self.outcome or 'running'})"
