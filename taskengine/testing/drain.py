"""``drain()``: run due jobs inline, in the test's process, thread and transaction,
through the engine's real claim and finish statements.

What is the same as in a worker: jobs are leased by ``store.claim_jobs`` (priority
order, attempt rows written by the claim), each attempt's result becomes an Outcome
through ``execution.outcome_for`` / ``failure_outcome`` (retry with backoff, final
failure, timeout, unserialisable return value, unimportable task), the Outcome is
written by the fenced ``store.finish_jobs``, ``takes_context`` tasks get the same
TaskContext, async handlers run through ``execution.run_async``, and the worker's job
events (log lines, metrics, ``task_started`` / ``task_finished``) are sent.

What differs, because the handler runs on the caller's thread and connection:
- The handler's database writes happen on the test's connection, inside its
  transaction if it has one (that is the point: the test sees them, and they roll back
  with the test). If the handler leaves that transaction unusable (a database error
  inside it: Django marks the transaction for rollback, PostgreSQL aborts it), the
  attempt's writes are rolled back to where the attempt began, so the outcome is still
  recorded and the test can go on; in a worker (autocommit) the writes that succeeded
  before the error would stay.
- A handler's timeout is enforced by a timer thread that sends the worker's own
  interrupt: JobTimedOut raised inside a sync handler (one blocked in C code notices
  when that call returns), or the cancellation of an async handler's coroutine. The
  attempt is then recorded as ``timed_out``, as in a worker.
- No heartbeat runs: jobs are leased for LEASE_SECONDS (an hour), ample for a test.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

if TYPE_CHECKING:
    from taskengine.compat import TaskResult
    from taskengine.jobs import ClaimedJob, Outcome
    from taskengine.runtime.execution import RunningJob

TEST_WORKER_ID = "taskengine.testing"  # locked_by and the attempt rows' worker_id of drained jobs
LEASE_SECONDS = 3600.0


class DrainLimitReached(AssertionError):
    """drain() ran ``max_jobs`` attempts and jobs were still due (a task that keeps
    enqueueing itself, or a retry loop): raised instead of looping forever."""


@dataclass(frozen=True, slots=True)
class DrainedAttempt:
    """One attempt drain() ran."""

    job_id: int
    task_path: str
    attempt: int
    outcome: str  # AttemptOutcome value: succeeded, retry, failed, timed_out, cancelled
    state: str | None  # the job's state after the write; None: the write was fenced out
    error_class: str | None = None
    error_message: str = ""


@dataclass(slots=True)
class DrainResult:
    """What one drain() did. ``results`` holds the final TaskResult of every job it
    touched (in the order each first ran), read back from the store."""

    attempts: list[DrainedAttempt] = field(default_factory=list)
    results: list[TaskResult[..., Any]] = field(default_factory=list)
    clock_advanced: float = 0.0  # seconds the clock was moved (drain(advance=True))

    @property
    def ran(self) -> int:
        """Attempts run."""
        return len(self.attempts)

    def _final(self, state: str) -> int:
        final: dict[int, str | None] = {}
        for attempt in self.attempts:
            final[attempt.job_id] = attempt.state
        return sum(1 for s in final.values() if s == state)

    @property
    def succeeded(self) -> int:
        """Jobs that ended succeeded."""
        return self._final("succeeded")

    @property
    def failed(self) -> int:
        """Jobs that ended failed (attempts exhausted)."""
        return self._final("failed")

    @property
    def cancelled(self) -> int:
        return self._final("cancelled")

    @property
    def retried(self) -> int:
        """Attempts that failed and put their job back in the queue for a retry."""
        return sum(1 for a in self.attempts if a.state == "queued")

    @property
    def queued(self) -> int:
        """Jobs whose last attempt here left them queued (a retry not yet due)."""
        return self._final("queued")

    def __repr__(self) -> str:
        return (
            f"<DrainResult ran={self.ran} succeeded={self.succeeded} failed={self.failed} "
            f"retried={self.retried} cancelled={self.cancelled} queued={self.queued}>"
        )


def drain(
    *, queues: Iterable[str] | None = None, advance: bool = False, max_jobs: int = 1000, using: str | None = None
) -> DrainResult:
    """Run every due job of ``queues`` (default: every queue with a queued job) until
    none is due, one job at a time in claim order, and return what happened.

    With ``advance=True`` it keeps going through retries and delayed jobs: whenever
    nothing is due but jobs are queued, it moves the engine's clock (advance_clock) to
    the earliest one and continues, until the queues are empty. Jobs enqueued by the
    handlers themselves are run too. Raises DrainLimitReached after ``max_jobs``
    attempts with jobs still due."""
    from taskengine import store
    from taskengine.conf import engine_settings

    database = using or engine_settings.DATABASE
    connection = connections[database]
    wanted = list(dict.fromkeys(queues)) if queues is not None else None
    summary = DrainResult()
    seen: list[int] = []
    runner = _AttemptRunner(database)
    while True:
        names = wanted if wanted is not None else _queues_with_jobs(database)
        claimed = _claim_one(connection, names)
        if not claimed:
            step = _advance_to_next_due(connection, database, names) if advance and names else 0
            if not step:
                break
            summary.clock_advanced += step
            continue
        job = claimed[0]
        if summary.ran >= max_jobs:
            # Hand the claimed job back untouched so the test's database stays consistent.
            store.release_jobs(connection, worker_id=TEST_WORKER_ID, held=[(job.id, job.attempt)])
            raise DrainLimitReached(
                f"drain() ran {max_jobs} attempts and jobs are still due ({summary!r}); "
                "does a task keep enqueueing itself? Pass max_jobs= to allow more."
            )
        if job.id not in seen:
            seen.append(job.id)
        summary.attempts.append(runner.run(job))
    summary.results = _results(database, seen)
    return summary


def _queues_with_jobs(database: str) -> list[str]:
    from taskengine.models import Job

    return sorted(set(Job.objects.using(database).queued().values_list("queue", flat=True)))


def _claim_one(connection: Any, names: list[str]) -> list[ClaimedJob]:
    """The next due job of ``names`` by the worker's own claim (limits and pauses
    included), leased to drain()'s worker id."""
    from taskengine import store
    from taskengine.conf import engine_settings

    if not names:
        return []
    return store.claim_jobs(
        connection,
        worker_id=TEST_WORKER_ID,
        queues=names,
        limit=1,
        lease_seconds=LEASE_SECONDS,
        advisory=engine_settings.USE_ADVISORY_LOCKS,
    )


def _advance_to_next_due(connection: Any, database: str, names: list[str]) -> int:
    """Move the engine's clock to the earliest queued job of ``names``, in whole seconds
    (they keep SQLite's stored fractions exact); 0 when time is not what holds them:
    nothing queued, or due but held by someone else."""
    from taskengine.db import store_for
    from taskengine.db.queries import sql

    from .clock import advance_clock

    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "testing_seconds_until_due"), {"queues": store_for(connection).array(names)})
        wait = cursor.fetchone()[0]
    if wait is None or wait <= 0:
        return 0
    step: int = max(1, math.ceil(wait))
    advance_clock(step, using=database)
    return step


def _results(database: str, job_ids: list[int]) -> list[TaskResult[..., Any]]:
    """The stored TaskResults of ``job_ids``, in that order (a job a handler deleted has none)."""
    from taskengine.compat import task_backends
    from taskengine.models import Job

    backends = dict(Job.objects.using(database).filter(pk__in=job_ids).values_list("id", "backend"))
    return [task_backends[backends[job_id]].get_result(str(job_id)) for job_id in job_ids if job_id in backends]


class _AttemptRunner:
    """Runs claimed jobs one by one the way runtime.slots.Slots.start and Worker._flush do, minus threads."""

    def __init__(self, database: str) -> None:
        from taskengine.runtime import events

        self.database = database
        self.events = events.JobEvents(TEST_WORKER_ID)

    def run(self, job: ClaimedJob) -> DrainedAttempt:
        from taskengine import store
        from taskengine.resolution import resolve_task
        from taskengine.runtime.execution import RunningJob, failure_outcome

        connection = connections[self.database]
        running = RunningJob(job=job)
        self.events.claimed(job)
        try:
            store.ensure_decoded(job)
            running.task = resolve_task(job.task_path)
        except Exception as exc:
            outcome = failure_outcome(job, exc)
        else:
            self.events.started(running)
            with _attempt_savepoint(connection):
                try:
                    outcome = self._call(running)
                except Exception as exc:
                    outcome = failure_outcome(job, exc)
        self.events.collected(running)
        with transaction.atomic(using=self.database):
            won = store.finish_jobs(connection, worker_id=TEST_WORKER_ID, outcomes=[outcome])
        state, finished_at = won.get(job.id, (None, None))
        outcome.finished_at = finished_at
        self.events.finished(running, outcome, state)
        return DrainedAttempt(
            job.id, job.task_path, job.attempt, str(outcome.outcome), state, outcome.error_class, outcome.error_message
        )

    def _call(self, running: RunningJob) -> Outcome:
        from taskengine.runtime.execution import run_async

        assert running.task is not None  # resolved by run()
        if inspect.iscoroutinefunction(running.task.func):
            from asgiref.sync import async_to_sync

            from taskengine.runtime.execution import JobTimedOut, interrupt_async

            running.is_async = True
            # A timer cancels the coroutine at its deadline, as the worker's watch does.
            timer = None
            if running.job.timeout_seconds:
                timer = threading.Timer(running.job.timeout_seconds, interrupt_async, (running, JobTimedOut))
                timer.daemon = True
                timer.start()
            try:
                # async_to_sync runs the coroutine on a loop of its own and brings
                # sync_to_async(thread_sensitive=True) calls back to this thread: a handler's
                # ORM calls use the test's connection, as its sync calls would.
                return async_to_sync(run_async)(running, TEST_WORKER_ID)
            finally:
                if timer is not None:
                    timer.cancel()
        return _run_sync_inline(running)


def _run_sync_inline(running: RunningJob) -> Outcome:
    """execution.run_sync on the caller's thread, with a timer that raises JobTimedOut
    in it at the deadline (the worker's interrupt). run_sync itself cannot be used:
    after the handler it closes any connection left inside a transaction — in a test,
    the test's own connection."""
    from taskengine.runtime.execution import JobInterrupted, JobTimedOut, call_arguments, interrupt_thread, outcome_for

    assert running.task is not None  # resolved by _AttemptRunner.run()
    timer = None
    if running.job.timeout_seconds:
        timer = threading.Timer(running.job.timeout_seconds, interrupt_thread, (running, JobTimedOut))
        timer.daemon = True
    try:
        try:
            args, kwargs = call_arguments(running, TEST_WORKER_ID)
            with running.guard:
                running.thread_id = threading.get_ident()
            if timer is not None:
                timer.start()
            try:
                value = running.task.func(*args, **kwargs)
                error: BaseException | None = None
            except BaseException as exc:
                value, error = None, exc
            finally:
                with running.guard:
                    running.thread_id = None
        except JobInterrupted as late:
            value, error = None, late  # injected just as the handler returned
    finally:
        if timer is not None:
            timer.cancel()
    return outcome_for(running, value, error)


class _AbortedTransaction(Exception):
    pass


@contextmanager
def _attempt_savepoint(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Inside a transaction (a test's), run the attempt under a savepoint that is kept
    unless the handler left the transaction unusable; outside one, the handler runs in
    autocommit as in a worker."""
    if not connection.in_atomic_block:
        yield
        return
    try:
        with transaction.atomic(using=connection.alias):
            yield
            if _aborted(connection):
                raise _AbortedTransaction  # roll back to the savepoint: RELEASE would fail
    except _AbortedTransaction:
        pass


def _aborted(connection: BaseDatabaseWrapper) -> bool:
    from taskengine.db import store_for

    if not store_for(connection).aborts_failed_transactions or connection.connection is None:
        return False
    from psycopg.pq import TransactionStatus

    return bool(connection.connection.info.transaction_status == TransactionStatus.INERROR)
