"""advance_clock: the test hook that moves the database clock instead of sleeping."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.apps import apps
from django.db import connection, models

from taskengine import store
from taskengine.jobs import ClaimedJob
from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job
from tests import tasks

from .clock import TIMESTAMP_COLUMNS, advance_clock

pytestmark = pytest.mark.django_db(transaction=True)


def test_advance_clock_moves_every_timestamp_column_of_the_taskengine_models():
    found: dict[str, set[str]] = {}
    for model in apps.get_app_config("taskengine").get_models():
        for field in model._meta.concrete_fields:
            # DateField covers DateTimeField; a plain date column would need its own rule.
            if isinstance(field, models.DateField):
                assert isinstance(field, models.DateTimeField), f"{model.__name__}.{field.name} is a date"
                found.setdefault(model._meta.db_table, set()).add(field.column)
    assert {table: set(columns) for table, columns in TIMESTAMP_COLUMNS.items()} == found


def claim(lease_seconds: float) -> list[ClaimedJob]:
    return store.claim_jobs(connection, worker_id="w1", queues=["default"], limit=10, lease_seconds=lease_seconds)


def test_a_lease_expires_once_the_clock_has_moved_past_it():
    tasks.add.enqueue(1, 2)
    [job] = claim(lease_seconds=30)
    advance_clock(20)
    assert store.extend_leases(connection, worker_id="w1", held=[(job.id, job.attempt)], lease_seconds=30) == {
        job.id: False
    }
    advance_clock(31)
    [recovered] = recovery.run_once("default", dead_after=3600)
    assert (recovered.id, recovered.state) == (job.id, "queued")


def test_a_delayed_job_becomes_due_when_the_clock_reaches_its_run_after():
    result = tasks.add.using(run_after=store.db_now() + timedelta(seconds=90)).enqueue(1, 2)
    assert claim(30) == []
    advance_clock(60)
    assert claim(30) == []
    advance_clock(31)
    assert [j.id for j in claim(30)] == [int(result.id)]


def test_advance_clock_keeps_durations_and_nulls():
    result = tasks.add.enqueue(1, 2)
    [_job] = claim(lease_seconds=45)
    before = Job.objects.get(pk=result.id)
    log_before = ExecutionLog.objects.get(job_id=result.id)
    advance_clock(3600)
    after = Job.objects.get(pk=result.id)
    log_after = ExecutionLog.objects.get(job_id=result.id)
    hour = timedelta(hours=1)
    assert after.lease_expires_at == before.lease_expires_at - hour
    assert after.enqueued_at == before.enqueued_at - hour
    assert after.run_after == before.run_after - hour
    assert log_after.started_at == log_before.started_at - hour
    assert (after.finished_at, after.cancel_requested_at, log_after.finished_at) == (None, None, None)


def test_a_fractional_advance_moves_by_the_fraction():
    result = tasks.add.enqueue(1, 2)
    before = Job.objects.get(pk=result.id).enqueued_at
    advance_clock(1.5)
    moved = before - Job.objects.get(pk=result.id).enqueued_at
    assert abs(moved.total_seconds() - 1.5) < 0.002
