"""A worker whose outcome writes are refused — by an outage, or by the database for one
row whatever is written in its place — neither spins nor stops writing the others."""

from __future__ import annotations

import time

import pytest
from django.db import DataError, OperationalError

from taskengine import store
from taskengine.runtime.worker import Worker
from tests import tasks
from tests.conftest import wait_for
from tests.integration.test_worker_robustness import start_worker, state_of

pytestmark = pytest.mark.django_db(transaction=True)


class WorkerWhoseOutcomeWritesFailForAWhile(Worker):
    """The finish write meets an outage (seen only by that statement) for 1.5 s; counts
    the loop's waits that do not wait at all."""

    refuse_until = 0.0

    def __init__(self, **kw):
        super().__init__(**kw)
        self.zero_waits = 0
        self.waits = 0

    def _finish_then_claim(self, claim):
        if not self.refuse_until:
            type(self).refuse_until = time.monotonic() + 1.5
        if time.monotonic() < self.refuse_until:
            raise OperationalError("server closed the connection unexpectedly")
        return super()._finish_then_claim(claim)

    def _wait(self, timeout):
        self.waits += 1
        if timeout <= 0.0005:
            self.zero_waits += 1
        return super()._wait(timeout)


def test_the_loop_does_not_spin_while_outcome_writes_are_refused_and_another_job_runs(tmp_path):
    long = tasks.sleep_then_record.enqueue(str(tmp_path), "long", 3.0)
    quick = tasks.add.enqueue(1, 2)
    # The loop's own write path (the completer's outage is in tests/integration/test_completer.py).
    running = start_worker(WorkerWhoseOutcomeWritesFailForAWhile, concurrency=2, burst=True, completer=False)
    try:
        wait_for(running.exited, timeout=30, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert state_of(quick.id) == "succeeded" and state_of(long.id) == "succeeded"
    # ~1.5 s of outage: a loop that sleeps until its retry time waits a handful of times.
    assert running.worker.zero_waits < 200, (running.worker.zero_waits, running.worker.waits)


def test_an_outcome_refused_even_as_its_unstorable_failure_does_not_wedge_the_worker(monkeypatch):
    """A refusal tied to the row, not to the outcome's values (a project's CHECK
    constraint or trigger): the worker cannot write that attempt at all. It still writes
    every other outcome and keeps claiming; the refused job is left to lease recovery."""
    poisoned = tasks.add.using(max_attempts=1).enqueue(100, 1)
    after = [tasks.add.enqueue(i, 2) for i in range(5)]
    real_finish = store.finish_jobs

    def finish_refusing_the_poisoned_row(connection, *, worker_id, outcomes):
        if any(o.job_id == int(poisoned.id) for o in outcomes):
            raise DataError('new row for relation "taskengine_job" violates check constraint')
        return real_finish(connection, worker_id=worker_id, outcomes=outcomes)

    real_finish_and_claim = store.finish_and_claim

    def batch_refusing_the_poisoned_row(connection, *, worker_id, outcomes, **claim):
        # PostgreSQL writes a batch's outcomes in the statement that claims the next jobs.
        if any(o.job_id == int(poisoned.id) for o in outcomes):
            raise DataError('new row for relation "taskengine_job" violates check constraint')
        return real_finish_and_claim(connection, worker_id=worker_id, outcomes=outcomes, **claim)

    monkeypatch.setattr(store, "finish_jobs", finish_refusing_the_poisoned_row)
    monkeypatch.setattr(store, "finish_and_claim", batch_refusing_the_poisoned_row)
    running = start_worker(burst=True, concurrency=1)
    try:
        wait_for(
            lambda: all(state_of(r.id) == "succeeded" for r in after),
            timeout=15,
            message="the other jobs to be run and their outcomes written",
        )
        wait_for(running.exited, timeout=15, message="the burst worker to exit")
    finally:
        running.stop()
    assert running.raised is None
    assert state_of(poisoned.id) == "running"  # leased still: recovery takes it when the lease lapses


def test_a_claimed_row_whose_arguments_do_not_decode_fails_its_job_and_the_worker_carries_on():
    """A row written outside enqueue (a migration, a manual fix, another client) can hold
    valid JSON that Python will not decode (an integer past sys.get_int_max_str_digits).
    The claim has committed before the rows are decoded: the error must fail that job's
    attempt, not the fetch of the whole batch."""
    from django.db import connection

    from taskengine.models import ExecutionLog

    bad = tasks.add.using(max_attempts=1).enqueue(1, 2)
    good = [tasks.add.enqueue(i, 1) for i in range(3)]
    big = "[1" + "0" * 5000 + ", 2]"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("UPDATE taskengine_job SET args = %s::jsonb WHERE id = %s", [big, int(bad.id)])
        else:
            cursor.execute("UPDATE taskengine_job SET args = %s WHERE id = %s", [big, int(bad.id)])
    running = start_worker(burst=True, concurrency=4)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None, repr(running.raised)
    assert [state_of(r.id) for r in good] == ["succeeded"] * 3
    assert state_of(bad.id) == "failed"
    log = ExecutionLog.objects.get(job_id=bad.id)
    assert log.error_class == "taskengine.store.StoredArgumentsNotDecodable"
    assert "do not decode" in log.error_message


def test_a_handler_that_cannot_be_started_fails_its_attempt_and_the_worker_carries_on(monkeypatch):
    from taskengine.runtime.pool import JobThreads

    real_submit = JobThreads.submit
    refused = []

    def submit_refusing_once(self, item):
        if not refused:
            refused.append(item)
            raise RuntimeError("can't start new thread")
        return real_submit(self, item)

    monkeypatch.setattr(JobThreads, "submit", submit_refusing_once)
    first = tasks.add.using(max_attempts=2, retry_backoff=0).enqueue(1, 2)
    running = start_worker(burst=True, concurrency=1)
    try:
        wait_for(running.exited, timeout=20, message="the burst worker to drain and exit")
    finally:
        running.stop()
    assert running.raised is None, repr(running.raised)
    assert refused and state_of(first.id) == "succeeded"
