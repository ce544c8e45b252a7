"""Periodic schedules and the slots a schedule missed."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from ..schedules import validate_schedule


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
