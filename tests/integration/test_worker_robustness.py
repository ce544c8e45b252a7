"""A worker survives what one job does: unstorable outcomes, handlers that ignore their
interrupts, retries of its own abandoned attempts, and a stop request arriving mid-claim.
Real Worker objects run in a thread against the test database."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from taskengine.jobs import Outcome
from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job
from taskengine.runtime.worker import Worker
from tests import robustness_tasks, tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class WorkerThread:
    """A Worker running on a thread; remembers what ``run()`` returned or raised."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.returned: int | None = None
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.returned = self.worker.run()
        except BaseException as exc:
            self.raised = exc

    def stop(self, timeout: float = 30) -> None:
        self.worker.request_stop()
        self.thread.join(timeout)

    def exited(self) -> bool:
        return not self.thread.is_alive()


def start_worker(worker_class: type[Worker] = Worker, **options) -> WorkerThread:
    options = {"queues": ["default"], "backoff_base": 0.01, "max_backoff": 0.05, "heartbeat_seconds": 0.2, **options}
    return WorkerThread(worker_class(**options))


def state_of(job_id) -> str:
    return Job.objects.values_list("state", flat=True).get(pk=job_id)


def attempt_outcomes(job_id) -> list[tuple[int, str | None]]:
    return list(ExecutionLog.objects.filter(job_id=job_id).order_by("attempt").values_list("attempt", "outcome"))


# --- 1. an outcome the database cannot store -------------------------------------------


def test_a_return_value_with_a_lone_surrogate_fails_its_attempt_and_the_worker_carries_on():
    bad = robustness_tasks.returns_undecodable_file_name.enqueue()
    good = [tasks.add.enqueue(i, 1) for i in range(6)]
    running = start_worker(burst=True, concurrency=4)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in good] == ["succeeded"] * 6
    assert state_of(bad.id) == "failed"
    log = ExecutionLog.objects.get(job_id=bad.id)
    assert log.error_class == "builtins.TypeError"
    assert "surrogate" in log.error_message and "JSON-serialisable" in log.error_message


def test_an_error_message_with_a_lone_surrogate_is_recorded_escaped_and_the_worker_carries_on():
    bad = robustness_tasks.raises_with_undecodable_file_name.enqueue()
    good = [tasks.add.enqueue(i, 1) for i in range(6)]
    running = start_worker(burst=True, concurrency=4)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in good] == ["succeeded"] * 6
    assert state_of(bad.id) == "failed"
    log = ExecutionLog.objects.get(job_id=bad.id)
    assert log.error_class == "builtins.FileNotFoundError"
    assert log.error_message == "no such file: report-\\udcff.csv"
    assert "report-\\udcff.csv" in log.traceback


UNSTORABLE = {
    # Text the driver cannot encode as UTF-8: both databases refuse it before sending.
    "driver_cannot_encode": {"error_class": "builtins.OSError", "error_message": "bad \udcff name"},
    # JSON text that jsonb rejects (an escaped lone surrogate): PostgreSQL's data error.
    "jsonb_rejects": {"return_value": '"bad \\udcff name"'},
}


class WorkerWritingAnUnstorableOutcome(Worker):
    """Hands the store one outcome that slipped past the engine's own checks, as a
    value the checks do not foresee would."""

    poisoned_job_id: int = 0
    kind: str = "driver_cannot_encode"

    def _run_sync(self, running):
        outcome = super()._run_sync(running)
        if running.job.id == self.poisoned_job_id:
            fields = UNSTORABLE[self.kind]
            next_state = "failed" if "error_class" in fields else "succeeded"
            return Outcome(running.job.id, running.job.attempt, next_state, next_state, **fields)
        return outcome


@pytest.mark.parametrize(
    "kind",
    [
        "driver_cannot_encode",
        pytest.param("jsonb_rejects", marks=pytest.mark.postgres),
    ],
)
def test_an_outcome_the_database_rejects_fails_its_attempt_without_holding_back_other_outcomes_or_claims(kind):
    before = [tasks.add.enqueue(i, 1) for i in range(5)]
    poisoned = tasks.add.using(max_attempts=1).enqueue(100, 1)
    after = [tasks.add.enqueue(i, 2) for i in range(20)]

    class Poisoned(WorkerWritingAnUnstorableOutcome):
        poisoned_job_id = int(poisoned.id)

    Poisoned.kind = kind
    running = start_worker(Poisoned, burst=True, concurrency=4)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in before + after] == ["succeeded"] * 25
    assert state_of(poisoned.id) == "failed"
    log = ExecutionLog.objects.get(job_id=poisoned.id)
    assert (log.outcome, log.error_class) == ("failed", "taskengine.runtime.execution.OutcomeNotStorable")
    assert "could not be stored" in log.error_message
    assert Job.objects.get(pk=poisoned.id).return_value is None


def test_a_task_finished_receiver_that_raises_does_not_end_the_worker_loop():
    from taskengine.compat import task_finished

    def broken_receiver(sender, task_result, **kwargs):
        raise RuntimeError("a project's receiver is broken")

    task_finished.connect(broken_receiver, weak=False, dispatch_uid="broken-receiver")
    try:
        results = [tasks.add.enqueue(i, 1) for i in range(4)]
        running = start_worker(burst=True, concurrency=2)
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        task_finished.disconnect(dispatch_uid="broken-receiver")
        running.stop()
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in results] == ["succeeded"] * 4


# --- 2. attempts are tracked, not jobs ----------------------------------------------------


def test_a_retry_claimed_while_its_abandoned_attempt_still_runs_stays_tracked_and_succeeds(tmp_path):
    # Attempt 1 blocks in C; its lease is taken away (recovery), the same worker claims
    # attempt 2, and attempt 1's thread returns while attempt 2 runs. Attempt 2 must keep
    # its heartbeat (it runs longer than its lease) and finish.
    result = robustness_tasks.blocks_in_c_on_first_attempt.enqueue(str(tmp_path), 2.5, 4.0)
    running = start_worker(concurrency=2, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: robustness_tasks.executions(tmp_path), message="attempt 1 to start")
        Job.objects.filter(pk=result.id).update(lease_expires_at=Now() - timedelta(seconds=1))
        assert [j.id for j in recovery.run_once("default")] == [int(result.id)]
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="attempt 2 to succeed")
    finally:
        running.stop()
    assert running.raised is None
    assert attempt_outcomes(result.id) == [(1, "lost"), (2, "succeeded")]
    assert ("end", 1) in [(kind, attempt) for kind, attempt, _ in robustness_tasks.executions(tmp_path)]


# --- 3. a handler that ignores its timeout -----------------------------------------------


def test_a_handler_ignoring_its_timeout_keeps_its_lease_and_slot_and_is_retried_only_after_its_thread_ends(tmp_path):
    result = robustness_tasks.blocks_in_c_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), 4.0, 0.0)
    running = start_worker(concurrency=1, lease_seconds=1.0, max_stuck_threads=1)
    try:
        wait_for(lambda: robustness_tasks.executions(tmp_path), message="attempt 1 to start")
        other = tasks.add.enqueue(1, 1)
        # Past its timeout and the interrupt's grace the handler is still in time.sleep:
        # its job stays leased to this worker (heartbeats go on), and its slot stays taken.
        deadline = time.monotonic() + 20
        while True:
            job = Job.objects.get(pk=result.id)
            leased = Job.objects.filter(pk=result.id, lease_expires_at__gt=Now()).exists()
            outcomes, other_state = attempt_outcomes(result.id), state_of(other.id)
            if ("end", 1) in [(k, a) for k, a, _ in robustness_tasks.executions(tmp_path)]:
                break  # the thread has ended: what was read may already be after it
            assert (job.state, job.attempts, leased) == ("running", 1, True)
            assert outcomes == [(1, None)] and other_state == "queued"
            assert time.monotonic() < deadline, "attempt 1 never ended"
            time.sleep(0.1)
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=20, message="the retry to succeed")
        wait_for(lambda: state_of(other.id) == "succeeded", timeout=20, message="the other job to run")
    finally:
        running.stop()
    assert running.raised is None
    assert attempt_outcomes(result.id) == [(1, "timed_out"), (2, "succeeded")]
    log = ExecutionLog.objects.get(job_id=result.id, attempt=1)
    assert log.error_class == "taskengine.runtime.execution.JobTimedOut"
    runs = robustness_tasks.executions(tmp_path)
    end_1 = next(at for kind, attempt, at in runs if (kind, attempt) == ("end", 1))
    start_2 = next(at for kind, attempt, at in runs if (kind, attempt) == ("start", 2))
    assert start_2 > end_1, "the retry started while the timed-out attempt was still running"


# --- 13. a stop request arriving while a claim returns -----------------------------------


class WorkerStoppedDuringItsClaim(Worker):
    """request_stop() lands right after a claim returned jobs, as a SIGTERM can."""

    def _claim_now(self, free):
        jobs = super()._claim_now(free)
        if jobs:
            self.request_stop()
        return jobs


def test_jobs_claimed_as_the_worker_is_told_to_stop_are_run_or_released_never_left_running():
    results = [tasks.add.enqueue(i, 1) for i in range(6)]
    running = start_worker(WorkerStoppedDuringItsClaim, concurrency=4)
    try:
        wait_for(running.exited, timeout=20, message="the worker to stop")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    claimed = [r for r in results if Job.objects.get(pk=r.id).attempts > 0]
    assert claimed, "the worker claimed nothing"
    for r in claimed:
        job = Job.objects.get(pk=r.id)
        outcomes = tuple(o for _, o in attempt_outcomes(r.id))
        assert (job.state, outcomes) in {("succeeded", ("succeeded",)), ("queued", ("released",))}, (
            job.state,
            outcomes,
        )
        assert job.locked_by is None
    assert not Job.objects.filter(state="running").exists()


def test_a_burst_worker_does_not_exit_while_jobs_are_due_after_a_refused_outcome_batch():
    """The claim that rides in a refused batch's transaction rolls back with it: that
    round claimed nothing because it could not, not because nothing was due."""
    poisoned = tasks.add.using(max_attempts=1).enqueue(100, 1)
    after = [tasks.add.enqueue(i, 2) for i in range(5)]

    class Poisoned(WorkerWritingAnUnstorableOutcome):
        poisoned_job_id = int(poisoned.id)

    running = start_worker(Poisoned, burst=True, concurrency=1)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert state_of(poisoned.id) == "failed"
    assert [state_of(r.id) for r in after] == ["succeeded"] * 5


@pytest.mark.postgres
def test_the_workers_loop_and_completer_plan_with_the_worker_settings_and_its_handlers_do_not():
    """The planner settings of a worker's connections (store.worker_connection,
    db/postgresql/jobs.sql worker_planner_settings) reach the loop's and the completer's
    sessions, each on its own thread; a handler's own connection keeps the server's
    settings. Seen from inside those sessions: a task_finished receiver runs on the
    completer's thread (after its finish), a task_started receiver for an async job on the
    loop's (after its claim), and the handler reports its own connection's settings."""
    from django.db import connection
    from django.tasks.signals import task_finished, task_started

    seen: dict[str, tuple[str, str]] = {}

    def current(signal: str):
        def receiver(sender, task_result, **kwargs):
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('enable_seqscan'), current_setting('jit')")
                seen[f"{signal} {task_result.task.name} on {threading.current_thread().name}"] = cursor.fetchone()

        return receiver

    started, finished = current("started"), current("finished")
    task_started.connect(started)
    task_finished.connect(finished)
    try:
        sync = tasks.planner_settings.enqueue()
        asynchronous = tasks.async_add.enqueue(1, 2)
        worker = Worker(queues=["default"], burst=True, backoff_base=0.01, max_backoff=0.05)
        thread = threading.Thread(target=worker.run, name="the-loop")
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        task_started.disconnect(started)
        task_finished.disconnect(finished)
    assert Job.objects.get(pk=sync.id).return_value == ["on", "on", "on"]  # the handler's connection
    assert Job.objects.get(pk=asynchronous.id).state == "succeeded"
    assert seen["started async_add on the-loop"] == ("off", "off"), seen
    assert seen["finished async_add on taskengine-completer"] == ("off", "off"), seen
    assert seen["finished planner_settings on taskengine-completer"] == ("off", "off"), seen
