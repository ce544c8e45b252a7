"""The worker loop, run in-process (burst mode) against the test database."""

from __future__ import annotations

import pytest
from django.test.utils import override_settings

from taskengine.compat import TaskResultStatus, task_finished, task_started
from taskengine.models import ExecutionLog, Job
from taskengine.runtime.worker import Worker
from tests import tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FAST_RETRIES = {"RETRY_BACKOFF_SECONDS": 0.05, "RETRY_JITTER": 0.0}


def drain(**options) -> Worker:
    worker = Worker(
        queues=["default"], burst=True, backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2, **options
    )
    worker.run()
    return worker


def drain_until_finished(result, timeout=20):
    def finished():
        drain()
        result.refresh()
        return result.is_finished

    wait_for(finished, timeout=timeout, message=f"job {result.id} to finish")


def test_sync_job_succeeds_with_its_return_value_and_worker_id():
    result = tasks.add.enqueue(20, 22)
    worker = drain(worker_id="w-test")
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    assert result.worker_ids == ["w-test"] and worker.processed == 1
    assert result.started_at <= result.finished_at


def test_async_job_runs_on_the_event_loop():
    result = tasks.async_add.enqueue(1, 2)
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3


def test_failures_retry_with_backoff_until_success():
    with override_settings(TASKENGINE=FAST_RETRIES):
        result = tasks.fail_until.enqueue(3)
        drain_until_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"] * 2
    assert "failing attempt 1" in result.errors[0].traceback
    outcomes = list(ExecutionLog.objects.filter(job_id=result.id).values_list("outcome", flat=True))
    assert outcomes == ["retry", "retry", "succeeded"]


def test_attempts_exhausted_means_failed_with_every_traceback_kept():
    with override_settings(TASKENGINE=FAST_RETRIES):
        result = tasks.fail_until.using(max_attempts=2).enqueue(5)
        drain_until_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 2 and len(result.worker_ids) == 2
    assert Job.objects.get(pk=result.id).state == "failed"


def test_a_raising_handler_fails_its_attempt_and_the_worker_carries_on():
    bad = tasks.boom.enqueue()
    good = tasks.add.enqueue(1, 1)
    drain()
    bad.refresh()
    good.refresh()
    assert bad.status == TaskResultStatus.FAILED and good.status == TaskResultStatus.SUCCESSFUL
    [error] = bad.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert "boom" in error.traceback and "Traceback" in error.traceback


def test_a_task_path_that_no_longer_imports_fails_with_the_error_recorded():
    result = tasks.add.using(max_attempts=1).enqueue(1, 1)
    Job.objects.filter(pk=result.id).update(task_path="tests.tasks.removed_long_ago")
    good = tasks.add.enqueue(2, 2)
    drain()
    job = Job.objects.get(pk=result.id)
    assert job.state == "failed"
    log = ExecutionLog.objects.get(job_id=result.id)
    assert log.error_class == "taskengine.resolution.TaskNotFound"
    assert "tests.tasks.removed_long_ago" in log.error_message
    good.refresh()
    assert good.status == TaskResultStatus.SUCCESSFUL


def test_a_sync_handler_past_its_timeout_is_interrupted_and_fails():
    result = tasks.busy_loop_forever.enqueue()
    drain()
    log = ExecutionLog.objects.get(job_id=result.id)
    assert (log.outcome, log.error_class) == ("timed_out", "taskengine.runtime.execution.JobTimedOut")
    assert log.error_message.startswith("timed out after "), log.error_message  # not the bare interrupt's ""
    assert Job.objects.get(pk=result.id).state == "failed"


def test_an_async_handler_past_its_timeout_is_cancelled_and_fails():
    result = tasks.async_too_slow.enqueue()
    drain()
    log = ExecutionLog.objects.get(job_id=result.id)
    assert log.outcome == "timed_out"
    assert Job.objects.get(pk=result.id).state == "failed"


def test_a_return_value_that_is_not_json_fails_the_attempt():
    result = tasks.returns_unserialisable.using(max_attempts=1).enqueue()
    drain()
    log = ExecutionLog.objects.get(job_id=result.id)
    assert log.error_class == "builtins.TypeError" and "JSON-serialisable" in log.error_message


def test_an_error_message_with_a_nul_character_is_recorded_and_the_job_fails():
    # PostgreSQL text cannot hold NUL: the outcome must still be written, not lost.
    failing, other = tasks.fails_with_nul.enqueue(), tasks.add.enqueue(1, 1)
    drain()
    failing.refresh()
    other.refresh()
    assert failing.status == TaskResultStatus.FAILED and other.return_value == 2
    log = ExecutionLog.objects.get(job_id=failing.id)
    assert log.error_message == "bad byte \\x00 in the message"
    assert "\\x00" in log.traceback and "\x00" not in log.traceback


def test_a_return_value_with_a_nul_character_fails_the_attempt_clearly():
    result = tasks.returns_nul.enqueue()
    drain_until_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert "NUL" in result.errors[-1].traceback


def test_task_started_and_task_finished_fire_with_truthful_results():
    started, finished = [], []

    def on_started(sender, task_result, **kwargs):
        started.append((task_result.id, task_result.status))

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status, task_result.return_value))

    task_started.connect(on_started, weak=False, dispatch_uid="t-started")
    task_finished.connect(on_finished, weak=False, dispatch_uid="t-finished")
    try:
        result = tasks.add.enqueue(2, 2)
        drain()
    finally:
        task_started.disconnect(dispatch_uid="t-started")
        task_finished.disconnect(dispatch_uid="t-finished")
    assert started == [(result.id, TaskResultStatus.RUNNING)]
    assert finished == [(result.id, TaskResultStatus.SUCCESSFUL, 4)]


def test_cancel_requested_while_running_ends_the_job_cancelled_at_the_next_heartbeat():
    import threading

    result = tasks.cooperative_sleep.enqueue(30)
    worker = Worker(queues=["default"], backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: Job.objects.filter(pk=result.id, state="running").exists(), message="job to start")
        from django.db.models.functions import Now

        Job.objects.filter(pk=result.id).update(cancel_requested_at=Now())
        wait_for(
            lambda: Job.objects.filter(pk=result.id, state="cancelled").exists(),
            timeout=10,
            message="job to be cancelled",
        )
    finally:
        worker.request_stop()
        thread.join(30)
    assert ExecutionLog.objects.get(job_id=result.id).outcome == "cancelled"
