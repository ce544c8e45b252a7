"""Console actions against a real ``runworker`` subprocess: a requeued job runs again
and succeeds; cancelling a running job is cooperative and ends it at the worker's next
heartbeat."""

from __future__ import annotations

import pytest
from django.test import Client

from taskengine.models import ExecutionLog, Job, OperatorAction
from tests import tasks
from tests.conftest import wait_for

from .conftest import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.acceptance]
WORKER_ARGS = ("--lease-seconds", "1.5", "--backoff-base", "0.05", "--max-backoff", "0.2", "--no-leader")


def test_requeued_failed_job_runs_once_more_and_succeeds(users, worker_process):
    job = make_job("failed", task_path="tests.tasks.add", args=[2, 3], attempts=3, max_attempts=3)
    for attempt in (1, 2, 3):
        ExecutionLog.objects.create(
            job=job,
            attempt=attempt,
            worker_id="old",
            started_at=job.enqueued_at,
            finished_at=job.finished_at,
            outcome="failed",
        )
    client = Client()
    client.force_login(users["alice"])
    assert client.post(f"/taskengine/api/v1/jobs/{job.pk}/requeue").status_code == 200
    worker = worker_process(*WORKER_ARGS)
    wait_for(
        lambda: Job.objects.get(pk=job.pk).state == "succeeded",
        timeout=60,
        message=f"requeued job to succeed\n{worker.log()}",
    )
    done = Job.objects.get(pk=job.pk)
    assert (done.return_value, done.attempts, done.max_attempts) == (5, 4, 4)
    assert ExecutionLog.objects.get(job=job, attempt=4).outcome == "succeeded"


def test_cancel_of_running_job_ends_it_at_the_next_heartbeat(users, worker_process):
    result = tasks.cooperative_sleep.enqueue(60)
    worker = worker_process(*WORKER_ARGS)
    wait_for(
        lambda: Job.objects.filter(pk=result.id, state="running").exists(),
        timeout=60,
        message=f"job to start\n{worker.log()}",
    )
    client = Client()
    client.force_login(users["root"])
    response = client.post(f"/taskengine/api/v1/jobs/{result.id}/cancel", {"reason": "stop it"})
    assert response.status_code == 200 and "next heartbeat" in response.json()["message"]
    assert response.json()["job"]["state"] == "running"
    wait_for(
        lambda: Job.objects.get(pk=result.id).state == "cancelled",
        timeout=20,
        message=f"job to be cancelled\n{worker.log()}",
    )
    assert ExecutionLog.objects.get(job_id=result.id).outcome == "cancelled"
    row = OperatorAction.objects.get(target_id=str(result.id))
    assert (row.action, row.reason, row.state_after["cancel_requested"]) == ("cancel", "stop it", True)
