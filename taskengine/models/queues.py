"""Queues as records: pause and limits (docs/queues.md)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


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
