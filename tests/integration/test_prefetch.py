"""The worker's prefetch: it claims up to its free slots plus a bounded number of jobs
that wait for a slot. A prefetched job is leased (its lease is renewed by heartbeats like
a running job's), its attempt begins only when a handler takes it (its timeout clock
too), a stop request hands it back to the queue unstarted, and a lost lease or a
cancellation withdraws it before it starts. Real Worker objects on a thread against the
test database; every assertion is about what happened, none about how fast."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

from taskengine import store
from taskengine.compat import task
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.models import ExecutionLog, Job
from taskengine.runtime.worker import PREFETCH_HORIZON, Worker
from taskengine.states import AttemptOutcome, JobState
from tests import tasks
from tests.conftest import wait_for
from tests.integration.test_worker_robustness import attempt_outcomes, start_worker, state_of

pytestmark = pytest.mark.django_db(transaction=True)

GATE = threading.Event()  # the blocker task waits for it
RAN: list[int] = []  # what the counted task was called with, in order
RAN_LOCK = threading.Lock()


@task
def blocker() -> str:
    """Holds its slot until the test opens GATE."""
    if not GATE.wait(30):
        raise RuntimeError("the test never opened the gate")
    return "opened"


@task(timeout=0.5, max_attempts=1)
def counted(n: int) -> int:
    with RAN_LOCK:
        RAN.append(n)
    return n


@pytest.fixture(autouse=True)
def _reset():
    GATE.clear()
    RAN.clear()
    yield
    GATE.set()


class Recording(Worker):
    """A worker with a fixed prefetch bound that records, for every claim, the limit
    asked for and the slots free and the jobs prefetched when it was asked."""

    bound = 3

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.claims: list[tuple[int, int, int, int]] = []  # (limit, free slots, prefetched, bound)
        self.most_held = 0
        self.most_prefetched = 0

    def prefetch_bound(self) -> int:
        return self.bound

    def _record(self, limit: int) -> None:
        with self._slots.lock:
            self.claims.append((limit, self._slots.free, len(self._slots.ready), self.prefetch_bound()))

    def _claim_now(self, free: int) -> list[ClaimedJob]:
        self._record(free)
        return super()._claim_now(free)

    def _finish_then_claim(self, claim: int) -> list[ClaimedJob] | None:
        if claim > 0:
            self._record(claim)
        return super()._finish_then_claim(claim)

    def _start_claimed(self, jobs: list[ClaimedJob]) -> None:
        super()._start_claimed(jobs)
        with self._slots.lock:
            self.most_held = max(self.most_held, len(self._running))
            self.most_prefetched = max(self.most_prefetched, len(self._slots.ready))


def test_a_claim_never_asks_for_more_than_the_free_slots_plus_the_prefetch_bound():
    results = [tasks.add.enqueue(i, 1) for i in range(60)]
    running = start_worker(Recording, burst=True, concurrency=2)
    try:
        wait_for(running.exited, timeout=60, message="the burst worker to drain and exit")
    finally:
        running.stop()
    worker = running.worker
    assert running.raised is None and running.returned == 0
    assert [state_of(r.id) for r in results] == ["succeeded"] * 60
    assert worker.claims, "the worker claimed nothing"
    for limit, free_slots, prefetched, bound in worker.claims:
        # Slots only free up while the claim is being asked for, so the inequality holds
        # for the values the worker saw.
        assert limit <= free_slots + bound - prefetched, worker.claims
    # Held: claimed and not yet collected (running, or prefetched). More than the slots
    # once at least: jobs were prefetched (the handlers' threads may have started them
    # before this worker looked at its buffer).
    assert 2 < worker.most_held <= 2 + Recording.bound
    # One attempt per job, however it was held.
    for r in results:
        assert attempt_outcomes(r.id) == [(1, "succeeded")]


def test_prefetched_jobs_start_when_a_slot_frees_and_their_attempt_begins_then():
    first = blocker.enqueue()
    queued = [counted.enqueue(n) for n in range(3)]
    running = start_worker(Recording, concurrency=1)
    try:
        wait_for(lambda: running.worker.most_prefetched == 3, timeout=20, message="three jobs prefetched")
        assert state_of(first.id) == "running"
        assert [state_of(r.id) for r in queued] == ["running"] * 3
        assert RAN == [], "a prefetched job started while its slot was taken"
        worker = running.worker
        with worker._slots.lock:
            prefetched = list(worker._slots.ready)
        # Not begun: no timeout clock (counted has a 0.5 s timeout) and no thread.
        assert all(r.deadline is None and r.thread_id is None for r in prefetched)
        GATE.set()
        wait_for(lambda: all(state_of(r.id) == "succeeded" for r in queued), message="the prefetched jobs to run")
    finally:
        running.stop()
    assert running.raised is None and running.returned == 0
    assert state_of(first.id) == "succeeded"
    assert RAN == [0, 1, 2], "prefetched jobs ran out of claim order, or more than once"
    for r in [first, *queued]:
        assert attempt_outcomes(r.id) == [(1, "succeeded")]


def test_a_prefetched_job_whose_wait_outlasts_its_timeout_is_not_timed_out():
    """The timeout counts from the handler's start: waiting for a slot is not running."""
    blocker.enqueue()
    later = counted.enqueue(7)
    running = start_worker(Recording, concurrency=1)
    try:
        wait_for(lambda: running.worker.most_prefetched == 1, timeout=20, message="the job prefetched")
        lease_before = Job.objects.get(pk=later.id).lease_expires_at
        # Past counted's 0.5 s timeout, and past a heartbeat (heartbeat_seconds 0.2): the
        # prefetched job's lease is renewed like the running one's.
        wait_for(
            lambda: Job.objects.get(pk=later.id).lease_expires_at > lease_before,
            timeout=10,
            message="the prefetched job's lease to be renewed",
        )
        wait_for(lambda: running.worker._watched and _waited(running.worker, 0.6), message="0.6 s of waiting")
        assert state_of(later.id) == "running" and RAN == []
        GATE.set()
        wait_for(lambda: state_of(later.id) == "succeeded", message="the prefetched job to run")
    finally:
        running.stop()
    assert attempt_outcomes(later.id) == [(1, "succeeded")]
    assert RAN == [7]


def _waited(worker: Worker, seconds: float) -> bool:
    import time

    with worker._slots.lock:
        ready = list(worker._slots.ready)
    return bool(ready) and time.monotonic() - ready[0].monotonic_start >= seconds


def test_sigterm_while_jobs_are_prefetched_releases_them_unstarted_and_loses_none():
    first = blocker.enqueue()
    queued = [counted.enqueue(n) for n in range(3)]
    running = start_worker(Recording, concurrency=1, shutdown_grace=30)
    try:
        wait_for(lambda: running.worker.most_prefetched == 3, timeout=20, message="three jobs prefetched")
        worker = running.worker
        worker._stop_signals.on_signal(signal.SIGTERM, None)  # what the process's SIGTERM handler runs
        wait_for(
            lambda: all(state_of(r.id) == "queued" for r in queued), timeout=20, message="the prefetched jobs released"
        )
        assert state_of(first.id) == "running", "the running job is let finish within the grace period"
        GATE.set()
        wait_for(running.exited, timeout=20, message="the worker to drain and exit")
    finally:
        GATE.set()
        running.stop()
    assert running.raised is None and running.returned == 0
    assert RAN == [], "a prefetched job started after the stop request"
    assert state_of(first.id) == "succeeded"
    for r in queued:
        job = Job.objects.get(pk=r.id)
        assert (job.state, job.locked_by, job.lease_expires_at) == ("queued", None, None)
        assert attempt_outcomes(r.id) == [(1, "released")]
        assert job.max_attempts == 2, "a released attempt does not count against the job's budget"
    # Not lost: the next worker runs them, each once.
    again = start_worker(burst=True, concurrency=2)
    try:
        wait_for(again.exited, timeout=20, message="the next worker to drain and exit")
    finally:
        again.stop()
    assert [state_of(r.id) for r in queued] == ["succeeded"] * 3
    assert sorted(RAN) == [0, 1, 2]


def test_a_prefetched_job_cancelled_before_it_starts_never_runs():
    first = blocker.enqueue()
    later = counted.enqueue(5)
    running = start_worker(Recording, concurrency=1)
    try:
        wait_for(lambda: running.worker.most_prefetched == 1, timeout=20, message="the job prefetched")
        Job.objects.filter(pk=later.id).update(cancel_requested_at=Job.objects.get(pk=later.id).enqueued_at)
        wait_for(lambda: state_of(later.id) == "cancelled", timeout=20, message="the cancel to be seen")
        GATE.set()
        wait_for(lambda: state_of(first.id) == "succeeded", message="the running job to finish")
    finally:
        running.stop()
    assert RAN == []
    assert attempt_outcomes(later.id) == [(1, "cancelled")]


def test_a_prefetched_job_that_lost_its_lease_is_not_started_and_its_outcome_is_not_written():
    first = blocker.enqueue()
    later = counted.enqueue(9)
    running = start_worker(Recording, concurrency=1)
    try:
        wait_for(lambda: running.worker.most_prefetched == 1, timeout=20, message="the job prefetched")
        # Someone else's now (as recovery and a new claim would leave it).
        Job.objects.filter(pk=later.id).update(locked_by="another-worker")
        wait_for(lambda: running.worker.processed >= 1, timeout=20, message="the withdrawn job's outcome")
        GATE.set()
        wait_for(lambda: state_of(first.id) == "succeeded", message="the running job to finish")
    finally:
        running.stop()
    assert RAN == []
    job = Job.objects.get(pk=later.id)
    assert (job.state, job.locked_by) == ("running", "another-worker"), "a stale write changed the row"
    assert attempt_outcomes(later.id) == [(1, None)]


def test_the_prefetch_bound_follows_the_handlers_run_time():
    worker = Worker(queues=["default"], concurrency=8)
    assert worker.prefetch_bound() == 0, "nothing is prefetched before a handler has returned"
    worker._finishing.mean_duration = 0.0001
    assert worker.prefetch_bound() == worker.options.prefetch_limit == 32
    worker._finishing.mean_duration = PREFETCH_HORIZON * 8 / 4  # four jobs start within the horizon
    assert worker.prefetch_bound() == 4
    worker._finishing.mean_duration = 1.0  # slow handlers: a job held here is one another worker could run
    assert worker.prefetch_bound() == 0
    assert Worker(queues=["default"], concurrency=128).options.prefetch_limit == 128


# --- the batch statement: finish and claim, fenced -------------------------------------


def _claim(worker_id: str, limit: int = 1) -> list[ClaimedJob]:
    from django.db import connection

    return store.claim_jobs(connection, worker_id=worker_id, queues=["default"], limit=limit, lease_seconds=30)


def test_finish_and_claim_writes_the_live_outcomes_rejects_stale_ones_and_claims():
    from django.db import connection

    live, stale = (tasks.add.enqueue(i, 1) for i in range(2))
    [a] = _claim("w1")
    [b] = _claim("w1")
    assert {a.id, b.id} == {int(live.id), int(stale.id)}
    # b's lease was lost: recovered and claimed again by another worker (attempt 2).
    Job.objects.filter(pk=b.id).update(state="queued", locked_by=None, lease_expires_at=None)
    [b2] = _claim("w2")
    assert (b2.id, b2.attempt) == (b.id, 2)
    waiting = [tasks.add.enqueue(i, 2) for i in range(3)]
    outcomes = [
        Outcome(a.id, a.attempt, JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, return_value="2"),
        Outcome(b.id, b.attempt, JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, return_value="99"),
    ]
    won, claimed = store.finish_and_claim(
        connection, worker_id="w1", outcomes=outcomes, queues=["default"], limit=2, lease_seconds=30
    )
    assert set(won) == {a.id} and won[a.id][0] == "succeeded" and won[a.id][1] is not None
    assert [j.id for j in claimed] == [int(w.id) for w in waiting[:2]]
    assert all(j.attempt == 1 for j in claimed)
    stale_row = Job.objects.get(pk=b.id)
    assert (stale_row.state, stale_row.locked_by, stale_row.attempts, stale_row.return_value) == (
        "running",
        "w2",
        2,
        None,
    )
    assert Job.objects.get(pk=a.id).return_value == 2
    assert ExecutionLog.objects.get(job_id=a.id).outcome == "succeeded"
    # The stale attempt's row stays as it was; every claimed job has one attempt row.
    assert ExecutionLog.objects.get(job_id=b.id, attempt=1).outcome is None
    for j in claimed:
        assert ExecutionLog.objects.filter(job_id=j.id).count() == 1
    assert state_of(waiting[2].id) == "queued"


def test_finish_and_claim_with_nothing_to_claim_or_nothing_to_finish():
    from django.db import connection

    job = tasks.add.enqueue(1, 1)
    won, claimed = store.finish_and_claim(
        connection, worker_id="w1", outcomes=[], queues=["default"], limit=5, lease_seconds=30
    )
    assert won == {} and [j.id for j in claimed] == [int(job.id)]
    [c] = claimed
    outcome = Outcome(c.id, c.attempt, JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, return_value="2")
    won, claimed = store.finish_and_claim(
        connection, worker_id="w1", outcomes=[outcome], queues=["default"], limit=0, lease_seconds=30
    )
    assert set(won) == {c.id} and claimed == []
    assert state_of(job.id) == "succeeded"


def test_a_worker_at_concurrency_one_with_prefetch_runs_a_retried_job_again():
    """A retry queued by a batch's finish is claimed by a later batch: the statement's
    claim does not see the finish's own write."""
    result = tasks.fail_until.enqueue(2)
    running = start_worker(Recording, concurrency=1)
    try:
        wait_for(lambda: state_of(result.id) == "succeeded", timeout=30, message="the retry to succeed")
    finally:
        running.stop()
    assert state_of(result.id) == "succeeded"
    assert [o for _, o in attempt_outcomes(result.id)] == ["retry", "succeeded"]
