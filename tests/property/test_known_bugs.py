"""Minimal reproducers of engine bugs the state machine would run into, kept apart from
it so the machine stays green while the fixes land (test_engine_machine.py keeps lone
surrogates out of its generated text, and its release rule accepts either end state of
a cancel-requested job). Each is a strict xfail: once its fix lands it passes, which
fails the run until the mark is removed."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from taskengine import operations, store
from taskengine.execution import RunningJob, failure_outcome, outcome_for
from taskengine.models import ExecutionLog, Job
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LONE_SURROGATE = "\udc80"


def claim_one() -> store.ClaimedJob:
    [job] = store.claim_jobs(connection, worker_id="w1", queues=["default"], limit=1, lease_seconds=30)
    return job


def finish(outcome: store.Outcome) -> dict:
    return store.finish_jobs(connection, worker_id="w1", outcomes=[outcome])


# SQLite stores the JSON text as it is; PostgreSQL's jsonb refuses the escaped surrogate.
@pytest.mark.xfail(connection.vendor == "postgresql", strict=True,
                   reason="known bug: jsonb refuses a lone surrogate in a return value")
def test_a_lone_surrogate_in_a_return_value_still_finishes_the_job():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    won = finish(outcome_for(RunningJob(job), {"text": f"a{LONE_SURROGATE}b"}, None))
    assert job.id in won
    row = Job.objects.get(pk=job.id)
    assert row.state in ("succeeded", "queued", "failed") and row.locked_by is None
    assert ExecutionLog.objects.get(job_id=job.id, attempt=job.attempt).finished_at is not None


@pytest.mark.xfail(strict=True, reason="known bug: a lone surrogate in an error message cannot be written")
def test_a_lone_surrogate_in_an_error_message_still_finishes_the_job():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    won = finish(failure_outcome(job, ValueError(f"bad {LONE_SURROGATE} input")))
    assert job.id in won
    assert Job.objects.get(pk=job.id).state == "queued"
    log = ExecutionLog.objects.get(job_id=job.id, attempt=job.attempt)
    assert (log.outcome, log.error_class) == ("retry", "builtins.ValueError")


@pytest.mark.xfail(strict=True, reason="known bug: a graceful release ignores a requested cancel")
def test_release_of_a_cancel_requested_job_ends_it_cancelled():
    tasks.add.enqueue(1, 2)
    job = claim_one()
    operator = get_user_model().objects.create_superuser("operator", password="x")
    operations.perform("cancel", job.id, actor=operator, reason="stop it")
    assert store.release_jobs(connection, worker_id="w1", held=[(job.id, job.attempt)]) == [job.id]
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by) == ("cancelled", None)
    assert row.finished_at is not None
