"""The runworker loop: claim → run → heartbeat → finish.

One process, ``concurrency`` execution slots (runtime/slots.py: sync handlers on a
thread pool, async handlers on one event loop thread). The main thread talks to the
database for the engine (claims, heartbeats, releases), in short statements, never
around a handler (runtime/db_calls.py: an error backs the loop off, never ends it); on
PostgreSQL, with TASKENGINE["COMPLETER"] (the default), the fenced finishes are written by
the completer (runtime/completer.py), a thread with its own connection, so claims never
wait for them.

The loop claims and completes in batches, each on its own cadence: a batch of finished
attempts is written when half the held jobs' worth has returned, when nothing else
runs, or FLUSH_DELAY after the first — by the completer when it is on, or (COMPLETER =
False, and SQLite) by the loop, with the next claim riding in the same statement
(PostgreSQL: finish_and_claim, one round trip and one commit) whenever there is room.
Between batches the loop sleeps (runtime/idle.py when there is nothing to claim): a
returning handler wakes it only for the first outcome since it last looked, a batch's
worth, or nothing left running. Every heartbeat renews the leases of the jobs held and
hands lost leases and cancellations to runtime/supervision.py, which also times
handlers out and gives up on stuck ones.

Invariants:
- A job is claimed only into a free slot or the prefetch buffer: a claim asks for at
  most the free slots plus the prefetch bound (``prefetch_bound()``: as many jobs as
  are expected to start within PREFETCH_HORIZON at the handlers' mean run time, at most
  ``prefetch_limit``; none before a handler has returned or for slow handlers).
- Every outcome is written with a fenced UPDATE (runtime/completer.py); if this worker
  lost the lease, the write changes nothing and the result is discarded with a warning.
  Nothing is marked done that did not run here; nothing raised while recording an
  outcome ends the loop.
- Running jobs are tracked per attempt (RunningJob identity), never per job id: a
  retry this worker claimed while an earlier attempt's thread still runs is its own entry.
- SIGTERM (or SIGINT): stop claiming, let running jobs finish within the grace period,
  release the rest (runtime/release.py), mark the worker stopped, exit 0
  (STUCK_THREADS_EXIT_CODE with stuck threads). A second signal exits at once (leases
  then expire and recovery hands the jobs back).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol, Unpack

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine import store
from taskengine.db import store_for
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.observability import metrics
from taskengine.ops import queue_settings
from taskengine.runtime import events, heartbeats
from taskengine.runtime.db_calls import DatabaseCalls
from taskengine.runtime.execution import RunningJob, run_sync
from taskengine.runtime.finishing import Finishing
from taskengine.runtime.idle import IdleWaits
from taskengine.runtime.listener import Listener
from taskengine.runtime.release import Releases
from taskengine.runtime.slots import Slots
from taskengine.runtime.stop_signals import StopSignals
from taskengine.runtime.supervision import STUCK_THREADS_EXIT_CODE, Supervision
from taskengine.runtime.worker_options import WorkerArguments, WorkerOptions

logger = logging.getLogger("taskengine.worker")

PREFETCH_HORIZON = 0.02  # jobs are prefetched only as many as are expected to start within this (seconds)


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
        self.events = events.JobEvents(self.worker_id)
        self._wake = threading.Event()
        self._running: set[RunningJob] = set()  # one entry per attempt (identity), never per job id
        self._watched: set[RunningJob] = set()  # jobs with a deadline: a timeout or an interrupt's grace
        self._slots = Slots(
            concurrency=options.concurrency,
            worker_id=self.worker_id,
            job_events=self.events,
            running=self._running,
            watched=self._watched,
            wake=self._wake,
            run_sync=self._run_sync,
        )
        self._supervision = Supervision(self._slots, options.max_stuck_threads, give_up=self.request_stop)
        self._db = DatabaseCalls(self.database, self.worker_id, options.max_backoff)
        self._releases = Releases(self._slots, self._db, lambda: self.connection)
        self._idle = IdleWaits(
            queue_names=options.queues,
            database=self.database,
            backoff_base=options.backoff_base,
            max_backoff=options.max_backoff,
            db=self._db,
            woken_on_change=self._woken_on_change,
        )
        self._finishing = Finishing(self._slots, self._supervision)
        self._stop_signals = StopSignals(self.worker_id, options.shutdown_grace, self._begin_drain, self._wake)
        self._draining = False
        self._drain_deadline = 0.0
        self._next_heartbeat = 0.0
        self._registered = False
        self._listener: Listener | None = None
        self.stuck_threads = False  # handler threads were still running at exit
        self.exit_code = 0

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        self._stop_signals.install()

    def request_stop(self) -> None:
        self._begin_drain()
        self._wake.set()

    def _begin_drain(self) -> None:
        if not self._draining:
            self._slots.hold = True  # a plain assignment: this may run in a signal handler
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
        with store.worker_connection(self.connection):  # the loop's: no handler runs on it
            try:
                self._start_listener()
                while not self._registered and not self._draining:
                    self._db.call("register", self._register)
                    if not self._registered:
                        self._wait(max(0.05, self._db.retry_at - time.monotonic()))
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

    def _woken_on_change(self) -> bool:
        """True while a LISTEN connection wakes this worker on enqueue and on resume."""
        return self._listener is not None and self._listener.connected.is_set()

    def _loop_until_drained(self) -> None:
        while True:
            self._finishing.collect()
            self._supervision.watch()
            if self._draining and self._slots.ready:
                self._releases.prefetched()
            # Room for the slots not taken and the prefetch bound; a stuck thread keeps its slot.
            bound = self.prefetch_bound()
            free = self.options.concurrency + bound - len(self._running)
            batch = self._slots.batch = max(1, (self.options.concurrency + bound) // 2)
            claim_due = not self._draining and (free >= batch or (free > 0 and not self._running))
            if self._finishing.due(self._draining):
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
                if len(self._running) == len(self._supervision.stuck) and not self._finishing.pending:
                    return  # stuck handlers had their grace; they are not waited for
                if time.monotonic() >= self._drain_deadline:
                    self._releases.remaining()
                    return
                self._wait(0.05)
                continue
            if claimed:
                self._idle.reset()
                continue
            if not claim_due:
                self._wait(self._finishing.wait(self._db.retry_at, self.options.max_backoff))
            elif not self._wait_to_claim(claimed):
                return

    def _wait_to_claim(self, claimed: list[ClaimedJob] | None) -> bool:
        """Slots were free and the claim returned nothing: claim again at once, or wait
        for work. False when a burst worker is done."""
        if claimed is None and time.monotonic() >= self._db.retry_at:
            return True  # the claim did not run (its batch was refused): claim again now
        # Read before asking for queued retries: a completer that held nothing here writes
        # no retry after it, while one that held a write can finish it between two reads
        # (read the other way round, a burst worker could exit with that retry due).
        pending = self._finishing.pending
        if self._finishing.completer is not None and self._finishing.completer.take_requeued():
            return True  # the completer queued retries since this claim's snapshot: claim again
        if not self._running:
            if self.options.burst and not pending and self._db.down_since is None:
                logger.info("burst: nothing due, exiting", extra={"worker_id": self.worker_id})
                return False
            self._wait(self._idle.next_wait())
        elif not self._finishing.outcomes.pending:  # free slots, nothing to claim: poll for new work
            self._wait(self._idle.poll_wait(self.options.max_backoff))
        else:
            self._wait(self._finishing.wait(self._db.retry_at, self.options.max_backoff))
        return True

    def _shutdown(self) -> None:
        for service in self.services:
            try:
                service.stop()
            except Exception:
                logger.exception("stopping service %r failed", service)
        if self._listener:
            self._listener.stop()
        self._finishing.collect()
        self._flush()
        if self._finishing.completer is not None:
            self._finishing.completer.stop()  # writes what it holds, then closes its connection
        stuck = self._supervision.stuck
        if stuck or self._supervision.gave_up:
            self.exit_code = STUCK_THREADS_EXIT_CODE
        if stuck:
            # A stopped worker's jobs are recovered at once, while this process (and the
            # stuck handlers) may still be running: leave the row, and the leases, to expire.
            logger.error(
                "exiting with %d stuck handlers; their jobs stay leased until the leases expire",
                len(stuck),
                extra={"worker_id": self.worker_id},
            )
        elif self._registered:
            self._db.call("stop", lambda: heartbeats.mark_stopped(self.database, self.worker_id))
        self.stuck_threads = bool(self._running)
        self._slots.threads.shutdown(wait=not self.stuck_threads)
        loop = self._slots.loop
        if loop is not None and not any(r.is_async for r in self._running):
            # Coroutines still running are left to run on, like handler threads still
            # running (the process's exit ends both): stopping the loop would freeze them.
            loop.call_soon_threadsafe(loop.stop)
        logger.info("worker stopped: %d attempts processed", self.processed, extra={"worker_id": self.worker_id})
        connections.close_all()  # this thread's connections; job threads close theirs on exit

    def _wait(self, timeout: float) -> None:
        now = time.monotonic()
        timeout = min(timeout, max(0.0, self._next_heartbeat - now))
        deadlines = [r.deadline for r in self._watched if r.deadline is not None]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - now))
        if self._wake.wait(timeout):
            self._wake.clear()

    # --- claim and start -------------------------------------------------------------

    def _claim(self, free: int) -> list[ClaimedJob]:
        if free <= 0:
            return []
        return self._db.call("claim", lambda: self._claim_now(free), default=[])

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
            jobs = self._releases.claimed(jobs)
        start = self._slots.start
        for job in jobs:
            start(job)

    def prefetch_bound(self) -> int:
        """How many claimed jobs may wait for a slot: as many as are expected to start
        within PREFETCH_HORIZON at the handlers' running mean run time, at most
        ``prefetch_limit``; none until a handler has returned, and none for handlers
        slower than that horizon allows (a job held here is one another worker cannot
        take)."""
        mean = self._finishing.mean_duration
        if mean is None:
            return 0
        expected = self.options.concurrency * PREFETCH_HORIZON / max(mean, 1e-6)
        return min(self.options.prefetch_limit, int(expected))

    def _run_sync(self, running: RunningJob) -> Outcome:
        return run_sync(running, self.worker_id)

    # --- completion ------------------------------------------------------------------

    @property
    def processed(self) -> int:
        return self._finishing.processed

    def _flush(self, claim: int = 0) -> list[ClaimedJob] | None:
        """Write the loop's pending outcomes (fenced) and, if ``claim`` > 0, claim up to that
        many jobs in the same transaction. Returns the claimed jobs, or None when the claim
        did not run (a database error, or a refused batch it rolled back with): "claimed
        nothing" must not read as "nothing is due". Database outages keep the unwritten
        outcomes for the next try; nothing raised here ends the loop."""
        if not self._finishing.outcomes.pending:
            return self._claim(claim)
        try:
            return self._db.call("finish", lambda: self._finish_then_claim(claim), default=None)
        except Exception:
            logger.exception(
                "writing %d outcomes failed; retrying after a back-off",
                len(self._finishing.outcomes.pending),
                extra={"worker_id": self.worker_id},
            )
            self._db.back_off(time.monotonic())
            return None

    def _finish_then_claim(self, claim: int) -> list[ClaimedJob] | None:
        return self._finishing.outcomes.write(
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
        if self.options.use_completer:
            self._finishing.start_completer(self.connection, self.database, self.options.max_backoff, self._on_written)

    # --- heartbeat -------------------------------------------------------------------

    def _heartbeat_if_due(self) -> None:
        """Renew the held jobs' leases and the worker row's heartbeat; a lost lease or a
        cancellation request goes to the supervision."""
        now = time.monotonic()
        if now < self._next_heartbeat or not self._registered:
            return
        self._next_heartbeat = now + self.options.heartbeat_seconds
        live = [r for r in self._running if not r.abandoned and not r.lease_lost]
        held = [r.held for r in live]
        kept = self._db.call(
            "heartbeat",
            lambda: store.extend_leases(
                self.connection, worker_id=self.worker_id, held=held, lease_seconds=self.options.lease_seconds
            ),
        )
        if kept is None:
            return
        state = "draining" if self._draining else "running"
        if not self._db.call("heartbeat", lambda: heartbeats.heartbeat(self.database, self.worker_id, state), True):
            self._db.call("register", self._register)
        self._supervision.leases_renewed(live, kept)
