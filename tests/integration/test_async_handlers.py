"""Async handlers in a real worker process: their context on a retry, and how an
operator's cancel or a lost lease ends them (the same as for sync handlers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now

from taskengine.compat import TaskResultStatus
from taskengine.models import ExecutionLog, Job
from tests import async_tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# A 3 s lease means a heartbeat (and so a cancel or lease check) every second.
FAST_HEARTBEAT = ("--lease-seconds", "3", "--backoff-base", "0.05", "--max-backoff", "0.2")


def job_state(result) -> str:
    return Job.objects.get(pk=result.id).state


def test_an_async_handler_with_context_sees_the_earlier_attempts_on_a_retry(worker_process):
    result = async_tasks.async_context_fails_first_attempt.enqueue()
    worker = worker_process("--worker-id", "w-async-ctx", *FAST_HEARTBEAT)
    wait_for(lambda: job_state(result) in ("succeeded", "failed"), timeout=30, message="the job to finish")
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, worker.log()
    assert result.return_value == {
        "attempt": 2,
        "result_id": result.id,
        "errors": ["builtins.RuntimeError"],
        "first_error_mentions": True,
        "worker_ids": ["w-async-ctx", "w-async-ctx"],
    }
    outcomes = list(ExecutionLog.objects.filter(job_id=result.id).order_by("attempt").values_list("outcome", flat=True))
    assert outcomes == ["retry", "succeeded"]


@pytest.mark.parametrize("max_attempts", [1, 3], ids=["last-attempt", "attempts-left"])
def test_cancelling_a_running_async_job_ends_it_cancelled_on_any_attempt(worker_process, max_attempts):
    result = async_tasks.async_sleep.using(max_attempts=max_attempts).enqueue(60)
    worker = worker_process(*FAST_HEARTBEAT)
    wait_for(lambda: job_state(result) == "running", message="the job to start")
    Job.objects.filter(pk=result.id).update(cancel_requested_at=Now())
    wait_for(lambda: job_state(result) != "running", timeout=15, message="the job to end")
    assert job_state(result) == "cancelled", worker.log()
    log = ExecutionLog.objects.get(job_id=result.id)
    assert (log.outcome, log.error_class) == ("cancelled", "taskengine.runtime.execution.JobCancelled")
    # The worker carries on with its next job.
    after = async_tasks.async_sleep.enqueue(0.01)
    wait_for(lambda: job_state(after) == "succeeded", timeout=15, message="the next job to succeed")


@pytest.mark.parametrize("max_attempts", [1, 3], ids=["last-attempt", "attempts-left"])
def test_an_async_job_whose_lease_is_lost_is_recorded_as_lost(worker_process, max_attempts):
    result = async_tasks.async_sleep.using(max_attempts=max_attempts).enqueue(60)
    worker = worker_process("--no-leader", *FAST_HEARTBEAT)
    wait_for(lambda: job_state(result) == "running", message="the job to start")
    Job.objects.filter(pk=result.id).update(lease_expires_at=Now() - timedelta(seconds=1))
    discarded = "outcome lost discarded"
    wait_for(
        lambda: any(discarded in line and f"job_id={result.id} " in line for line in worker.log().splitlines()),
        timeout=15,
        message="the worker to record the attempt as lost",
    )
    after = async_tasks.async_sleep.enqueue(0.01)
    wait_for(lambda: job_state(after) == "succeeded", timeout=15, message="the next job to succeed")
