"""Minimal reproducers of engine bugs the state machine runs into, each in its smallest
form: lone surrogates in a return value or an error message, and a graceful release of
a job whose cancellation was requested. (They failed before their fixes: the surrogate
ones on 3d41abe, the release one on 3d41abe too.)"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from taskengine import store
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.models import ExecutionLog, Job
from taskengine.ops import operations
from taskengine.runtime.execution import RunningJob, failure_outcome, outcome_for
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LONE_SURROGATE = "\udc80"


def claim_one() -> ClaimedJob:
    [job] = store.claim_jobs(connection, worker_id="w1", queues=["default"], limit=1, lease_seconds=30)
    return job


def finish(outcome: Outcome) -> dict:
    return store.finish_jobs(connection, worker_id="w1", outcomes=[outcome])


def test_a_lone_surrogate_in_a_return_value_still_finishes_the_job():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    won = finish(outcome_for(RunningJob(job), {"text": f"a{LONE_SURROGATE}b"}, None))
    assert job.id in won
    row = Job.objects.get(pk=job.id)
    assert row.state in ("succeeded", "queued", "failed") and row.locked_by is None
    assert ExecutionLog.objects.get(job_id=job.id, attempt=job.attempt).finished_at is not None


def test_a_lone_surrogate_in_an_error_message_still_finishes_the_job():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    won = finish(failure_outcome(job, ValueError(f"bad {LONE_SURROGATE} input")))
    assert job.id in won
    assert Job.objects.get(pk=job.id).state == "queued"
    log = ExecutionLog.objects.get(job_id=job.id, attempt=job.attempt)
    assert (log.outcome, log.error_class) == ("retry", "builtins.ValueError")


def test_release_of_a_cancel_requested_job_ends_it_cancelled():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    operator = get_user_model().objects.create_superuser("operator", password="x")
    operations.perform("cancel", job.id, actor=operator, reason="stop it")
    assert job.id in store.release_jobs(connection, worker_id="w1", held=[(job.id, job.attempt)])
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by) == ("cancelled", None)
    assert row.finished_at is not None
