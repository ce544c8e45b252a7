"""Writing finished attempts: the fenced finish writes, and the completer thread.

``Outcomes`` holds the outcomes not yet written and writes them, fenced (a write
changes a row only where ``locked_by``, the attempt and a live lease still match; an
outcome whose fence is gone is reported as a lost lease and discarded). A batch the
database *refuses* (a data error, a value the driver cannot encode) is written in halves
until the bad outcome is alone, which then fails with the reason
(execution.unstorable_outcome); one the database refuses whatever is written for it is
dropped and left to lease recovery. Connection-level failures are raised for the caller
to retry: the unwritten outcomes stay pending.

``Completer`` (PostgreSQL): a thread of the worker with its own database connection
(Django's connections are per thread) that writes the outcomes the worker loop hands it,
in batches on its own cadence — a batch's worth, or FLUSH_DELAY after the first — while
the loop claims and prefetches on the main connection. The loop's claim no longer waits
for the finishes' round trip, nor the job threads for the claim. Outages: it backs off
and retries like the loop (nothing raised while recording an outcome ends it). Stop:
it writes what it holds (one more try if the database is down), closes its connection
and ends; outcomes unwritten then — or when the process is killed — are lost, and their
jobs are recovered when their leases lapse, as for any worker that dies. SQLite has one
writer: its workers write outcomes on the loop's connection (``Outcomes`` alone).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import Error as DatabaseError
from django.db import InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine import store
from taskengine.db import store_for
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.observability import metrics
from taskengine.runtime import events
from taskengine.runtime.execution import RunningJob, unstorable_outcome

logger = logging.getLogger("taskengine.worker")

FLUSH_DELAY = 0.005  # longest an outcome waits to be written with others (seconds)

Won = dict[int, tuple[str, datetime | None]]


def database_unreachable(exc: BaseException) -> bool:
    """A connection-level failure (outage, restart, failover, lock or statement timeout):
    retry the same write later. Anything else raised by a write is about what it wrote."""
    return isinstance(exc, (OperationalError, InterfaceError))


class Outcomes:
    """Outcomes waiting to be written, and their fenced writes (one thread's)."""

    def __init__(self, worker_id: str, job_events: events.JobEvents) -> None:
        self.worker_id = worker_id
        self.events = job_events
        self.pending: list[tuple[RunningJob, Outcome]] = []
        self.since = 0.0  # when the oldest pending outcome was added (monotonic)
        self.processed = 0
        self.requeued = False  # a written outcome queued a retry since the flag was cleared

    def add(self, running: RunningJob, outcome: Outcome) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((running, outcome))

    def write(self, connection: BaseDatabaseWrapper, claim: int = 0, **args: Any) -> list[ClaimedJob] | None:
        """Write the pending outcomes and, if ``claim`` > 0, claim up to that many jobs in
        the same statement (``args``: the claim's). Returns the claimed jobs, or None when
        the claim did not run or its "nothing" is not to be trusted."""
        batch = list(self.pending)
        try:
            started = time.perf_counter()
            if claim > 0:
                won, claimed = store.finish_and_claim(
                    connection, worker_id=self.worker_id, outcomes=[o for _, o in batch], limit=claim, **args
                )
                metrics.CLAIM_LATENCY.observe(time.perf_counter() - started)
            else:
                won, claimed = (
                    store.finish_jobs(connection, worker_id=self.worker_id, outcomes=[o for _, o in batch]),
                    [],
                )
        except Exception as exc:
            if database_unreachable(exc):
                raise
            logger.warning(
                "the database refused a batch of %d outcomes (%s: %s); writing it in parts",
                len(batch),
                type(exc).__name__,
                exc,
                extra={"worker_id": self.worker_id},
            )
            self._isolate(connection, batch)
            return None  # the claim rolled back with the batch; the next round claims
        requeued = self._written(batch, won)
        if not claimed and claim > 0 and requeued:
            # The claim saw the statement's snapshot, without the retries this batch just
            # queued: "claimed nothing" does not mean nothing is due. Claim again now.
            return None
        return claimed

    def _isolate(self, connection: BaseDatabaseWrapper, batch: list[tuple[RunningJob, Outcome]]) -> None:
        """Write ``batch`` in halves until each refused outcome is alone, then write a
        failure of that attempt naming the refusal in its place. Each part is reported as
        it commits, so an outage midway keeps only the unwritten ones pending."""
        parts = [batch]
        while parts:
            part = parts.pop()
            try:
                won = store.finish_jobs(connection, worker_id=self.worker_id, outcomes=[o for _, o in part])
            except Exception as exc:
                if database_unreachable(exc):
                    raise
                if len(part) > 1:
                    middle = len(part) // 2
                    parts += [part[middle:], part[:middle]]
                    continue
                [(running, refused)] = part
                logger.error(
                    "the database cannot store this attempt's outcome (%s: %s); the attempt fails instead",
                    type(exc).__name__,
                    exc,
                    extra=self.events.extra(running.job, event="outcome_refused"),
                )
                part = [(running, unstorable_outcome(running.job, refused, exc))]
                try:
                    won = store.finish_jobs(connection, worker_id=self.worker_id, outcomes=[part[0][1]])
                except Exception as again:
                    if database_unreachable(again):
                        raise
                    self._drop_unwritable(running, again)
                    continue
            self._written(part, won)

    def _drop_unwritable(self, running: RunningJob, exc: BaseException) -> None:
        """The database refuses this attempt whatever is written for it (a project's
        CHECK constraint or trigger on the row): keeping the outcome would hold every
        later batch, and the claims riding in it, hostage. It is dropped; the job stays
        leased to this worker until the lease lapses and recovery takes it."""
        logger.error(
            "the database refuses any outcome of this attempt (%s: %s); it is left to lease recovery",
            type(exc).__name__,
            exc,
            extra=self.events.extra(running.job, event="outcome_dropped"),
        )
        self.pending = [entry for entry in self.pending if entry[0] is not running]

    def _written(self, part: list[tuple[RunningJob, Outcome]], won: Won) -> bool:
        """``part`` is written: drop it from the pending outcomes and report each one.
        True when one of them queued a retry."""
        if len(part) == len(self.pending):
            self.pending = []
        else:
            done = {running for running, _ in part}
            self.pending = [entry for entry in self.pending if entry[0] not in done]
        newest: dict[int, int] = {}  # only a job's newest attempt can have won (attempts only grow)
        for _, outcome in part:
            newest[outcome.job_id] = max(outcome.attempt, newest.get(outcome.job_id, 0))
        requeued = False
        for running, outcome in part:
            self.processed += 1
            won_row = won.get(outcome.job_id) if outcome.attempt == newest[outcome.job_id] else None
            state, outcome.finished_at = won_row or (None, None)
            requeued = requeued or state == "queued"
            try:
                self.events.finished(running, outcome, state)
            except Exception:
                logger.exception("reporting a written outcome failed", extra=self.events.extra(running.job))
        self.requeued = self.requeued or requeued
        return requeued


class Completer:
    """The worker's outcome writer on a thread (and database connection) of its own."""

    def __init__(
        self,
        *,
        database: str,
        outcomes: Outcomes,
        batch: Callable[[], int],
        max_backoff: float,
        wake: Callable[[bool], None],
    ) -> None:
        self.database = database
        self.outcomes = outcomes  # this thread's alone once started
        self._batch = batch
        self._max_backoff = max_backoff
        self._wake_loop = wake
        self._inbox: queue.SimpleQueue[tuple[RunningJob, Outcome] | None] = queue.SimpleQueue()
        self._held = 0  # handed over and not yet written or dropped (under _lock)
        self._lock = threading.Lock()
        self._requeued = False  # under _lock
        self._stopping = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="taskengine-completer", daemon=True)

    @staticmethod
    def suits(connection: BaseDatabaseWrapper) -> bool:
        """A second writer on the database helps (PostgreSQL); SQLite has one writer."""
        return store_for(connection).concurrent_writers

    # --- the worker loop's side ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, running: RunningJob, outcome: Outcome) -> None:
        with self._lock:
            self._held += 1
        self._inbox.put((running, outcome))

    def busy(self) -> bool:
        """Outcomes handed over are not all written (or dropped) yet."""
        return self._held > 0

    def take_requeued(self) -> bool:
        """A written outcome queued a retry since the last call: claim again."""
        with self._lock:
            requeued, self._requeued = self._requeued, False
        return requeued

    @property
    def processed(self) -> int:
        return self.outcomes.processed

    def stop(self) -> None:
        """Write what is held (one more try if the database is down), then end."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join()

    # --- the completer's thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            with store.worker_connection(connections[self.database]):  # the finishes'
                while True:
                    if not self._receive():
                        break
                    self._write_due()
        finally:
            connections[self.database].close()
            connections.close_all()

    def _receive(self) -> bool:
        """Move handed-over outcomes into the pending batch, waiting for the next one, the
        batch's FLUSH_DELAY or the retry time. False once stopped with nothing pending."""
        pending = self.outcomes
        while True:
            now = time.monotonic()
            if self._stopping:
                timeout = 0.0
            elif not pending.pending:
                timeout = None
            elif now < self._retry_at:
                timeout = self._retry_at - now
            elif len(pending.pending) >= self._batch():
                timeout = 0.0
            else:
                timeout = max(0.0, pending.since + FLUSH_DELAY - now)
            try:
                item = self._inbox.get(timeout=timeout) if timeout != 0.0 else self._inbox.get_nowait()
            except queue.Empty:
                return bool(pending.pending) or not self._stopping
            if item is not None:
                pending.add(*item)

    def _write_due(self) -> None:
        pending = self.outcomes
        if not pending.pending or (time.monotonic() < self._retry_at and not self._stopping):
            return
        early = time.monotonic() - pending.since < FLUSH_DELAY
        if not self._stopping and len(pending.pending) < self._batch() and early:
            return
        before = len(pending.pending)
        try:
            pending.write(connections[self.database])
        except Exception as exc:
            self._failed(exc, before)
        else:
            self._recovered()
        with self._lock:
            self._held -= before - len(pending.pending)
            requeued, pending.requeued = pending.requeued, False
            self._requeued = self._requeued or requeued
            idle = self._held == 0
        if requeued or idle:
            self._wake_loop(requeued)

    def _failed(self, exc: BaseException, before: int) -> None:
        now = time.monotonic()
        self._backoff = min(max(self._backoff * 2, 0.1), self._max_backoff * 5, 10.0)
        self._retry_at = now + self._backoff
        if isinstance(exc, DatabaseError):
            metrics.DB_ERRORS.labels("finish").inc()
            if self._down_since is None:
                self._down_since = now
                logger.error(
                    "database error during finish: %s; backing off and retrying",
                    exc,
                    extra={"worker_id": self.outcomes.worker_id},
                )
            try:
                connections[self.database].close()
            except DatabaseError:
                pass
        else:
            logger.exception(
                "writing %d outcomes failed; retrying after a back-off",
                before,
                extra={"worker_id": self.outcomes.worker_id},
            )
        if self._stopping:
            lost = len(self.outcomes.pending)
            logger.warning(
                "stopping with %d outcomes not written; their jobs are recovered when their leases expire",
                lost,
                extra={"worker_id": self.outcomes.worker_id},
            )
            self.outcomes.pending = []  # _write_due settles them

    def _recovered(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "database reachable again after %.1fs; resuming",
                time.monotonic() - self._down_since,
                extra={"worker_id": self.outcomes.worker_id},
            )
            self._down_since = None
        self._backoff = 0.0
