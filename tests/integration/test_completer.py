"""The completer (taskengine/runtime/completer.py): finished attempts written on a thread and
connection of their own, fenced, exactly once, through outages and at stop."""

from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection

from taskengine import store
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.models import ExecutionLog, Job
from taskengine.runtime import events
from taskengine.runtime.completer import Completer, Outcomes
from taskengine.runtime.execution import RunningJob
from taskengine.states import AttemptOutcome
from tests import tasks
from tests.conftest import wait_for
from tests.integration.test_claim_and_fencing import claim, expire_lease
from tests.integration.test_worker_robustness import attempt_outcomes, start_worker, state_of

pytestmark = pytest.mark.django_db(transaction=True)


class RecordingEvents(events.JobEvents):
    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.reported: list[tuple[int, str | None]] = []
        self.lock = threading.Lock()

    def finished(self, running: RunningJob, outcome: Outcome, state: str | None) -> None:
        with self.lock:
            self.reported.append((outcome.job_id, state))
        super().finished(running, outcome, state)


def completer(worker_id: str = "w1", wakes: list[bool] | None = None) -> Completer:
    done = Completer(
        database="default",
        outcomes=Outcomes(worker_id, RecordingEvents(worker_id)),
        batch=lambda: 4,
        max_backoff=0.05,
        wake=(wakes.append if wakes is not None else lambda requeued: None),
    )
    done.start()
    return done


def succeeded(job: ClaimedJob) -> Outcome:
    return Outcome(job.id, job.attempt, "succeeded", AttemptOutcome.SUCCEEDED, return_value="1")


def reported(done: Completer) -> list[tuple[int, str | None]]:
    recording = done.outcomes.events
    assert isinstance(recording, RecordingEvents)
    with recording.lock:
        return list(recording.reported)


# On PostgreSQL the completer is the default; COMPLETER = False is the way back (the loop
# writes, finish_and_claim): both paths run the worker tests below.
BOTH_PATHS = pytest.mark.parametrize("use_completer", [True, False], ids=["completer", "loop_writes"])


@BOTH_PATHS
def test_a_worker_writes_every_outcome_once_with_one_attempt_row_per_job(use_completer):
    results = [tasks.add.enqueue(i, 1) for i in range(80)]
    running = start_worker(burst=True, concurrency=8, completer=use_completer)
    wait_for(running.exited, timeout=60, message="the burst worker to drain and exit")
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in results] == ["succeeded"] * 80
    assert ExecutionLog.objects.count() == 80
    assert sorted(ExecutionLog.objects.values_list("job_id", flat=True)) == sorted(int(r.id) for r in results)
    assert running.worker.processed == 80


@BOTH_PATHS
def test_retries_are_claimed_again_and_every_job_ends_with_one_row_per_attempt(use_completer):
    flaky = [tasks.fail_until.enqueue(2) for _ in range(12)]
    steady = [tasks.add.enqueue(i, 1) for i in range(24)]
    running = start_worker(concurrency=8, completer=use_completer)
    try:
        wait_for(
            lambda: all(state_of(r.id) == "succeeded" for r in flaky + steady),
            timeout=60,
            message="every job, retried ones included, to succeed",
        )
    finally:
        running.stop()
    assert running.raised is None
    for result in flaky:
        assert attempt_outcomes(result.id) == [(1, AttemptOutcome.RETRY), (2, AttemptOutcome.SUCCEEDED)]
    for result in steady:
        assert attempt_outcomes(result.id) == [(1, AttemptOutcome.SUCCEEDED)]


def test_outcomes_handed_over_from_many_threads_are_each_written_and_reported_once():
    for i in range(40):
        tasks.add.enqueue(i, 1)
    jobs = claim(limit=40)
    done = completer()
    threads = [
        threading.Thread(target=lambda part=jobs[n::4]: [done.submit(RunningJob(job=j), succeeded(j)) for j in part])
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.stop()
    assert sorted(reported(done)) == sorted((j.id, "succeeded") for j in jobs)
    assert done.processed == 40 and not done.busy()
    assert Job.objects.filter(state="succeeded").count() == 40
    assert ExecutionLog.objects.filter(outcome=AttemptOutcome.SUCCEEDED).count() == 40


def test_a_finish_whose_lease_lapsed_is_rejected_and_reported_as_a_lost_lease():
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)
    stale, live = claim(limit=2)
    expire_lease(stale.id)
    done = completer()
    done.submit(RunningJob(job=stale), succeeded(stale))
    done.submit(RunningJob(job=live), succeeded(live))
    done.stop()
    assert sorted(reported(done)) == sorted([(stale.id, None), (live.id, "succeeded")])
    assert state_of(stale.id) == "running" and state_of(live.id) == "succeeded"


def test_a_finish_of_a_job_another_worker_took_over_is_rejected():
    tasks.add.enqueue(1, 1)
    [job] = claim(worker="w1")
    Job.objects.filter(pk=job.id).update(locked_by="w2")
    done = completer(worker_id="w1")
    done.submit(RunningJob(job=job), succeeded(job))
    done.stop()
    assert reported(done) == [(job.id, None)]
    assert Job.objects.get(pk=job.id).locked_by == "w2" and state_of(job.id) == "running"


def test_stop_writes_the_outcomes_still_held():
    for i in range(10):
        tasks.add.enqueue(i, 1)
    jobs = claim(limit=10)
    done = completer()
    for job in jobs:
        done.submit(RunningJob(job=job), succeeded(job))
    done.stop()  # at once: whatever the batch's cadence, nothing is left behind
    assert not done.busy()
    assert Job.objects.filter(state="succeeded").count() == 10


def test_an_outage_while_writing_is_retried_and_the_outcomes_then_written(monkeypatch):
    for i in range(6):
        tasks.add.enqueue(i, 1)
    jobs = claim(limit=6)
    real_finish = store.finish_jobs
    failures = []

    def finish_after_an_outage(conn, *, worker_id, outcomes):
        if len(failures) < 3:
            failures.append(len(outcomes))
            raise OperationalError("server closed the connection unexpectedly")
        return real_finish(conn, worker_id=worker_id, outcomes=outcomes)

    monkeypatch.setattr(store, "finish_jobs", finish_after_an_outage)
    done = completer()
    for job in jobs:
        done.submit(RunningJob(job=job), succeeded(job))
    wait_for(lambda: done.processed == 6, timeout=20, message="the outcomes written after the outage")
    done.stop()
    assert len(failures) == 3
    assert sorted(reported(done)) == sorted((j.id, "succeeded") for j in jobs)
    assert Job.objects.filter(state="succeeded").count() == 6


def test_a_written_retry_wakes_the_loop_to_claim_it():
    tasks.add.enqueue(1, 1)
    [job] = claim()
    wakes: list[bool] = []
    done = completer(wakes=wakes)
    done.submit(RunningJob(job=job), Outcome(job.id, job.attempt, "queued", AttemptOutcome.RETRY, retry_delay=0))
    done.stop()
    assert True in wakes and done.take_requeued() and not done.take_requeued()
    assert state_of(job.id) == "queued"


def test_the_completer_closes_its_own_connection_and_leaves_the_callers():
    tasks.add.enqueue(1, 1)
    [job] = claim()
    done = completer()
    done.submit(RunningJob(job=job), succeeded(job))
    done.stop()
    assert state_of(job.id) == "succeeded"
    with connection.cursor() as cursor:  # this thread's connection is still usable
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
