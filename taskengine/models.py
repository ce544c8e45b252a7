"""taskengine's tables. The state machine lives in states.py and is mirrored here as
CHECK constraints, so no write path (ORM, raw SQL, a console action, psql) can store a
job in a state the engine could not have produced.

Rows are never deleted except by retention (terminal jobs only) — see
maintenance/retention.py.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from .schedules import validate_schedule
from .states import LIVE_STATES, TERMINAL_STATES, AttemptOutcome, JobState

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


class WorkerState(models.TextChoices):
    RUNNING = "running", "Running"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    DEAD = "dead", "Dead"


class WorkerProcess(models.Model):
    worker_id = models.CharField(max_length=128, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField()
    started_at = models.DateTimeField(db_default=Now())
    last_heartbeat_at = models.DateTimeField(db_default=Now())
    stopped_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=WorkerState.choices, default=WorkerState.RUNNING)

    class Meta:
        db_table = "taskengine_worker"
        ordering = ["-last_heartbeat_at"]
        indexes = [models.Index(fields=["state", "last_heartbeat_at"], name="taskengine_worker_alive_idx")]

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.state})"


class Leader(models.Model):
    """One row per election name. ``term`` only ever grows; every leader-only write
    carries it so a deposed leader's writes change nothing."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=128)
    term = models.BigIntegerField()
    acquired_at = models.DateTimeField(db_default=Now())
    renewed_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "taskengine_leader"

    def __str__(self) -> str:
        return f"{self.name}: {self.holder} (term {self.term})"


class MisfirePolicy(models.TextChoices):
    SKIP = "skip", "Skip missed slots"
    RUN_ONCE = "run_once", "Run once for all missed slots"
    CATCH_UP = "catch_up", "Catch up (bounded)"


class Schedule(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    task_path = models.CharField(max_length=300)
    cron = models.CharField(max_length=120, null=True, blank=True)
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=64, default="default")
    priority = models.SmallIntegerField(default=0)
    tenant = models.CharField(max_length=64, null=True, blank=True)
    enabled = models.BooleanField(default=True)
    misfire_policy = models.CharField(max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE)
    catch_up_limit = models.PositiveIntegerField(default=10)
    last_slot_at = models.DateTimeField(null=True, blank=True)
    from_settings = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "taskengine_schedule"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(cron__isnull=False) & Q(interval_seconds__isnull=True))
                | (Q(cron__isnull=True) & Q(interval_seconds__isnull=False, interval_seconds__gte=1)),
                name="taskengine_schedule_cron_xor_interval",
            ),
            models.CheckConstraint(
                condition=Q(misfire_policy__in=[p.value for p in MisfirePolicy]),
                name="taskengine_schedule_misfire_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Reject an invalid cron, unknown time zone or unknown task with a clear
        message per field (the admin shows them on the form)."""
        self.cron = self.cron or None
        validate_schedule(self)


class MissedSlot(models.Model):
    """A slot the scheduler decided not to run (misfire policy), recorded once."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="missed_slots")
    slot = models.DateTimeField()
    reason = models.CharField(max_length=64)
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "taskengine_missed_slot"
        ordering = ["-slot"]
        constraints = [models.UniqueConstraint(fields=["schedule", "slot"], name="taskengine_missed_slot_uniq")]


class OperatorAction(models.Model):
    """Append-only audit record of every operator write, stored in the same
    transaction as the change it describes."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_repr = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    tenant = models.CharField(max_length=64, null=True, blank=True)
    state_before = models.JSONField(null=True, blank=True)
    state_after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "taskengine_operator_action"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["target_type", "target_id"], name="taskengine_audit_target_idx"),
            models.Index(fields=["tenant", "-created_at"], name="taskengine_audit_tenant_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_repr} {self.action} {self.target_type}:{self.target_id}"


class TenantMembership(models.Model):
    """Which tenants a staff user may see and act on. Superusers see every tenant."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="taskengine_tenants")
    tenant = models.CharField(max_length=64)

    class Meta:
        db_table = "taskengine_tenant_membership"
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="taskengine_tenant_membership_uniq")]

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant}"


class Queue(models.Model):
    """One row per queue: the operator's controls over it (docs/queues.md).

    Created on first use (a worker that serves it starts, an operator pauses it) or from
    ``TASKENGINE["QUEUES"]``; a queue without a row is not paused. Jobs refer to their
    queue by name only (no foreign key): enqueue never reads or writes this table.
    ``settings_paused`` is the value of ``TASKENGINE["QUEUES"][name]["paused"]`` last
    applied (False when the queue or the key is not declared): a change of the declared
    value is applied once, and an operator's change stands until the next change of
    either (``taskengine.queues.sync_settings``)."""

    name = models.CharField(max_length=64, primary_key=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=150, blank=True, default="")
    pause_reason = models.TextField(blank=True, default="")
    settings_paused = models.BooleanField(default=False)
    # The tenant a queue is dedicated to (TASKENGINE["QUEUES"][name]["tenant"]): that
    # tenant's operators may pause it. None: shared by every tenant, paused only by users
    # who see every tenant (like a job without a tenant).
    tenant = models.CharField(max_length=64, null=True, blank=True)
    # Limits (taskengine.limits, docs/queues.md): at most concurrency_limit running jobs
    # fleet-wide; at most rate_limit starts per fixed window of rate_period seconds on the
    # database clock. rate_window (epoch seconds // rate_period) and rate_count are the
    # current window's counter, written by the claim under the row's lock. settings_* are
    # the TASKENGINE["QUEUES"] values last applied, as settings_paused.
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    rate_period = models.PositiveIntegerField(null=True, blank=True)
    rate_window = models.BigIntegerField(default=0)
    rate_count = models.PositiveIntegerField(default=0)
    settings_concurrency = models.PositiveIntegerField(null=True, blank=True)
    settings_rate = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "taskengine_queue"
        ordering = ["name"]
        permissions = [
            ("pause_queue", "Can pause and resume a queue"),
            ("limit_queue", "Can set a queue's concurrency and rate limits"),
        ]
        constraints = [
            # Who and when are kept exactly while the queue is paused.
            models.CheckConstraint(
                condition=Q(paused=True, paused_at__isnull=False) | Q(paused=False, paused_at__isnull=True),
                name="taskengine_queue_paused_at_iff_paused",
            ),
            models.CheckConstraint(
                condition=Q(concurrency_limit__isnull=True) | Q(concurrency_limit__gte=1),
                name="taskengine_queue_concurrency_positive",
            ),
            # A rate is a count and its period, both or neither.
            models.CheckConstraint(
                condition=Q(rate_limit__isnull=True, rate_period__isnull=True)
                | Q(rate_limit__gte=1, rate_period__gte=1),
                name="taskengine_queue_rate_whole",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'active'})"


class BulkOperationState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class BulkOperation(models.Model):
    """One operator action applied to every job matching a filter (docs/bulk.md).

    The record is the operation's progress: it is applied in bounded batches in id
    order, each batch one transaction that changes its jobs, writes their audit rows and
    advances ``cursor`` (the last job id looked at) together, so a run killed half-way
    loses at most the batch in flight and a resumed run starts after the cursor. Jobs
    with an id above ``max_job_id`` (enqueued after the operation was created) are never
    touched."""

    action = models.CharField(max_length=16)
    # The job list's filter (job_filters.py JobFilterForm fields, as text).
    filter = models.JSONField(default=dict, blank=True)
    # The actor: a user (``actor_kind`` "user": their permission and tenants are checked
    # again on every batch) or a system/CLI name ("system": every tenant).
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_kind = models.CharField(max_length=8, default="user")
    actor_repr = models.CharField(max_length=150)
    # The actor's tenants when the operation was created (None: every tenant).
    tenants = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    state = models.CharField(max_length=16, choices=BulkOperationState.choices, default=BulkOperationState.PENDING)
    matched = models.PositiveIntegerField(default=0, help_text="Jobs the action applied to at creation.")
    changed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="Matched but changed meanwhile (not touched).")
    max_job_id = models.BigIntegerField(default=0)
    cursor = models.BigIntegerField(default=0, help_text="Last job id processed.")
    batch_size = models.PositiveIntegerField(default=500)
    batches = models.PositiveIntegerField(default=0)
    # Who applied the last batch: "console", "leader", or "cli:<host>:<pid>" (the leader
    # leaves an operation a command is running alone until it is idle).
    runner = models.CharField(max_length=150, blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "taskengine_bulk_operation"
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["id"],
                condition=Q(state__in=["pending", "running"]),
                name="taskengine_bulk_unfinished_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=["requeue", "retry", "cancel"]), name="taskengine_bulk_action_valid"
            ),
            models.CheckConstraint(
                condition=Q(state__in=["pending", "running", "done", "failed", "cancelled"]),
                name="taskengine_bulk_state_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Bulk {self.action} #{self.pk} [{self.state}]"

    @property
    def finished(self) -> bool:
        return self.state not in (BulkOperationState.PENDING, BulkOperationState.RUNNING)
