"""The runworker loop: claim → run → heartbeat → finish.

One process, ``concurrency`` execution slots: sync handlers on a thread pool, async
handlers on one event loop thread. The main thread talks to the database for the engine
(claims, heartbeats, releases), in short statements, never around a handler; with
TASKENGINE["COMPLETER"] on PostgreSQL the fenced finishes are written by the completer
(taskengine/runtime/completer.py), a thread with its own connection, so claims never wait for them.

The loop claims and completes in batches, each on its own cadence: a batch of finished
attempts is written when half the held jobs' worth has returned, when nothing else
runs, or FLUSH_DELAY after the first — by the completer when it is on, or (the default,
and SQLite) by the loop, with the next claim riding in the same statement
(PostgreSQL: finish_and_claim, one round trip and one commit) whenever there is room.
Between batches the loop sleeps: a returning handler wakes it only for the first
outcome since it last looked, a batch's worth, or nothing left running. A handler that
returns hands its slot straight to the next prefetched job, on its own thread (no
wake-up of the loop and no queue hand-off per job).

Invariants:
- A job is claimed only into a free slot or the prefetch buffer: a claim asks for at
  most the free slots plus the prefetch bound (``prefetch_bound()``: as many jobs as
  are expected to start within PREFETCH_HORIZON at the handlers' mean run time, at most
  ``prefetch_limit``; none before a handler has returned or for slow handlers). A
  prefetched job is leased and held like a running one — its lease is renewed by every
  heartbeat, a stop request releases it at once, unstarted (outcome ``released``, as
  for any released job), and a lost lease or a cancellation withdraws it before it
  starts. Its attempt's record (``started_at``, ``last_attempted_at``, the attempt
  row's ``started_at``) carries the claim's time, which is at most the prefetch wait
  earlier than the handler's start; its timeout, ``task_started`` and the running-time
  metric count from the handler's start, on the thread that starts it.
- Every outcome is written with a fenced UPDATE; if this worker lost the lease (it
  expired, or recovery gave the job to someone else), the write changes nothing and the
  result is discarded with a warning. Nothing is marked done that did not run here.
- Running jobs are tracked per attempt (RunningJob identity), never per job id: a
  retry this worker claimed while an earlier attempt's thread still runs is its own entry.
- Database errors never kill the loop: the worker logs once, backs off, reconnects and
  resumes; outcomes not yet written wait in memory (their leases may lapse meanwhile, in
  which case the jobs are recovered and run again — at-least-once). An outcome the
  database *rejects* (a data error, or a value the driver cannot encode) is different: the
  batch is written in halves until the bad outcome is alone, and that attempt fails with
  the reason (execution.unstorable_outcome). One bad row never holds back the other
  outcomes or the claims riding in their transaction, and nothing raised while recording
  an outcome ends the loop.
- A handler that ignores its interrupt (timeout, cancellation, lost lease) for
  HARD_TIMEOUT_GRACE is *stuck* — a sync handler's thread, or an async handler's
  coroutine that swallows its CancelledError or is blocked in a sync call: while it runs
  the job stays leased here (heartbeats go on), is not retried, and holds its slot; its
  outcome is written when it returns (an interrupted attempt's outcome is never written
  before its handler has stopped). Past ``max_stuck_threads`` stuck handlers the worker
  drains and exits with STUCK_THREADS_EXIT_CODE so its supervisor replaces it. At exit,
  stuck jobs keep their leases (and the worker row is not marked stopped): recovery
  takes them only once the leases expire, after the process and its handlers are gone.
- SIGTERM (or SIGINT): stop claiming, let running jobs finish within the grace period,
  release the rest, mark the worker stopped, exit 0 (STUCK_THREADS_EXIT_CODE with stuck
  threads). Jobs a claim returns after the stop request are released at once (or started,
  if the release fails): never dropped. A second signal exits at once (leases then
  expire and recovery hands the jobs back).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Protocol, Unpack, overload

from django.db import Error as DatabaseError
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine import queues, store
from taskengine.db import store_for
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.observability import metrics
from taskengine.ops import queue_settings
from taskengine.resolution import resolve_task
from taskengine.runtime import events, heartbeats
from taskengine.runtime.completer import FLUSH_DELAY, Completer, Outcomes
from taskengine.runtime.execution import (
    JobCancelled,
    JobInterrupted,
    JobTimedOut,
    LeaseLost,
    RunningJob,
    async_interrupt,
    failure_outcome,
    interrupt_async,
    interrupt_thread,
    run_async,
    run_sync,
)
from taskengine.runtime.listener import Listener
from taskengine.runtime.pool import JobThreads
from taskengine.runtime.worker_options import WorkerArguments, WorkerOptions
from taskengine.states import AttemptOutcome

logger = logging.getLogger("taskengine.worker")

HARD_TIMEOUT_GRACE = 2.0  # seconds an interrupted handler gets to stop before it counts as stuck
PREFETCH_HORIZON = 0.02  # jobs are prefetched only as many as are expected to start within this (seconds)
DURATION_WEIGHT = 0.05  # weight of each handler's run time in the worker's running mean
STUCK_THREADS_EXIT_CODE = 3  # the worker exits with this when it gives up on stuck handlers


class Service(Protocol):
    """A background service the worker starts after registering (e.g. leadership)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class Worker:
    def __init__(
        self, *, queues: Sequence[str], services: Sequence[Service] = (), **arguments: Unpack[WorkerArguments]
    ) -> None:
        self.options = options = WorkerOptions.build(queues, **arguments)
        self.worker_id = options.worker_id
        self.database = options.database
        self.services = list(services)

        self._wake = threading.Event()
        self._done: queue.SimpleQueue[tuple[RunningJob, Outcome | None, BaseException | None]] = queue.SimpleQueue()
        self._running: set[RunningJob] = set()  # one entry per attempt (identity), never per job id
        self._watched: set[RunningJob] = set()  # jobs with a deadline: a timeout or an interrupt's grace
        self._stuck: set[RunningJob] = set()  # handlers that ignored an interrupt and still run
        self._gave_up = False  # draining because of stuck handlers
        self.events = events.JobEvents(self.worker_id)
        self._outcomes = Outcomes(self.worker_id, self.events)  # written on the loop's connection
        self._completer: Completer | None = None  # PostgreSQL: written on the completer's
        self._batch = max(1, options.concurrency // 2)  # half the slots plus the prefetch bound, set by the loop
        # Slots and the prefetch buffer, shared with the handlers' threads (under _slots_lock):
        # a slot is taken from a job's start to its handler's return; a handler that returns
        # hands its slot straight to the next prefetched job, on its own thread.
        self._slots_lock = threading.Lock()
        self._free_slots = options.concurrency
        self._ready: deque[RunningJob] = deque()  # prefetched: leased, not started
        self._hold_ready = False  # no prefetched job starts (draining, or being released)
        self._uncollected = 0  # outcomes handed over since the loop last collected
        self._mean_duration: float | None = None  # running mean of handler run times (seconds)
        self._tasks: dict[str, tuple[Any, bool]] = {}  # task path -> (task, is it async), resolved once
        self._draining = False
        self._drain_deadline = 0.0
        self._signals = 0
        self._idle_rounds = 0
        self._next_heartbeat = 0.0
        self._db_retry_at = 0.0
        self._db_backoff = 0.0
        self._db_down_since: float | None = None
        self._registered = False
        self._threads = JobThreads(options.concurrency, self._run_item, self._on_handler_done)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Listener | None = None
        self.stuck_threads = False  # handler threads were still running at exit
        self.exit_code = 0

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info(
                "received %s: draining (no new claims, %.0fs grace)",
                signal.Signals(signum).name,
                self.options.shutdown_grace,
                extra={"worker_id": self.worker_id},
            )
            self._begin_drain()
            # The handler runs on the main thread wherever it was interrupted, possibly
            # inside Event.wait holding the event's (non-reentrant) lock: setting the
            # event here could deadlock, so another thread sets it.
            threading.Thread(target=self._wake.set, name="taskengine-signal-wake", daemon=True).start()
        else:
            logger.warning(
                "second signal: exiting now; running jobs are recovered when their leases expire",
                extra={"worker_id": self.worker_id},
            )
            for handler in logging.getLogger("taskengine").handlers + logging.getLogger().handlers:
                handler.flush()
            os._exit(1)

    def request_stop(self) -> None:
        self._begin_drain()
        self._wake.set()

    def _begin_drain(self) -> None:
        if not self._draining:
            self._hold_ready = True  # a plain assignment: this may run in a signal handler
            self._draining = True
            self._drain_deadline = time.monotonic() + self.options.shutdown_grace

    def run(self) -> int:
        """Run until drained (SIGTERM, request_stop, or --burst with nothing due)."""
        logger.info(
            "worker starting: queues=%s concurrency=%d lease=%.0fs claim=%s wake=%s",
            ",".join(self.options.queues),
            self.options.concurrency,
            self.options.lease_seconds,
            "advisory" if self.options.use_advisory_locks else "skip-locked",
            "poll" if self.options.poll_only or not store_for(self.connection).listen_notify else "listen",
            extra={"worker_id": self.worker_id},
        )
        metrics.WORKER_SLOTS.set(self.options.concurrency)
        try:
            self._start_listener()
            while not self._registered and not self._draining:
                self._db_call("register", self._register)
                if not self._registered:
                    self._sleep_until_db_retry()
            self._start_completer()
            for service in self.services:
                service.start()
            self._loop_until_drained()
        finally:
            self._shutdown()
        return self.exit_code

    def _register(self) -> None:
        # First use of the worker's queues: their rows, and TASKENGINE["QUEUES"] applied.
        queue_settings.sync_settings(self.database, self.options.queues)
        heartbeats.register(self.database, self.worker_id, self.options.queues, self.options.concurrency)
        self._registered = True
        self._next_heartbeat = time.monotonic() + self.options.heartbeat_seconds

    def _start_listener(self) -> None:
        if self.options.poll_only or not store_for(self.connection).listen_notify:
            return
        self._listener = Listener(self.connection.get_connection_params(), set(self.options.queues), self._wake)
        self._listener.start()

    def _loop_until_drained(self) -> None:
        while True:
            self._collect_done()
            self._watch_handlers()
            if self._draining and self._ready:
                self._release_prefetched()
            # Room for the slots not taken and the prefetch bound; a stuck thread keeps its slot.
            bound = self.prefetch_bound()
            free = self.options.concurrency + bound - len(self._running)
            self._batch = max(1, (self.options.concurrency + bound) // 2)
            claim_due = not self._draining and (free >= self._batch or (free > 0 and not self._running))
            if self._flush_due():
                # Write the finished batch and, when slots are free, claim the next one
                # in the same transaction: one commit (one WAL flush) per batch.
                claimed = self._flush(claim=free if claim_due else 0)
            else:
                claimed = self._claim(free) if claim_due else None
            if claimed:
                # Before the drain check: a stop requested while the claim ran must not
                # drop what it returned (those jobs would stay running under a live lease).
                self._start_claimed(claimed)
            self._heartbeat_if_due()
            if self._draining:
                if len(self._running) == len(self._stuck) and not self._pending:
                    return  # stuck handlers had their grace; they are not waited for
                if time.monotonic() >= self._drain_deadline:
                    self._release_remaining()
                    return
                self._wait(0.05)
                continue
            if claimed:
                self._idle_rounds = 0
                continue
            if claim_due and claimed is None and time.monotonic() >= self._db_retry_at:
                continue  # the claim did not run (its batch was refused): claim again now
            if claim_due and self._completer is not None and self._completer.take_requeued():
                continue  # the completer queued retries since this claim's snapshot: claim again
            if claim_due and not self._running:
                if self.options.burst and not self._pending and self._db_down_since is None:
                    logger.info("burst: nothing due, exiting", extra={"worker_id": self.worker_id})
                    return
                self._wait(self._idle_wait())
                continue
            if claim_due and not self._outcomes.pending:  # free slots, nothing to claim: poll for new work
                self._wait(self._poll_wait(self.options.max_backoff))
                continue
            self._wait(self._flush_wait())

    def _flush_due(self) -> bool:
        """Outcomes are written in batches: when half the held jobs' worth (slots plus the
        prefetch bound) have finished, when nothing else is running, or when the oldest is
        FLUSH_DELAY old."""
        if not self._outcomes.pending:
            return False
        return (
            len(self._outcomes.pending) >= self._batch
            or not self._running
            or self._draining
            or time.monotonic() - self._outcomes.since >= FLUSH_DELAY
        )

    def _flush_wait(self) -> float:
        if not self._outcomes.pending:
            return self.options.max_backoff
        # While writes back off (an outage, a refused batch), the next try is at the
        # retry time: waiting less would spin the loop through refused _db_calls.
        return max(0.0, max(self._outcomes.since + FLUSH_DELAY, self._db_retry_at) - time.monotonic())

    def _shutdown(self) -> None:
        for service in self.services:
            try:
                service.stop()
            except Exception:
                logger.exception("stopping service %r failed", service)
        if self._listener:
            self._listener.stop()
        self._collect_done()
        self._flush()
        if self._completer is not None:
            self._completer.stop()  # writes what it holds, then closes its connection
        if self._stuck or self._gave_up:
            self.exit_code = STUCK_THREADS_EXIT_CODE
        if self._stuck:
            # A stopped worker's jobs are recovered at once, while this process (and the
            # stuck handlers) may still be running: leave the row, and the leases, to expire.
            logger.error(
                "exiting with %d stuck handlers; their jobs stay leased until the leases expire",
                len(self._stuck),
                extra={"worker_id": self.worker_id},
            )
        elif self._registered:
            self._db_call("stop", lambda: heartbeats.mark_stopped(self.database, self.worker_id))
        self.stuck_threads = bool(self._running)
        self._threads.shutdown(wait=not self.stuck_threads)
        if self._loop is not None and not any(r.is_async for r in self._running):
            # Coroutines still running are left to run on, like handler threads still
            # running (the process's exit ends both): stopping the loop would freeze them.
            self._loop.call_soon_threadsafe(self._loop.stop)
        logger.info("worker stopped: %d attempts processed", self.processed, extra={"worker_id": self.worker_id})
        connections.close_all()  # this thread's connections; job threads close theirs on exit

    # --- waiting ---------------------------------------------------------------------

    def _idle_wait(self) -> float:
        wait: float = min(self.options.max_backoff, self.options.backoff_base * (2**self._idle_rounds))
        self._idle_rounds = min(self._idle_rounds + 1, 30)
        return self._poll_wait(wait)

    def _poll_wait(self, wait: float) -> float:
        """``wait``, or at most PAUSED_POLL_SECONDS for a worker that polls while a queue
        of its own is paused (nothing wakes it on resume, so it polls often enough to
        claim within a second of the resume), or while one is limited."""
        if wait > queues.PAUSED_POLL_SECONDS and self._serves_held_queue():
            return queues.PAUSED_POLL_SECONDS
        return wait

    def _woken_on_change(self) -> bool:
        """True while a LISTEN connection wakes this worker on enqueue and on resume."""
        return self._listener is not None and self._listener.connected.is_set()

    def _serves_held_queue(self) -> bool:
        """A queue of this worker is limited (nothing wakes a worker when a limit has room
        again: docs/queues.md), or paused while it polls (nothing wakes it on resume)."""
        nothing: set[str] = set()
        paused = not self._woken_on_change()
        return bool(
            self._db_call(
                "claim", lambda: queues.held_among(self.options.queues, self.database, paused), default=nothing
            )
        )

    def _wait(self, timeout: float) -> None:
        now = time.monotonic()
        timeout = min(timeout, max(0.0, self._next_heartbeat - now))
        deadlines = [r.deadline for r in self._watched if r.deadline is not None]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - now))
        if self._wake.wait(timeout):
            self._wake.clear()

    # --- database calls --------------------------------------------------------------

    @overload
    def _db_call[T](self, operation: str, fn: Callable[[], T]) -> T | None: ...
    @overload
    def _db_call[T](self, operation: str, fn: Callable[[], T], default: T) -> T: ...
    def _db_call[T](self, operation: str, fn: Callable[[], T], default: T | None = None) -> T | None:
        now = time.monotonic()
        if now < self._db_retry_at:
            return default
        try:
            result = fn()
        except DatabaseError as exc:
            metrics.DB_ERRORS.labels(operation).inc()
            self._back_off(now)
            if self._db_down_since is None:
                self._db_down_since = now
                logger.error(
                    "database error during %s: %s; backing off and retrying",
                    operation,
                    exc,
                    extra={"worker_id": self.worker_id},
                )
            try:
                self.connection.close()
            except DatabaseError:
                pass
            return default
        if self._db_down_since is not None:
            logger.warning(
                "database reachable again after %.1fs; resuming",
                now - self._db_down_since,
                extra={"worker_id": self.worker_id},
            )
            self._db_down_since = None
            self._db_backoff = 0.0
        return result

    def _back_off(self, now: float) -> None:
        self._db_backoff = min(max(self._db_backoff * 2, 0.1), self.options.max_backoff * 5, 10.0)
        self._db_retry_at = now + self._db_backoff

    def _sleep_until_db_retry(self) -> None:
        self._wait(max(0.05, self._db_retry_at - time.monotonic()))

    # --- claim and start -------------------------------------------------------------

    def _claim(self, free: int) -> list[ClaimedJob]:
        if free <= 0:
            return []
        return self._db_call("claim", lambda: self._claim_now(free), default=[])

    def _claim_now(self, free: int) -> list[ClaimedJob]:
        started = time.perf_counter()
        jobs = store.claim_jobs(
            self.connection,
            worker_id=self.worker_id,
            queues=self.options.queues,
            limit=free,
            lease_seconds=self.options.lease_seconds,
            advisory=self.options.use_advisory_locks,
        )
        metrics.CLAIM_LATENCY.observe(time.perf_counter() - started)
        return jobs

    def _start_claimed(self, jobs: list[ClaimedJob]) -> None:
        """Start every claimed job — or, once a stop was requested, release it unstarted.
        A job the release did not take (database error) is started and drains with the rest."""
        if self._draining:
            jobs = self._release_unstarted(jobs)
        for job in jobs:
            self._start(job)

    def _release_unstarted(self, jobs: list[ClaimedJob]) -> list[ClaimedJob]:
        written: dict[int, tuple[str, datetime | None]] = self._db_call(
            "release",
            lambda: store.release_jobs(
                self.connection, worker_id=self.worker_id, held=[(j.id, j.attempt) for j in jobs]
            ),
            default={},
        )
        for job in jobs:
            if job.id in written:
                self._report_release(RunningJob(job=job), *written[job.id], unstarted=True)
        return [job for job in jobs if job.id not in written]

    def _report_release(self, running: RunningJob, state: str, finished_at: Any, *, unstarted: bool = False) -> None:
        """Log (and for a cancel, count and signal) one job the release wrote."""
        if state == "cancelled":  # cancel requested before the handler saw it
            self.events.finished(
                running,
                Outcome(
                    running.job.id,
                    running.job.attempt,
                    state,
                    AttemptOutcome.CANCELLED,
                    error_class=store.RELEASED_CANCEL_ERROR_CLASS,
                    error_message=store.RELEASED_CANCEL_MESSAGE,
                    finished_at=finished_at,
                ),
                state,
            )
        elif unstarted:
            logger.info(
                "claimed as the worker began to drain: released unstarted",
                extra=self.events.extra(running.job, event="released"),
            )
        else:
            logger.warning(
                "grace period over: released back to the queue", extra=self.events.extra(running.job, event="released")
            )

    def prefetch_bound(self) -> int:
        """How many claimed jobs may wait for a slot: as many as are expected to start
        within PREFETCH_HORIZON at the handlers' running mean run time, at most
        ``prefetch_limit``; none until a handler has returned, and none for handlers
        slower than that horizon allows (a job held here is one another worker cannot
        take)."""
        mean = self._mean_duration
        if mean is None:
            return 0
        expected = self.options.concurrency * PREFETCH_HORIZON / max(mean, 1e-6)
        return min(self.options.prefetch_limit, int(expected))

    def _start(self, job: ClaimedJob) -> None:
        """Take a claimed job on: start it in a free slot, or keep it prefetched until a
        handler hands its slot over. Its attempt (timeout clock, task_started) begins
        when its handler is started, not here."""
        running = RunningJob(job=job)
        self._running.add(running)
        self.events.claimed(job)
        try:
            store.ensure_decoded(job)
            running.task, running.is_async = self._resolve(job.task_path)
        except Exception as exc:
            self._done.put((running, failure_outcome(job, exc), None))
            return
        if job.timeout_seconds:
            self._watched.add(running)  # its deadline is set when it begins
        with self._slots_lock:
            if self._free_slots > 0:
                self._free_slots -= 1
            else:
                self._ready.append(running)
                return
        self._launch(running)

    def _launch(self, running: RunningJob | None, *, via_pool: bool = False) -> None:
        """Start ``running``, which holds a slot: a sync handler on a job thread, an async
        one on the event loop (``via_pool``: through a job thread, for a caller on the
        event loop's own thread). A job that cannot be started fails its attempt and
        hands its slot on."""
        while running is not None:
            try:
                if running.is_async and not via_pool:
                    self._start_async(running)
                else:
                    self._threads.submit(running)
                return
            except Exception as exc:
                logger.exception(
                    "could not start the handler", extra=self.events.extra(running.job, event="start_failed")
                )
                outcome = failure_outcome(running.job, exc)
                running = self._hand_over(running, outcome, None)

    def _begin(self, running: RunningJob) -> None:
        """The attempt begins (on the thread starting the handler): its timeout counts
        from here, and task_started is sent."""
        running.monotonic_start = time.monotonic()
        if running.job.timeout_seconds:
            running.deadline = running.monotonic_start + running.job.timeout_seconds
            self._wake.set()  # the loop's wait may not know this deadline yet
        self.events.started(running)

    def _start_async(self, running: RunningJob) -> None:
        self._begin(running)
        future = asyncio.run_coroutine_threadsafe(run_async(running, self.worker_id), self._event_loop())
        # Never cancelled (an interrupt cancels the coroutine's task, on the loop): it is
        # done when the coroutine has finished, not before.
        future.add_done_callback(functools.partial(self._on_async_done, running))

    def _run_item(self, running: RunningJob) -> Outcome | None:
        """A job thread's item: a sync handler to run here, or an async one to start."""
        if running.is_async:
            self._start_async(running)
            return None
        if running.abandoned:
            return None  # released at shutdown before it began
        self._begin(running)
        try:
            return self._run_sync(running)
        finally:
            running.ran_for = time.monotonic() - running.monotonic_start

    def _run_sync(self, running: RunningJob) -> Outcome:
        return run_sync(running, self.worker_id)

    def _on_handler_done(
        self, running: RunningJob, outcome: Outcome | None, error: BaseException | None
    ) -> RunningJob | None:
        """On a job thread: the item returned. Returns the prefetched sync job that takes
        over the slot, for this thread to run next."""
        if running.is_async and error is None:
            return None  # an async handler started; its outcome comes from its future
        if running.abandoned and outcome is None and error is None:
            following = self._hand_over(None, None, None)  # released before it began
        else:
            following = self._hand_over(running, outcome, error)
        if following is not None and following.is_async:
            self._launch(following)
            return None
        return following

    def _hand_over(
        self, running: RunningJob | None, outcome: Outcome | None, error: BaseException | None
    ) -> RunningJob | None:
        """A handler returned (on its own thread): hand its outcome to the worker loop and
        its slot to the next prefetched job, which is returned (the caller starts it).
        The loop is woken only when there is something for it to do: the first outcome
        since it last looked (it then waits at most FLUSH_DELAY), a batch's worth, or
        nothing left running."""
        if running is not None:
            self._done.put((running, outcome, error))
        with self._slots_lock:
            following = None
            if self._ready and not self._hold_ready:
                following = self._ready.popleft()
            else:
                self._free_slots += 1
            if running is not None:
                self._uncollected += 1
            wake = (
                self._uncollected == 1
                or self._uncollected >= self._batch
                or self._free_slots == self.options.concurrency
            )
        if wake and not self._wake.is_set():  # set() takes a lock; in a burst the flag is usually up already
            self._wake.set()
        return following

    def _on_async_done(self, running: RunningJob, future: Future[Outcome]) -> None:
        """On the event loop's thread: an async handler finished."""
        running.ran_for = time.monotonic() - running.monotonic_start
        if future.cancelled():
            # Not by the worker (its interrupts reach the coroutine, which makes its own
            # outcome when it has finished): a cancellation it did not send is a cancel.
            outcome, error = failure_outcome(running.job, async_interrupt(running)), None
        else:
            try:
                outcome, error = future.result(), None
            except BaseException as exc:
                outcome, error = None, exc
        # task_started and a retry's stored result are read off the event loop.
        self._launch(self._hand_over(running, outcome, error), via_pool=True)

    def _release_prefetched(self) -> None:
        """Draining: hand the prefetched jobs (leased, never started) back to the queue at
        once. Those the release did not take (a database error) start and drain with the
        rest."""
        with self._slots_lock:
            self._hold_ready = True
            held = list(self._ready)
            self._ready.clear()
        if not held:
            return
        kept = self._release_unstarted_running(held)
        if kept:
            with self._slots_lock:
                self._ready.extendleft(reversed(kept))
                self._hold_ready = False
            while True:
                with self._slots_lock:
                    if not (self._ready and self._free_slots > 0):
                        break
                    self._free_slots -= 1
                    following = self._ready.popleft()
                self._launch(following)

    def _release_unstarted_running(self, held: list[RunningJob]) -> list[RunningJob]:
        """Release jobs this worker holds but never started; returns those not released."""
        written: dict[int, tuple[str, datetime | None]] = self._db_call(
            "release",
            lambda: store.release_jobs(self.connection, worker_id=self.worker_id, held=[r.held for r in held]),
            default={},
        )
        kept = []
        for running in held:
            if running.job.id in written:
                running.abandoned = True
                self._running.discard(running)
                self._watched.discard(running)
                self.events.unclaimed(running.job)
                self._report_release(running, *written[running.job.id], unstarted=True)
            else:
                kept.append(running)
        return kept

    def _resolve(self, task_path: str) -> tuple[Any, bool]:
        """(the task at ``task_path``, whether its handler is async), resolved once."""
        resolved = self._tasks.get(task_path)
        if resolved is None:
            task = resolve_task(task_path)
            resolved = self._tasks[task_path] = (task, asyncio.iscoroutinefunction(task.func))
        return resolved

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="taskengine-asyncio", daemon=True).start()
        return self._loop

    # --- completion ------------------------------------------------------------------

    def _collect_done(self) -> None:
        with self._slots_lock:
            self._uncollected = 0  # before draining the queue: a later hand-over wakes the loop
        while True:
            try:
                running, outcome, error = self._done.get_nowait()
            except queue.Empty:
                return
            self._running.discard(running)
            self._watched.discard(running)
            if running.ran_for is not None:
                mean = self._mean_duration
                self._mean_duration = (
                    running.ran_for if mean is None else mean + DURATION_WEIGHT * (running.ran_for - mean)
                )
            try:
                self._collected(running, outcome, error)
            except Exception:
                logger.exception(
                    "could not record a finished attempt; its lease lapses and it is recovered",
                    extra=self.events.extra(running.job),
                )

    def _collected(self, running: RunningJob, outcome: Outcome | None, error: BaseException | None) -> None:
        if running.stuck:
            self._stuck.discard(running)
            logger.warning(
                "a stuck handler returned after %.1fs; recording its outcome",
                time.monotonic() - running.monotonic_start,
                extra=self.events.extra(running.job),
            )
        self.events.collected(running)
        if running.abandoned:
            return  # released at shutdown: the job is no longer this worker's
        if outcome is None:
            outcome = failure_outcome(running.job, error or RuntimeError("no outcome"))
        self._add_pending(running, outcome)

    def _watch_handlers(self) -> None:
        """Interrupt handlers past their timeout; one that has not stopped a grace period
        after an interrupt is stuck. Python can raise in a thread only between bytecodes,
        so a sync handler blocked in C notices when that call returns; an async handler
        notices at its next await, unless it swallows the CancelledError or is blocked
        in a sync call (which blocks the event loop too)."""
        if not self._watched:
            return
        now = time.monotonic()
        for running in list(self._watched):
            if running.deadline is None or now < running.deadline:
                continue
            if running.interrupt_sent is None:
                self._interrupt(running, JobTimedOut)
                running.deadline = now + HARD_TIMEOUT_GRACE  # a sync handler not yet begun is interrupted then
                logger.warning(
                    "timed out after %ss; interrupting",
                    running.job.timeout_seconds,
                    extra=self.events.extra(running.job, event="timed_out"),
                )
            else:
                self._watched.discard(running)
                running.deadline = None
                self._mark_stuck(running)

    def _mark_stuck(self, running: RunningJob) -> None:
        """Its job stays leased here (heartbeats go on) and is not retried while the
        handler's thread or coroutine runs; its slot stays taken. Past max_stuck_threads
        the worker gives up: it drains and exits so that a new process takes its place."""
        running.stuck = True
        self._stuck.add(running)
        reason = running.interrupt_sent.__name__ if running.interrupt_sent else "interrupt"
        event = "timeout_ignored" if running.interrupt_sent is JobTimedOut else "interrupt_ignored"
        logger.error(
            "handler ignored its interrupt (%s) for %.0fs; its job stays leased and its slot taken "
            "until it returns (%d stuck, at most %d tolerated)",
            reason,
            HARD_TIMEOUT_GRACE,
            len(self._stuck),
            self.options.max_stuck_threads,
            extra=self.events.extra(running.job, event=event),
        )
        if len(self._stuck) > self.options.max_stuck_threads and not self._gave_up:
            self._gave_up = True
            logger.error(
                "more stuck handlers than --max-stuck-threads %d: draining; the worker exits %d "
                "for its supervisor to replace it",
                self.options.max_stuck_threads,
                STUCK_THREADS_EXIT_CODE,
                extra={"worker_id": self.worker_id},
            )
            self.request_stop()

    def _add_pending(self, running: RunningJob, outcome: Outcome) -> None:
        if self._completer is not None:
            self._completer.submit(running, outcome)
        else:
            self._outcomes.add(running, outcome)

    @property
    def _pending(self) -> bool:
        """Outcomes not written yet: the loop's, or held by the completer."""
        return bool(self._outcomes.pending) or (self._completer is not None and self._completer.busy())

    @property
    def processed(self) -> int:
        return self._outcomes.processed + (self._completer.processed if self._completer else 0)

    def _flush(self, claim: int = 0) -> list[ClaimedJob] | None:
        """Write the loop's pending outcomes (fenced) and, if ``claim`` > 0, claim up to that
        many jobs in the same transaction. Returns the claimed jobs, or None when the claim
        did not run (a database error, or a refused batch it rolled back with): "claimed
        nothing" must not read as "nothing is due". Database outages keep the unwritten
        outcomes for the next try; nothing raised here ends the loop."""
        if not self._outcomes.pending:
            return self._claim(claim)
        try:
            return self._db_call("finish", lambda: self._finish_then_claim(claim), default=None)
        except Exception:
            logger.exception(
                "writing %d outcomes failed; retrying after a back-off",
                len(self._outcomes.pending),
                extra={"worker_id": self.worker_id},
            )
            self._back_off(time.monotonic())
            return None

    def _finish_then_claim(self, claim: int) -> list[ClaimedJob] | None:
        return self._outcomes.write(
            self.connection,
            claim,
            queues=self.options.queues,
            lease_seconds=self.options.lease_seconds,
            advisory=self.options.use_advisory_locks,
        )

    def _on_written(self, requeued: bool) -> None:
        """On the completer's thread: wake the loop to claim retries just queued, or to
        exit once nothing runs (burst, drain)."""
        if requeued or not self._running or self._draining:
            self._wake.set()

    def _start_completer(self) -> None:
        if self.options.use_completer and Completer.suits(self.connection):
            self._completer = Completer(
                database=self.database,
                outcomes=Outcomes(self.worker_id, self.events),
                batch=lambda: self._batch,
                max_backoff=self.options.max_backoff,
                wake=self._on_written,
            )
            self._completer.start()

    def _release_remaining(self) -> None:
        with self._slots_lock:
            self._hold_ready = True
            unstarted = list(self._ready)
            self._ready.clear()
        if unstarted:
            self._release_unstarted_running(unstarted)
        # A stuck handler still runs: releasing its job would let another worker start it
        # alongside. Its lease is left to expire once this process is gone.
        candidates = [r for r in self._running if not (r.abandoned or r.stuck or r.lease_lost)]
        by_id = {r.job.id: r for r in sorted(candidates, key=lambda r: r.job.attempt)}
        held = [r.held for r in candidates]
        written: dict[int, tuple[str, datetime | None]] = self._db_call(
            "release", lambda: store.release_jobs(self.connection, worker_id=self.worker_id, held=held), default={}
        )
        for job_id, (state, finished_at) in written.items():
            by_id[job_id].abandoned = True
            self._report_release(by_id[job_id], state, finished_at)
        if len(written) < len(held):
            logger.warning(
                "%d running jobs could not be released; they recover when their leases expire",
                len(held) - len(written),
                extra={"worker_id": self.worker_id},
            )

    # --- heartbeat -------------------------------------------------------------------

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat or not self._registered:
            return
        self._next_heartbeat = now + self.options.heartbeat_seconds
        live = [r for r in self._running if not r.abandoned and not r.lease_lost]
        kept = self._db_call(
            "heartbeat",
            lambda: store.extend_leases(
                self.connection,
                worker_id=self.worker_id,
                held=[r.held for r in live],
                lease_seconds=self.options.lease_seconds,
            ),
        )
        if kept is None:
            return
        state = "draining" if self._draining else "running"
        if not self._db_call("heartbeat", lambda: heartbeats.heartbeat(self.database, self.worker_id, state), True):
            self._db_call("register", self._register)
        newest: dict[int, int] = {}  # an older attempt of a job this worker claimed again has lost its lease
        for running in live:
            newest[running.job.id] = max(running.job.attempt, newest.get(running.job.id, 0))
        for running in live:
            if running.job.id not in kept or running.job.attempt < newest[running.job.id]:
                running.lease_lost = True
                if self._withdraw(running, LeaseLost):
                    continue
                logger.warning(
                    "lease lost while running; interrupting the handler",
                    extra=self.events.extra(running.job, event="lease_lost"),
                )
                self._interrupt(running, LeaseLost)
            elif kept[running.job.id] and running.interrupt_sent is None:
                if self._withdraw(running, JobCancelled):
                    continue
                logger.info(
                    "cancellation requested; interrupting the handler",
                    extra=self.events.extra(running.job, event="cancel_requested"),
                )
                self._interrupt(running, JobCancelled)

    def _withdraw(self, running: RunningJob, reason: type[JobInterrupted]) -> bool:
        """A prefetched job lost its lease or was cancelled before it started: it never
        starts, and its attempt ends as ``reason`` (written fenced: a lost lease's outcome
        is discarded). False when the job has started (or is not prefetched)."""
        with self._slots_lock:
            try:
                self._ready.remove(running)
            except ValueError:
                return False
        running.interrupt_sent = reason
        logger.info(
            "%s before it started; it is not started",
            "lease lost" if reason is LeaseLost else "cancellation requested",
            extra=self.events.extra(running.job, event="withdrawn"),
        )
        self._done.put((running, failure_outcome(running.job, reason()), None))
        return True

    def _interrupt(self, running: RunningJob, reason: type[JobInterrupted]) -> None:
        """Ask the handler to stop. Its outcome is recorded when it has stopped; until
        then it keeps its slot, and if it has not stopped within HARD_TIMEOUT_GRACE it
        counts as stuck."""
        interrupt = interrupt_async if running.is_async else interrupt_thread
        if interrupt(running, reason):
            running.deadline = time.monotonic() + HARD_TIMEOUT_GRACE  # then it counts as stuck
            self._watched.add(running)
