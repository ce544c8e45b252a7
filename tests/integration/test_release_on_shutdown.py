"""Graceful shutdown releases the jobs still running when the grace period ends — but a
job whose cancellation was requested is not handed back to the queue: it ends
cancelled, like a cancel seen by a heartbeat, a finish or recovery."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from prometheus_client import REGISTRY

from taskengine import store
from taskengine.models import ExecutionLog, Job
from taskengine.ops import operations
from taskengine.runtime.worker import Worker
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """caplog that also sees the ``taskengine`` loggers (they do not propagate)."""
    engine = logging.getLogger("taskengine")
    engine.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="taskengine")
    try:
        yield caplog
    finally:
        engine.removeHandler(caplog.handler)


def operator():
    return get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-ops-123")


def counter(name: str, task: str) -> float:
    return REGISTRY.get_sample_value(name, {"queue": "default", "task": task}) or 0.0


def test_a_cancel_requested_just_before_sigterm_ends_the_job_cancelled_and_it_never_runs_again(
    worker_process, tmp_path
):
    """The operator's cancel lands just before SIGTERM, with a short grace. The handler
    is blocked in time.sleep, deaf to the interrupt even if a heartbeat sees the request
    first, so it is still running when the grace ends: the release must end the job
    cancelled, not queue it for another run."""
    actor = operator()
    result = tasks.sleep_then_record.enqueue(str(tmp_path), "long", 30)
    worker = worker_process("--no-leader", "--shutdown-grace", "0.5", name="cancelled-at-shutdown")
    wait_for(lambda: (tmp_path / "long.started").exists(), message="job to start")
    operations.perform("cancel", result.id, actor=actor, reason="not needed any more")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log()

    job = Job.objects.get(pk=result.id)
    assert (job.state, job.locked_by, job.lease_expires_at) == ("cancelled", None, None), worker.log()
    assert job.finished_at is not None
    attempts = list(ExecutionLog.objects.filter(job_id=result.id).values_list("attempt", "outcome"))
    assert attempts == [(1, "cancelled")]
    assert "attempt cancelled -> cancelled" in worker.log()
    assert "released back to the queue" not in worker.log()

    # Nothing is left to run: a fresh worker in burst mode finds no work and exits.
    (tmp_path / "long.started").unlink()
    after = worker_process("--burst", "--no-leader", "--backoff-base", "0.05", name="after")
    assert after.wait(60) == 0, after.log()
    assert not (tmp_path / "long.started").exists()
    assert ExecutionLog.objects.filter(job_id=result.id).count() == 1


def test_a_job_cancelled_at_release_is_counted_and_logged_as_cancelled(engine_log):
    """In-process, to read the worker's counters: cancelled, not retried or left
    running, and the log line is the worker's usual cancel line. The next heartbeat is
    a minute away, so only the release can see the request."""
    task = "tests.tasks.cooperative_sleep"
    actor = operator()
    result = tasks.cooperative_sleep.enqueue(5)
    cancelled = counter("taskengine_jobs_cancelled_total", task)
    retried = counter("taskengine_jobs_retried_total", task)
    worker = Worker(
        queues=["default"],
        backoff_base=0.01,
        max_backoff=0.05,
        heartbeat_seconds=60,
        lease_seconds=300,
        shutdown_grace=0.2,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: Job.objects.filter(pk=result.id, state="running").exists(), message="job to start")
        operations.perform("cancel", result.id, actor=actor, reason="stop")
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()
    assert Job.objects.get(pk=result.id).state == "cancelled"
    assert counter("taskengine_jobs_cancelled_total", task) == cancelled + 1
    assert counter("taskengine_jobs_retried_total", task) == retried
    [line] = [
        r
        for r in engine_log.records
        if getattr(r, "job_id", None) == int(result.id) and getattr(r, "event", None) in ("cancelled", "released")
    ]
    assert line.event == "cancelled" and line.error_class == store.RELEASED_CANCEL_ERROR_CLASS
