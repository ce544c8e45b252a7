"""The runworker loop: claim → run → heartbeat → finish.

One process, ``concurrency`` execution slots: sync handlers on a thread pool, async
handlers on one event loop thread. The main thread alone talks to the database for the
engine (claims, heartbeats, fenced finishes, releases), in short statements, never
around a handler.

Invariants:
- A job is claimed only into a free slot, so a lease never waits for a thread.
- Every outcome is written with a fenced UPDATE; if this worker lost the lease (it
  expired, or recovery gave the job to someone else), the write changes nothing and the
  result is discarded with a warning. Nothing is marked done that did not run here.
- Database errors never kill the loop: the worker logs once, backs off, reconnects and
  resumes; outcomes not yet written wait in memory (their leases may lapse meanwhile, in
  which case the jobs are recovered and run again — at-least-once).
- SIGTERM (or SIGINT): stop claiming, let running jobs finish within the grace period,
  release the rest, mark the worker stopped, exit 0. A second signal exits at once
  (leases then expire and recovery hands the jobs back).
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from django.db import Error as DatabaseError
from django.db import connections, transaction

from . import events, metrics, registry, store
from .conf import engine_settings
from .execution import (
    JobCancelled,
    JobInterrupted,
    JobTimedOut,
    LeaseLost,
    RunningJob,
    TaskNotFound,
    async_interrupt,
    failure_outcome,
    interrupt_thread,
    resolve_task,
    run_async,
    run_sync,
)
from .listener import Listener
from .pool import JobThreads
from .store import Outcome

logger = logging.getLogger("taskengine.worker")

HARD_TIMEOUT_GRACE = 2.0  # seconds a timed-out sync handler gets to notice the interrupt
FLUSH_DELAY = 0.005  # longest an outcome waits to be written with others (seconds)


class Service(Protocol):
    """A background service the worker starts after registering (e.g. leadership)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class Worker:
    def __init__(
        self,
        *,
        queues: Sequence[str],
        concurrency: int = 8,
        lease_seconds: float | None = None,
        backoff_base: float | None = None,
        max_backoff: float | None = None,
        burst: bool = False,
        worker_id: str | None = None,
        database: str | None = None,
        shutdown_grace: float | None = None,
        heartbeat_seconds: float | None = None,
        use_advisory_locks: bool | None = None,
        poll_only: bool | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        s = engine_settings
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queues = list(dict.fromkeys(queues))
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        self.concurrency = concurrency
        self.lease_seconds = float(lease_seconds or s.LEASE_SECONDS)
        self.backoff_base = float(backoff_base if backoff_base is not None else s.POLL_BACKOFF_BASE)
        self.max_backoff = float(max_backoff if max_backoff is not None else s.POLL_MAX_BACKOFF)
        self.burst = burst
        self.worker_id = worker_id or registry.new_worker_id()
        self.database = database or s.DATABASE
        self.shutdown_grace = float(shutdown_grace if shutdown_grace is not None else s.SHUTDOWN_GRACE_SECONDS)
        self.heartbeat_seconds = float(heartbeat_seconds or min(s.HEARTBEAT_SECONDS, self.lease_seconds / 3))
        self.use_advisory_locks = s.USE_ADVISORY_LOCKS if use_advisory_locks is None else use_advisory_locks
        self.poll_only = s.POLL_ONLY if poll_only is None else poll_only
        self.services = list(services)

        self._wake = threading.Event()
        self._done: queue.SimpleQueue[tuple[RunningJob, Outcome | None, BaseException | None]] = queue.SimpleQueue()
        self._running: dict[int, RunningJob] = {}
        self._timed: dict[int, RunningJob] = {}  # the running sync jobs with a timeout deadline
        self._pending: list[tuple[RunningJob, Outcome]] = []
        self._pending_since = 0.0
        self._batch = max(1, concurrency // 2)
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
        self._threads = JobThreads(concurrency, self._run_sync, self._on_handler_done)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Listener | None = None
        self.events = events.JobEvents(self.worker_id)
        self.processed = 0
        self.stuck_threads = False

    @property
    def connection(self):
        return connections[self.database]

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("received %s: draining (no new claims, %.0fs grace)",
                        signal.Signals(signum).name, self.shutdown_grace, extra={"worker_id": self.worker_id})
            self.request_stop()
        else:
            logger.warning("second signal: exiting now; running jobs are recovered when their leases expire",
                           extra={"worker_id": self.worker_id})
            for handler in logging.getLogger("taskengine").handlers + logging.getLogger().handlers:
                handler.flush()
            os._exit(1)

    def request_stop(self) -> None:
        if not self._draining:
            self._draining = True
            self._drain_deadline = time.monotonic() + self.shutdown_grace
        self._wake.set()

    def run(self) -> int:
        """Run until drained (SIGTERM, request_stop, or --burst with nothing due)."""
        logger.info("worker starting: queues=%s concurrency=%d lease=%.0fs claim=%s wake=%s",
                    ",".join(self.queues), self.concurrency, self.lease_seconds,
                    "advisory" if self.use_advisory_locks else "skip-locked",
                    "poll" if self.poll_only or self.connection.vendor != "postgresql" else "listen",
                    extra={"worker_id": self.worker_id})
        metrics.WORKER_SLOTS.set(self.concurrency)
        try:
            self._start_listener()
            while not self._registered and not self._draining:
                self._db_call("register", self._register)
                if not self._registered:
                    self._sleep_until_db_retry()
            for service in self.services:
                service.start()
            self._loop_until_drained()
        finally:
            self._shutdown()
        return 0

    def _register(self) -> None:
        registry.register(self.database, self.worker_id, self.queues, self.concurrency)
        self._registered = True
        self._next_heartbeat = time.monotonic() + self.heartbeat_seconds

    def _start_listener(self) -> None:
        if self.poll_only or self.connection.vendor != "postgresql":
            return
        self._listener = Listener(self.connection.get_connection_params(), set(self.queues), self._wake)
        self._listener.start()

    def _loop_until_drained(self) -> None:
        while True:
            self._collect_done()
            self._enforce_timeouts()
            free = self.concurrency - len(self._running)
            claim_due = not self._draining and (free >= self._batch or (free > 0 and not self._running))
            if self._flush_due():
                # Write the finished batch and, when slots are free, claim the next one
                # in the same transaction: one commit (one WAL flush) per batch.
                claimed = self._flush(claim=free if claim_due else 0)
            else:
                claimed = self._claim(free) if claim_due else None
            self._heartbeat_if_due()
            if self._draining:
                if not self._running and not self._pending:
                    return
                if time.monotonic() >= self._drain_deadline:
                    self._release_remaining()
                    return
                self._wait(0.05)
                continue
            for job in claimed or ():
                self._start(job)
            if claimed:
                self._idle_rounds = 0
                continue
            if claim_due and not self._running:
                if self.burst and not self._pending and self._db_down_since is None:
                    logger.info("burst: nothing due, exiting", extra={"worker_id": self.worker_id})
                    return
                self._wait(self._idle_wait())
                continue
            self._wait(self._flush_wait())

    def _flush_due(self) -> bool:
        """Outcomes are written in batches: when half the slots have finished, when
        nothing else is running, or when the oldest is FLUSH_DELAY old."""
        if not self._pending:
            return False
        return (len(self._pending) >= self._batch or not self._running or self._draining
                or time.monotonic() - self._pending_since >= FLUSH_DELAY)

    def _flush_wait(self) -> float:
        if not self._pending:
            return self.max_backoff
        return max(0.0, self._pending_since + FLUSH_DELAY - time.monotonic())

    def _shutdown(self) -> None:
        for service in self.services:
            try:
                service.stop()
            except Exception:  # noqa: BLE001
                logger.exception("stopping service %r failed", service)
        if self._listener:
            self._listener.stop()
        self._collect_done()
        self._flush()
        if self._registered:
            self._db_call("stop", lambda: registry.mark_stopped(self.database, self.worker_id))
        self.stuck_threads = bool(self._running)
        self._threads.shutdown(wait=not self.stuck_threads)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        logger.info("worker stopped: %d attempts processed", self.processed, extra={"worker_id": self.worker_id})
        connections.close_all()  # this thread's connections; job threads close theirs on exit

    # --- waiting ---------------------------------------------------------------------

    def _idle_wait(self) -> float:
        wait = min(self.max_backoff, self.backoff_base * (2 ** self._idle_rounds))
        self._idle_rounds = min(self._idle_rounds + 1, 30)
        return wait

    def _wait(self, timeout: float) -> None:
        now = time.monotonic()
        timeout = min(timeout, max(0.0, self._next_heartbeat - now))
        deadlines = [r.deadline for r in self._timed.values() if r.deadline is not None]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - now))
        if self._wake.wait(timeout):
            self._wake.clear()

    # --- database calls --------------------------------------------------------------

    def _db_call(self, operation: str, fn, default: Any = None) -> Any:
        now = time.monotonic()
        if now < self._db_retry_at:
            return default
        try:
            result = fn()
        except DatabaseError as exc:
            metrics.DB_ERRORS.labels(operation).inc()
            self._db_backoff = min(max(self._db_backoff * 2, 0.1), self.max_backoff * 5, 10.0)
            self._db_retry_at = now + self._db_backoff
            if self._db_down_since is None:
                self._db_down_since = now
                logger.error("database error during %s: %s; backing off and retrying", operation, exc,
                             extra={"worker_id": self.worker_id})
            try:
                self.connection.close()
            except DatabaseError:
                pass
            return default
        if self._db_down_since is not None:
            logger.warning("database reachable again after %.1fs; resuming", now - self._db_down_since,
                           extra={"worker_id": self.worker_id})
            self._db_down_since = None
            self._db_backoff = 0.0
        return result

    def _sleep_until_db_retry(self) -> None:
        self._wait(max(0.05, self._db_retry_at - time.monotonic()))

    # --- claim and start -------------------------------------------------------------

    def _claim(self, free: int) -> list[store.ClaimedJob]:
        if free <= 0:
            return []
        return self._db_call("claim", lambda: self._claim_now(free), default=[])

    def _claim_now(self, free: int) -> list[store.ClaimedJob]:
        started = time.perf_counter()
        jobs = store.claim_jobs(self.connection, worker_id=self.worker_id, queues=self.queues,
                                limit=free, lease_seconds=self.lease_seconds,
                                advisory=self.use_advisory_locks)
        metrics.CLAIM_LATENCY.observe(time.perf_counter() - started)
        return jobs

    def _start(self, job: store.ClaimedJob) -> None:
        running = RunningJob(job=job)
        self._running[job.id] = running
        self.events.claimed(job)
        try:
            running.task, is_async = self._resolve(job.task_path)
        except TaskNotFound as exc:
            self._done.put((running, failure_outcome(job, exc), None))
            return
        self.events.started(running)
        if is_async:
            running.is_async = True
            future = asyncio.run_coroutine_threadsafe(run_async(running, self.worker_id), self._event_loop())
            running.future = future
            future.add_done_callback(lambda f, r=running: self._on_async_done(r, f))
        else:
            if job.timeout_seconds:
                running.deadline = running.monotonic_start + job.timeout_seconds
                self._timed[job.id] = running
            self._threads.submit(running)

    def _run_sync(self, running: RunningJob) -> Outcome:
        return run_sync(running, self.worker_id)

    def _on_handler_done(self, running: RunningJob, outcome: Outcome | None, error: BaseException | None) -> None:
        """On the handler's thread (a job thread or the event loop's): hand the outcome
        to the worker loop."""
        self._done.put((running, outcome, error))
        if not self._wake.is_set():  # set() takes a lock; in a burst the flag is usually up already
            self._wake.set()

    def _on_async_done(self, running: RunningJob, future: Future) -> None:
        if future.cancelled():
            # _interrupt cancelled this future: the coroutine's own outcome never reaches
            # it, so the interrupt's reason (cancel, lost lease) is the outcome.
            self._on_handler_done(running, failure_outcome(running.job, async_interrupt(running)), None)
            return
        try:
            outcome, error = future.result(), None
        except BaseException as exc:  # noqa: BLE001 - a bug in the runner
            outcome, error = None, exc
        self._on_handler_done(running, outcome, error)

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
        while True:
            try:
                running, outcome, error = self._done.get_nowait()
            except queue.Empty:
                return
            self._running.pop(running.job.id, None)
            self._timed.pop(running.job.id, None)
            self.events.collected(running)
            if running.abandoned:
                continue  # its timeout outcome was already written
            if outcome is None:
                outcome = failure_outcome(running.job, error or RuntimeError("no outcome"))
            self._add_pending(running, outcome)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for running in list(self._timed.values()):
            if running.deadline is None or now < running.deadline or running.abandoned:
                continue
            if running.interrupt_sent is None:
                interrupt_thread(running, JobTimedOut)
                running.deadline = now + HARD_TIMEOUT_GRACE
                logger.warning("timed out after %ss; interrupting", running.job.timeout_seconds,
                               extra=self.events.extra(running.job, event="timed_out"))
            else:
                # The handler is stuck in C code and ignores the interrupt: record the
                # timeout now; its slot stays taken until the thread returns.
                running.abandoned = True
                running.deadline = None
                exc = JobTimedOut(f"timed out after {running.job.timeout_seconds}s (handler did not stop)")
                self._add_pending(running, failure_outcome(running.job, exc))
                logger.error("handler ignored its timeout; slot held until it returns",
                             extra=self.events.extra(running.job, event="timeout_ignored"))

    def _add_pending(self, running: RunningJob, outcome: Outcome) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append((running, outcome))

    def _flush(self, claim: int = 0) -> list[store.ClaimedJob]:
        """Write pending outcomes (fenced) and, if ``claim`` > 0, claim up to that many
        jobs in the same transaction. Returns the claimed jobs."""
        if not self._pending:
            return self._claim(claim)
        batch = self._pending
        outcomes = [o for _, o in batch]

        def finish_then_claim() -> tuple[dict, list[store.ClaimedJob]]:
            with transaction.atomic(using=self.database):
                won = store.finish_jobs(self.connection, worker_id=self.worker_id, outcomes=outcomes)
                return won, (self._claim_now(claim) if claim > 0 else [])

        result = self._db_call("finish", finish_then_claim)
        if result is None:
            return []  # database down: keep the outcomes for the next try
        won, claimed = result
        self._pending = []
        for running, outcome in batch:
            self.processed += 1
            state, finished_at = won.get(outcome.job_id, (None, None))
            outcome.finished_at = finished_at
            self.events.finished(running, outcome, state)
        return claimed

    def _release_remaining(self) -> None:
        held = [r.held for r in self._running.values() if not r.abandoned]
        released = self._db_call(
            "release", lambda: store.release_jobs(self.connection, worker_id=self.worker_id, held=held), default=[])
        for job_id in released:
            logger.warning("grace period over: released back to the queue",
                           extra=self.events.extra(self._running[job_id].job, event="released"))
            self._running[job_id].abandoned = True
        if len(released) < len(held):
            logger.warning("%d running jobs could not be released; they recover when their leases expire",
                           len(held) - len(released), extra={"worker_id": self.worker_id})

    # --- heartbeat -------------------------------------------------------------------

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat or not self._registered:
            return
        self._next_heartbeat = now + self.heartbeat_seconds
        live = [r for r in self._running.values() if not r.abandoned and not r.lease_lost]
        kept = self._db_call("heartbeat", lambda: store.extend_leases(
            self.connection, worker_id=self.worker_id, held=[r.held for r in live],
            lease_seconds=self.lease_seconds))
        if kept is None:
            return
        state = "draining" if self._draining else "running"
        if not self._db_call("heartbeat", lambda: registry.heartbeat(self.database, self.worker_id, state), True):
            self._db_call("register", self._register)
        for running in live:
            if running.job.id not in kept:
                running.lease_lost = True
                logger.warning("lease lost while running; interrupting the handler",
                               extra=self.events.extra(running.job, event="lease_lost"))
                self._interrupt(running, LeaseLost)
            elif kept[running.job.id] and running.interrupt_sent is None:
                logger.info("cancellation requested; interrupting the handler",
                            extra=self.events.extra(running.job, event="cancel_requested"))
                self._interrupt(running, JobCancelled)

    def _interrupt(self, running: RunningJob, reason: type[JobInterrupted]) -> None:
        if running.is_async:
            running.interrupt_sent = reason
            running.future.cancel()
        else:
            interrupt_thread(running, reason)
