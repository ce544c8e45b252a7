"""Async handlers that do not stop when interrupted (they swallow the CancelledError, or
sit in a sync call inside the coroutine): two executions of one job never overlap as far
as the engine can see. The outcome is recorded only once the coroutine has finished; one
that has not finished a grace period after its interrupt is stuck, exactly like a stuck
sync thread. Real Worker objects run in a thread against the test database."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections
from django.db.models.functions import Now

from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job, WorkerProcess
from taskengine.runtime.supervision import HARD_TIMEOUT_GRACE, STUCK_THREADS_EXIT_CODE
from taskengine.testing import drain
from tests import tasks
from tests.async_cancellation_tasks import (
    blocks_the_event_loop_on_first_attempt,
    executions,
    logged,
    raises_when_cancelled,
    swallows_its_cancellation_on_first_attempt,
)
from tests.conftest import wait_for
from tests.integration.test_worker_robustness import attempt_outcomes, start_worker, state_of

pytestmark = pytest.mark.django_db(transaction=True)

# Longer than the grace an interrupted handler gets, so the handler counts as stuck.
LINGER = HARD_TIMEOUT_GRACE + 1.5


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, job_id) -> list[str]:
        return [
            r.event for r in list(self.records) if getattr(r, "job_id", None) == int(job_id) and hasattr(r, "event")
        ]


@pytest.fixture
def worker_log() -> Iterator[Records]:
    """What the worker logs (the taskengine loggers do not propagate to the root)."""
    records = Records()
    logger = logging.getLogger("taskengine.worker")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


@pytest.fixture(autouse=True)
def close_the_context_reads_connection() -> Iterator[None]:
    """A retry's context is read on asgiref's one thread for thread-sensitive calls,
    which outlives an in-process worker: its connection is closed after each test, or
    the test database could not be dropped at the end of the run."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


def request_cancel(result) -> None:
    Job.objects.filter(pk=result.id).update(cancel_requested_at=Now())


def take_the_lease_away(result) -> None:
    Job.objects.filter(pk=result.id).update(lease_expires_at=Now() - timedelta(seconds=1))
    assert [j.id for j in recovery.run_once("default")] == [int(result.id)]


def assert_held_while_attempt_1_runs(result, marker_dir, other, *, seconds: float = 20) -> None:
    """Until attempt 1's coroutine has ended, its job stays running under a live lease
    (heartbeats go on: the lease is 1 s), nothing is recorded for the attempt, and the
    worker's one slot stays taken (``other`` is not started)."""
    deadline = time.monotonic() + seconds
    while True:
        job = Job.objects.get(pk=result.id)
        leased = Job.objects.filter(pk=result.id, lease_expires_at__gt=Now()).exists()
        outcomes, other_state = attempt_outcomes(result.id), state_of(other.id)
        if logged(marker_dir, "end", 1) is not None:
            return  # the coroutine has ended: what was read may already be after it
        assert (job.state, job.attempts, leased) == ("running", 1, True)
        assert outcomes == [(1, None)] and other_state == "queued"
        assert time.monotonic() < deadline, "attempt 1 never ended"
        time.sleep(0.1)


def assert_retry_started_after_attempt_1_ended(marker_dir) -> None:
    end_1, start_2 = logged(marker_dir, "end", 1), logged(marker_dir, "start", 2)
    assert end_1 is not None and start_2 is not None, executions(marker_dir)
    assert start_2 > end_1, "the retry started while attempt 1's coroutine was still running"


# --- an operator's cancel -----------------------------------------------------------------


def test_an_async_handler_swallowing_its_cancel_keeps_its_lease_and_slot_and_is_recorded_cancelled_when_it_returns(
    tmp_path, worker_log
):
    result = swallows_its_cancellation_on_first_attempt.enqueue(str(tmp_path), LINGER)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        other = tasks.add.enqueue(1, 1)
        request_cancel(result)
        wait_for(lambda: logged(tmp_path, "cancelled", 1), message="the handler to be cancelled")
        assert_held_while_attempt_1_runs(result, tmp_path, other)
        assert "interrupt_ignored" in worker_log.events(result.id), "the coroutine never counted as stuck"
        wait_for(lambda: state_of(result.id) == "cancelled", timeout=20, message="the cancel to be recorded")
        wait_for(lambda: state_of(other.id) == "succeeded", timeout=20, message="the other job to run")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    log = ExecutionLog.objects.get(job_id=result.id)
    assert (log.attempt, log.outcome, log.error_class) == (1, "cancelled", "taskengine.runtime.execution.JobCancelled")
    assert [(kind, attempt) for kind, attempt, _ in executions(tmp_path)] == [
        ("start", 1),
        ("cancelled", 1),
        ("end", 1),
    ]


def test_an_async_handler_blocked_in_a_sync_call_when_cancelled_is_recorded_only_once_the_call_returns(
    tmp_path, worker_log
):
    result = blocks_the_event_loop_on_first_attempt.enqueue(str(tmp_path), LINGER)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        other = tasks.add.enqueue(1, 1)
        request_cancel(result)
        assert_held_while_attempt_1_runs(result, tmp_path, other)
        assert "interrupt_ignored" in worker_log.events(result.id), "the coroutine never counted as stuck"
        wait_for(lambda: state_of(result.id) == "cancelled", timeout=20, message="the cancel to be recorded")
        wait_for(lambda: state_of(other.id) == "succeeded", timeout=20, message="the other job to run")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert attempt_outcomes(result.id) == [(1, "cancelled")]


def test_an_async_handler_raising_another_error_when_cancelled_is_recorded_cancelled_keeping_that_error(tmp_path):
    result = raises_when_cancelled.enqueue(str(tmp_path))
    running = start_worker(concurrency=1, lease_seconds=1.0)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="the handler to start")
        request_cancel(result)
        wait_for(lambda: state_of(result.id) == "cancelled", timeout=20, message="the cancel to be recorded")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    log = ExecutionLog.objects.get(job_id=result.id)
    assert (log.outcome, log.error_class) == ("cancelled", "taskengine.runtime.execution.JobCancelled")
    assert "RuntimeError: cleanup failed after the cancel" in log.traceback


# --- a timeout ----------------------------------------------------------------------------


def test_an_async_handler_swallowing_its_timeout_keeps_its_lease_and_slot_and_is_retried_only_after_it_returns(
    tmp_path, worker_log
):
    result = swallows_its_cancellation_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), LINGER)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        other = tasks.add.enqueue(1, 1)
        wait_for(lambda: logged(tmp_path, "cancelled", 1), message="the handler to time out")
        assert_held_while_attempt_1_runs(result, tmp_path, other)
        assert "timeout_ignored" in worker_log.events(result.id), "the coroutine never counted as stuck"
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="the retry to succeed")
        wait_for(lambda: state_of(other.id) == "succeeded", timeout=20, message="the other job to run")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert attempt_outcomes(result.id) == [(1, "timed_out"), (2, "succeeded")]
    assert (
        ExecutionLog.objects.get(job_id=result.id, attempt=1).error_class == "taskengine.runtime.execution.JobTimedOut"
    )
    assert_retry_started_after_attempt_1_ended(tmp_path)


def test_an_async_handler_returning_a_value_after_swallowing_its_timeout_is_recorded_as_timed_out(tmp_path):
    result = swallows_its_cancellation_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), 0)
    running = start_worker(concurrency=1, lease_seconds=1.0)
    try:
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="the retry to succeed")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert attempt_outcomes(result.id) == [(1, "timed_out"), (2, "succeeded")]
    log = ExecutionLog.objects.get(job_id=result.id, attempt=1)
    assert (log.error_class, log.error_message) == ("taskengine.runtime.execution.JobTimedOut", "timed out after 0.3s")
    assert_retry_started_after_attempt_1_ended(tmp_path)


def test_an_async_handler_blocked_in_a_sync_call_past_its_timeout_is_retried_only_after_the_call_returns(
    tmp_path, worker_log
):
    result = blocks_the_event_loop_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), LINGER)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        other = tasks.add.enqueue(1, 1)
        assert_held_while_attempt_1_runs(result, tmp_path, other)
        assert "timeout_ignored" in worker_log.events(result.id), "the coroutine never counted as stuck"
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="the retry to succeed")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert attempt_outcomes(result.id) == [(1, "timed_out"), (2, "succeeded")]
    assert_retry_started_after_attempt_1_ended(tmp_path)


# --- a lost lease -------------------------------------------------------------------------


def test_an_async_handler_swallowing_a_lost_lease_holds_its_slot_so_the_retry_starts_only_after_it_returns(
    tmp_path, worker_log
):
    result = swallows_its_cancellation_on_first_attempt.enqueue(str(tmp_path), LINGER)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        take_the_lease_away(result)  # attempt 2 is due at once; this worker has one slot
        wait_for(lambda: logged(tmp_path, "cancelled", 1), message="the handler to be interrupted")
        deadline = time.monotonic() + 20
        while logged(tmp_path, "end", 1) is None:
            assert logged(tmp_path, "start", 2) is None, "the retry started while attempt 1 still ran"
            assert time.monotonic() < deadline, "attempt 1 never ended"
            time.sleep(0.1)
        assert "interrupt_ignored" in worker_log.events(result.id), "the coroutine never counted as stuck"
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="the retry to succeed")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert attempt_outcomes(result.id) == [(1, "lost"), (2, "succeeded")]
    assert_retry_started_after_attempt_1_ended(tmp_path)


# --- giving up on stuck coroutines ----------------------------------------------------------


def assert_left_leased_unrecorded(result, worker_id: str) -> None:
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.attempts, job.locked_by) == ("running", 1, worker_id)
    assert Job.objects.filter(pk=result.id, lease_expires_at__gt=Now()).exists(), "the job was released"
    assert attempt_outcomes(result.id) == [(1, None)]
    # Its row is not marked stopped (which would let recovery take the job at once).
    assert WorkerProcess.objects.get(worker_id=worker_id).state != "stopped"


def test_a_worker_past_its_stuck_limit_with_a_stuck_coroutine_drains_and_exits_non_zero_leaving_its_job_leased(
    tmp_path,
):
    result = swallows_its_cancellation_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), 30)
    running = start_worker(concurrency=2, lease_seconds=30.0, max_stuck_threads=0, shutdown_grace=20)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        wait_for(running.exited, timeout=20, message="the worker to give up on the stuck coroutine")
    finally:
        running.stop()
    assert running.raised is None and running.returned == STUCK_THREADS_EXIT_CODE
    assert logged(tmp_path, "end", 1) is None
    assert_left_leased_unrecorded(result, running.worker.worker_id)


def test_a_worker_stopped_with_a_tolerated_stuck_coroutine_exits_non_zero_leaving_its_job_leased(tmp_path, worker_log):
    result = swallows_its_cancellation_on_first_attempt.enqueue(str(tmp_path), 30)
    running = start_worker(concurrency=1, lease_seconds=30.0, max_stuck_threads=1, shutdown_grace=1)
    try:
        wait_for(lambda: logged(tmp_path, "start", 1), message="attempt 1 to start")
        request_cancel(result)
        wait_for(
            lambda: "interrupt_ignored" in worker_log.events(result.id),
            timeout=20,
            message="the coroutine to count as stuck",
        )
        assert not running.exited()
        running.worker.request_stop()
        wait_for(running.exited, timeout=20, message="the worker to stop")
    finally:
        running.stop()
    assert running.raised is None and running.returned == STUCK_THREADS_EXIT_CODE
    assert logged(tmp_path, "end", 1) is None
    assert_left_leased_unrecorded(result, running.worker.worker_id)


# --- drain() ------------------------------------------------------------------------------


def test_drain_times_out_an_async_handler_with_the_workers_interrupt():
    result = tasks.async_too_slow.enqueue()  # timeout 0.3 s, sleeps 10 s
    started = time.monotonic()
    [attempt] = drain().attempts
    assert time.monotonic() - started < 5
    assert (attempt.outcome, attempt.state, attempt.error_class) == (
        "timed_out",
        "failed",
        "taskengine.runtime.execution.JobTimedOut",
    )
    assert attempt_outcomes(result.id) == [(1, "timed_out")]
