"""Handing held jobs back to the queue when the worker stops.

Invariants:
- Jobs a claim returns after the stop request, and prefetched jobs once draining begins,
  are released at once, unstarted (outcome ``released``; ``cancelled`` for one whose
  cancel was requested): never dropped. A job the release does not take (a database
  error) is started and drains with the rest.
- When the grace period is over, the running jobs are released — but not a stuck
  handler's: releasing it would let another worker start it alongside; its lease is left
  to expire once this process is gone. A job the release does not take recovers when
  its lease expires.
- A released job is this worker's no longer (``abandoned``): its handler's outcome, if
  it comes, is not written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine import store
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.runtime.db_calls import DatabaseCalls
from taskengine.runtime.execution import RunningJob
from taskengine.runtime.slots import Slots
from taskengine.states import AttemptOutcome

logger = logging.getLogger("taskengine.worker")

type Written = dict[int, tuple[str, datetime | None]]  # job id -> (its state, finished_at)


class Releases:
    def __init__(self, slots: Slots, db: DatabaseCalls, connection: Callable[[], BaseDatabaseWrapper]) -> None:
        self.slots = slots
        self.events = slots.events
        self.worker_id = slots.worker_id
        self.db = db
        self.connection = connection

    def claimed(self, jobs: list[ClaimedJob]) -> list[ClaimedJob]:
        """Release jobs claimed after the stop request; returns those not released."""
        written = self._release([(j.id, j.attempt) for j in jobs])
        for job in jobs:
            if job.id in written:
                self._report(RunningJob(job=job), *written[job.id], unstarted=True)
        return [job for job in jobs if job.id not in written]

    def prefetched(self) -> None:
        """Draining: hand the prefetched jobs (leased, never started) back to the queue at
        once. Those the release did not take (a database error) start and drain with the
        rest."""
        held = self.slots.take_ready()
        if not held:
            return
        kept = self._release_unstarted(held)
        if kept:
            self.slots.put_back(kept)
            self.slots.launch_ready()

    def remaining(self) -> None:
        """The grace period is over: release every job still held, but stuck ones."""
        unstarted = self.slots.take_ready()
        if unstarted:
            self._release_unstarted(unstarted)
        candidates = [r for r in self.slots.running if not (r.abandoned or r.stuck or r.lease_lost)]
        by_id = {r.job.id: r for r in sorted(candidates, key=lambda r: r.job.attempt)}
        held = [r.held for r in candidates]
        written = self._release(held)
        for job_id, (state, finished_at) in written.items():
            by_id[job_id].abandoned = True
            self._report(by_id[job_id], state, finished_at)
        if len(written) < len(held):
            logger.warning(
                "%d running jobs could not be released; they recover when their leases expire",
                len(held) - len(written),
                extra={"worker_id": self.worker_id},
            )

    def _release(self, held: list[tuple[int, int]]) -> Written:
        nothing: Written = {}
        return self.db.call(
            "release", lambda: store.release_jobs(self.connection(), worker_id=self.worker_id, held=held), nothing
        )

    def _release_unstarted(self, held: list[RunningJob]) -> list[RunningJob]:
        """Release jobs this worker holds but never started; returns those not released."""
        written = self._release([r.held for r in held])
        kept = []
        for running in held:
            if running.job.id in written:
                running.abandoned = True
                self.slots.running.discard(running)
                self.slots.watched.discard(running)
                self.events.unclaimed(running.job)
                self._report(running, *written[running.job.id], unstarted=True)
            else:
                kept.append(running)
        return kept

    def _report(self, running: RunningJob, state: str, finished_at: Any, *, unstarted: bool = False) -> None:
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
