"""Bulk operations on a filter (docs/bulk.md)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


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
