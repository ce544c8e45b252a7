"""Watching the running handlers: timeouts, interrupts, lost leases, cancellations, and
handlers that do not stop.

Invariants:
- An interrupted attempt's outcome is never written before its handler has stopped:
  an interrupt (timeout, cancellation, lost lease) asks the handler to stop, and its
  outcome is collected when it returns. A prefetched job that loses its lease or is
  cancelled is withdrawn instead: it never starts, and its attempt ends as the reason.
- A handler that ignores its interrupt for HARD_TIMEOUT_GRACE is *stuck* — a sync
  handler's thread, or an async handler's coroutine that swallows its CancelledError or
  is blocked in a sync call: while it runs its job stays leased here (heartbeats go on),
  is not retried, and holds its slot; its outcome is written when it returns. Past
  ``max_stuck_threads`` stuck handlers the worker drains and exits with
  STUCK_THREADS_EXIT_CODE so that its supervisor replaces it. At exit, stuck jobs keep
  their leases (and the worker row is not marked stopped): recovery takes them only
  once the leases expire, after the process and its handlers are gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from taskengine.runtime.execution import (
    JobCancelled,
    JobInterrupted,
    JobTimedOut,
    LeaseLost,
    RunningJob,
    failure_outcome,
    interrupt_async,
    interrupt_thread,
)
from taskengine.runtime.slots import Slots

logger = logging.getLogger("taskengine.worker")

HARD_TIMEOUT_GRACE = 2.0  # seconds an interrupted handler gets to stop before it counts as stuck
STUCK_THREADS_EXIT_CODE = 3  # the worker exits with this when it gives up on stuck handlers


class Supervision:
    def __init__(self, slots: Slots, max_stuck_threads: int, give_up: Callable[[], None]) -> None:
        """``give_up`` is called once, when the stuck handlers outnumber ``max_stuck_threads``."""
        self.slots = slots
        self.events = slots.events
        self.watched = slots.watched  # jobs with a deadline: a timeout or an interrupt's grace
        self.max_stuck_threads = max_stuck_threads
        self.give_up = give_up
        self.stuck: set[RunningJob] = set()  # handlers that ignored an interrupt and still run
        self.gave_up = False  # draining because of stuck handlers

    def watch(self) -> None:
        """Interrupt handlers past their timeout; one that has not stopped a grace period
        after an interrupt is stuck. Python can raise in a thread only between bytecodes,
        so a sync handler blocked in C notices when that call returns; an async handler
        notices at its next await, unless it swallows the CancelledError or is blocked
        in a sync call (which blocks the event loop too)."""
        if not self.watched:
            return
        now = time.monotonic()
        for running in list(self.watched):
            if running.deadline is None or now < running.deadline:
                continue
            if running.interrupt_sent is None:
                self.interrupt(running, JobTimedOut)
                running.deadline = now + HARD_TIMEOUT_GRACE  # a sync handler not yet begun is interrupted then
                logger.warning(
                    "timed out after %ss; interrupting",
                    running.job.timeout_seconds,
                    extra=self.events.extra(running.job, event="timed_out"),
                )
            else:
                self.watched.discard(running)
                running.deadline = None
                self._mark_stuck(running)

    def returned(self, running: RunningJob) -> None:
        """A stuck handler returned at last: it no longer counts as stuck."""
        self.stuck.discard(running)
        logger.warning(
            "a stuck handler returned after %.1fs; recording its outcome",
            time.monotonic() - running.monotonic_start,
            extra=self.events.extra(running.job),
        )

    def _mark_stuck(self, running: RunningJob) -> None:
        """Its job stays leased here (heartbeats go on) and is not retried while the
        handler's thread or coroutine runs; its slot stays taken. Past max_stuck_threads
        the worker gives up: it drains and exits so that a new process takes its place."""
        running.stuck = True
        self.stuck.add(running)
        reason = running.interrupt_sent.__name__ if running.interrupt_sent else "interrupt"
        event = "timeout_ignored" if running.interrupt_sent is JobTimedOut else "interrupt_ignored"
        logger.error(
            "handler ignored its interrupt (%s) for %.0fs; its job stays leased and its slot taken "
            "until it returns (%d stuck, at most %d tolerated)",
            reason,
            HARD_TIMEOUT_GRACE,
            len(self.stuck),
            self.max_stuck_threads,
            extra=self.events.extra(running.job, event=event),
        )
        if len(self.stuck) > self.max_stuck_threads and not self.gave_up:
            self.gave_up = True
            logger.error(
                "more stuck handlers than --max-stuck-threads %d: draining; the worker exits %d "
                "for its supervisor to replace it",
                self.max_stuck_threads,
                STUCK_THREADS_EXIT_CODE,
                extra={"worker_id": self.slots.worker_id},
            )
            self.give_up()

    def leases_renewed(self, live: list[RunningJob], kept: dict[int, bool]) -> None:
        """A heartbeat renewed the leases of ``kept`` (job id → its cancel requested)
        among ``live``: interrupt (or withdraw) the attempts whose lease is lost, or whose
        job is to be cancelled."""
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
                self.interrupt(running, LeaseLost)
            elif kept[running.job.id] and running.interrupt_sent is None:
                if self._withdraw(running, JobCancelled):
                    continue
                logger.info(
                    "cancellation requested; interrupting the handler",
                    extra=self.events.extra(running.job, event="cancel_requested"),
                )
                self.interrupt(running, JobCancelled)

    def _withdraw(self, running: RunningJob, reason: type[JobInterrupted]) -> bool:
        """A prefetched job lost its lease or was cancelled before it started: it never
        starts, and its attempt ends as ``reason`` (written fenced: a lost lease's outcome
        is discarded). False when the job has started (or is not prefetched)."""
        if not self.slots.withdraw(running):
            return False
        running.interrupt_sent = reason
        logger.info(
            "%s before it started; it is not started",
            "lease lost" if reason is LeaseLost else "cancellation requested",
            extra=self.events.extra(running.job, event="withdrawn"),
        )
        self.slots.done.put((running, failure_outcome(running.job, reason()), None))
        return True

    def interrupt(self, running: RunningJob, reason: type[JobInterrupted]) -> None:
        """Ask the handler to stop. Its outcome is recorded when it has stopped; until
        then it keeps its slot, and if it has not stopped within HARD_TIMEOUT_GRACE it
        counts as stuck."""
        interrupt = interrupt_async if running.is_async else interrupt_thread
        if interrupt(running, reason):
            running.deadline = time.monotonic() + HARD_TIMEOUT_GRACE  # then it counts as stuck
            self.watched.add(running)
