"""Finished attempts, from the slots to the database: collected, batched, handed on.

The loop collects what the handlers handed over (runtime/slots.py) and keeps each
outcome for a batch: written by the loop itself (``outcomes``, on its connection, with
the next claim riding in the same transaction), or by the completer thread when it runs
(TASKENGINE["COMPLETER"], PostgreSQL). The write itself, fenced, is runtime/completer.py's.

Invariants:
- A batch is due when half the held jobs' worth (slots plus the prefetch bound) has
  finished, when nothing else runs, when the worker drains, or FLUSH_DELAY after its
  first outcome; the loop sleeps no longer than that, and while writes back off, until
  the retry time (sooner would spin it through refused database calls).
- An attempt released at shutdown (``abandoned``) is no longer this worker's: its
  outcome is not written. Nothing raised while recording an outcome ends the loop: the
  attempt's lease lapses and it is recovered.
- Every collected attempt's run time feeds the running mean the prefetch bound is
  computed from (``mean_duration``).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.jobs import Outcome
from taskengine.runtime.completer import FLUSH_DELAY, Completer, Outcomes
from taskengine.runtime.execution import RunningJob, failure_outcome
from taskengine.runtime.slots import Slots
from taskengine.runtime.supervision import Supervision

logger = logging.getLogger("taskengine.worker")

DURATION_WEIGHT = 0.05  # weight of each handler's run time in the worker's running mean


class Finishing:
    def __init__(self, slots: Slots, supervision: Supervision) -> None:
        self.slots = slots
        self.supervision = supervision
        self.events = slots.events
        self.outcomes = Outcomes(slots.worker_id, self.events)  # written on the loop's connection
        self.completer: Completer | None = None  # PostgreSQL: written on the completer's
        self.mean_duration: float | None = None  # running mean of handler run times (seconds)

    def start_completer(
        self, connection: BaseDatabaseWrapper, database: str, max_backoff: float, wake: Callable[[bool], None]
    ) -> None:
        """Hand the writes to a completer thread, where the database suits one."""
        if Completer.suits(connection):
            slots = self.slots
            self.completer = Completer(
                database=database,
                outcomes=Outcomes(slots.worker_id, self.events),
                batch=lambda: slots.batch,
                max_backoff=max_backoff,
                wake=wake,
            )
            self.completer.start()

    def collect(self) -> None:
        """Take every outcome the handlers handed over since the loop last looked."""
        slots = self.slots
        with slots.lock:
            slots.uncollected = 0  # before draining the queue: a later hand-over wakes the loop
        while True:
            try:
                running, outcome, error = slots.done.get_nowait()
            except queue.Empty:
                return
            slots.running.discard(running)
            slots.watched.discard(running)
            if running.ran_for is not None:
                mean = self.mean_duration
                self.mean_duration = (
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
            self.supervision.returned(running)
        self.events.collected(running)
        if running.abandoned:
            return  # released at shutdown: the job is no longer this worker's
        if outcome is None:
            outcome = failure_outcome(running.job, error or RuntimeError("no outcome"))
        self.add(running, outcome)

    def add(self, running: RunningJob, outcome: Outcome) -> None:
        if self.completer is not None:
            self.completer.submit(running, outcome)
        else:
            self.outcomes.add(running, outcome)

    @property
    def pending(self) -> bool:
        """Outcomes not written yet: the loop's, or held by the completer."""
        return bool(self.outcomes.pending) or (self.completer is not None and self.completer.busy())

    @property
    def processed(self) -> int:
        return self.outcomes.processed + (self.completer.processed if self.completer else 0)

    def due(self, draining: bool) -> bool:
        """Whether the loop's batch is to be written now (the completer keeps its own)."""
        if not self.outcomes.pending:
            return False
        return (
            len(self.outcomes.pending) >= self.slots.batch
            or not self.slots.running
            or draining
            or time.monotonic() - self.outcomes.since >= FLUSH_DELAY
        )

    def wait(self, retry_at: float, max_backoff: float) -> float:
        """How long the loop may sleep before its batch is due."""
        if not self.outcomes.pending:
            return max_backoff
        # While writes back off (an outage, a refused batch), the next try is at the
        # retry time: waiting less would spin the loop through refused database calls.
        return max(0.0, max(self.outcomes.since + FLUSH_DELAY, retry_at) - time.monotonic())
