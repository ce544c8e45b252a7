"""Worker processes (their heartbeats) and the leader's lease."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


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
