"""Fenced writes in batches: a stale token riding in the same batch as the live token of
the same job (a worker that lost attempt 1 to recovery and claimed attempt 2 of the
job before attempt 1's handler returned) must still write nothing."""

from __future__ import annotations

import pytest
from django.db import connection

from taskengine import store
from taskengine.jobs import ClaimedJob
from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job
from taskengine.runtime.execution import RunningJob, outcome_for
from tests import tasks

from .clock import advance_clock

pytestmark = pytest.mark.django_db(transaction=True)


def claim(worker: str) -> ClaimedJob:
    [job] = store.claim_jobs(connection, worker_id=worker, queues=["default"], limit=1, lease_seconds=30)
    return job


def test_a_stale_outcome_batched_with_the_live_one_of_its_job_leaves_the_lost_attempt_alone():
    tasks.add.enqueue(1, 2)
    first = claim("w1")
    advance_clock(31)
    [lost] = recovery.run_once("default", dead_after=3600)
    assert (lost.id, lost.state) == (first.id, "queued")
    second = claim("w1")
    lost_attempt = ExecutionLog.objects.filter(job_id=first.id, attempt=1).values().get()
    assert lost_attempt["outcome"] == "lost"

    won = store.finish_jobs(
        connection,
        worker_id="w1",
        outcomes=[
            outcome_for(RunningJob(first), "from the lost attempt", None),
            outcome_for(RunningJob(second), "from the live attempt", None),
        ],
    )

    assert won.keys() == {second.id}
    assert Job.objects.get(pk=second.id).return_value == "from the live attempt"
    assert ExecutionLog.objects.filter(job_id=first.id, attempt=1).values().get() == lost_attempt
    assert ExecutionLog.objects.get(job_id=second.id, attempt=2).outcome == "succeeded"
