"""Recovery counts what it recovers: an expired lease swept by
taskengine.leader.recovery.run_once moves taskengine_jobs_recovered_total."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now
from prometheus_client import REGISTRY

from taskengine import store
from taskengine.leader import recovery
from taskengine.models import Job
from tests import tasks


def recovered_total(queue: str) -> float:
    return REGISTRY.get_sample_value("taskengine_jobs_recovered_total", {"queue": queue}) or 0.0


@pytest.mark.django_db
def test_recovering_an_expired_lease_counts_it_as_recovered():
    result = tasks.add.enqueue(1, 2)
    claimed = store.claim_jobs(connection, worker_id="gone", queues=["default"], limit=1, lease_seconds=60)
    assert [job.id for job in claimed] == [int(result.id)]
    Job.objects.filter(pk=result.id).update(lease_expires_at=Now() - timedelta(hours=1))
    before = recovered_total("default")
    swept = recovery.run_once("default")
    assert [job.id for job in swept] == [int(result.id)]
    assert recovered_total("default") == before + 1
    assert Job.objects.get(pk=result.id).state == "queued"


@pytest.mark.django_db
def test_a_job_recovered_as_failed_counts_as_recovered_and_failed():
    result = tasks.boom.enqueue()  # max_attempts=1: its one attempt is spent
    store.claim_jobs(connection, worker_id="gone", queues=["default"], limit=1, lease_seconds=60)
    Job.objects.filter(pk=result.id).update(lease_expires_at=Now() - timedelta(hours=1))
    failed = {"queue": "default", "task": "tests.tasks.boom"}
    before = recovered_total("default"), REGISTRY.get_sample_value("taskengine_jobs_failed_total", failed) or 0.0
    assert [job.state for job in recovery.run_once("default")] == ["failed"]
    after = recovered_total("default"), REGISTRY.get_sample_value("taskengine_jobs_failed_total", failed)
    assert after == (before[0] + 1, before[1] + 1)
