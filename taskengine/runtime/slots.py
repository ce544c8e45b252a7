"""The worker's execution slots: claimed jobs onto handlers, and their outcomes back.

``concurrency`` slots: sync handlers on a thread pool (runtime/pool.py), async handlers
on one event loop thread. A slot is taken from a job's start to its handler's return; a
claimed job with no free slot waits in the prefetch buffer, and a handler that returns
hands its slot straight to the next prefetched job, on its own thread (no wake-up of the
loop and no queue hand-off per job). Outcomes go to the loop through ``done``; the loop
is woken only for the first outcome since it last looked, a batch's worth, or nothing
left running.

Invariants:
- The slots and the prefetch buffer are shared with the handlers' threads: ``free``,
  ``ready`` and ``uncollected`` change only under ``lock``, and so does ``hold`` but
  for the drain's plain assignment (it may run in a signal handler).
- A prefetched job is leased and held like a running one — its lease is renewed by every
  heartbeat, a stop request releases it at once, unstarted (runtime/release.py), and a
  lost lease or a cancellation withdraws it before it starts (``withdraw``). Its
  attempt's record (``started_at``, ``last_attempted_at``, the attempt row's
  ``started_at``) carries the claim's time, which is at most the prefetch wait earlier
  than the handler's start; its timeout, ``task_started`` and the running-time metric
  count from the handler's start (``_begin``), on the thread that starts it.
- While ``hold`` is set (draining, or a release under way) no prefetched job starts.
- A job that cannot be started (its task does not resolve, its arguments do not decode,
  its handler cannot be submitted) fails its attempt and hands its slot on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from taskengine import store
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.resolution import resolve_task
from taskengine.runtime import events
from taskengine.runtime.execution import RunningJob, async_interrupt, failure_outcome, run_async
from taskengine.runtime.pool import JobThreads

logger = logging.getLogger("taskengine.worker")

type Done = tuple[RunningJob, Outcome | None, BaseException | None]


class Slots:
    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        job_events: events.JobEvents,
        running: set[RunningJob],
        watched: set[RunningJob],
        wake: threading.Event,
        run_sync: Callable[[RunningJob], Outcome],
    ) -> None:
        """``running`` and ``watched`` are the worker's (every attempt held, and those
        with a deadline); ``wake`` wakes its loop; ``run_sync`` runs a sync handler."""
        self.concurrency = concurrency
        self.worker_id = worker_id
        self.events = job_events
        self.running = running
        self.watched = watched
        self.wake = wake
        self.run_sync = run_sync
        self.done: queue.SimpleQueue[Done] = queue.SimpleQueue()  # to the loop
        self.lock = threading.Lock()
        self.free = concurrency
        self.ready: deque[RunningJob] = deque()  # prefetched: leased, not started
        self.hold = False  # no prefetched job starts (draining, or being released)
        self.uncollected = 0  # outcomes handed over since the loop last collected
        self.batch = max(1, concurrency // 2)  # half the slots plus the prefetch bound, set by the loop
        self.threads = JobThreads(concurrency, self._run_item, self._on_handler_done)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, tuple[Any, bool]] = {}  # task path -> (task, is it async), resolved once

    def start(self, job: ClaimedJob) -> None:
        """Take a claimed job on: start it in a free slot, or keep it prefetched until a
        handler hands its slot over. Its attempt (timeout clock, task_started) begins
        when its handler is started, not here."""
        running = RunningJob(job=job)
        self.running.add(running)
        self.events.claimed(job)
        try:
            store.ensure_decoded(job)
            running.task, running.is_async = self._resolve(job.task_path)
        except Exception as exc:
            self.done.put((running, failure_outcome(job, exc), None))
            return
        if job.timeout_seconds:
            self.watched.add(running)  # its deadline is set when it begins
        with self.lock:
            if self.free > 0:
                self.free -= 1
            else:
                self.ready.append(running)
                return
        self.launch(running)

    def launch(self, running: RunningJob | None, *, via_pool: bool = False) -> None:
        """Start ``running``, which holds a slot: a sync handler on a job thread, an async
        one on the event loop (``via_pool``: through a job thread, for a caller on the
        event loop's own thread). A job that cannot be started fails its attempt and
        hands its slot on."""
        while running is not None:
            try:
                if running.is_async and not via_pool:
                    self._start_async(running)
                else:
                    self.threads.submit(running)
                return
            except Exception as exc:
                logger.exception(
                    "could not start the handler", extra=self.events.extra(running.job, event="start_failed")
                )
                outcome = failure_outcome(running.job, exc)
                running = self.hand_over(running, outcome, None)

    def launch_ready(self) -> None:
        """Start prefetched jobs into the free slots (after a release that kept some)."""
        while True:
            with self.lock:
                if not (self.ready and self.free > 0):
                    return
                self.free -= 1
                following = self.ready.popleft()
            self.launch(following)

    def withdraw(self, running: RunningJob) -> bool:
        """Take ``running`` out of the prefetch buffer; False if it is not there (started)."""
        with self.lock:
            try:
                self.ready.remove(running)
            except ValueError:
                return False
        return True

    def take_ready(self) -> list[RunningJob]:
        """Hold the prefetch buffer and empty it: its jobs, which never start from it."""
        with self.lock:
            self.hold = True
            held = list(self.ready)
            self.ready.clear()
        return held

    def put_back(self, kept: list[RunningJob]) -> None:
        """Return ``kept`` (from ``take_ready``) to the buffer's front and let it start."""
        with self.lock:
            self.ready.extendleft(reversed(kept))
            self.hold = False

    def _resolve(self, task_path: str) -> tuple[Any, bool]:
        """(the task at ``task_path``, whether its handler is async), resolved once."""
        resolved = self._tasks.get(task_path)
        if resolved is None:
            task = resolve_task(task_path)
            resolved = self._tasks[task_path] = (task, asyncio.iscoroutinefunction(task.func))
        return resolved

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="taskengine-asyncio", daemon=True).start()
        return self.loop

    def _begin(self, running: RunningJob) -> None:
        """The attempt begins (on the thread starting the handler): its timeout counts
        from here, and task_started is sent."""
        running.monotonic_start = time.monotonic()
        if running.job.timeout_seconds:
            running.deadline = running.monotonic_start + running.job.timeout_seconds
            self.wake.set()  # the loop's wait may not know this deadline yet
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
            return self.run_sync(running)
        finally:
            running.ran_for = time.monotonic() - running.monotonic_start

    def _on_handler_done(
        self, running: RunningJob, outcome: Outcome | None, error: BaseException | None
    ) -> RunningJob | None:
        """On a job thread: the item returned. Returns the prefetched sync job that takes
        over the slot, for this thread to run next."""
        if running.is_async and error is None:
            return None  # an async handler started; its outcome comes from its future
        if running.abandoned and outcome is None and error is None:
            following = self.hand_over(None, None, None)  # released before it began
        else:
            following = self.hand_over(running, outcome, error)
        if following is not None and following.is_async:
            self.launch(following)
            return None
        return following

    def hand_over(
        self, running: RunningJob | None, outcome: Outcome | None, error: BaseException | None
    ) -> RunningJob | None:
        """A handler returned (on its own thread): hand its outcome to the worker loop and
        its slot to the next prefetched job, which is returned (the caller starts it).
        The loop is woken only when there is something for it to do: the first outcome
        since it last looked (it then waits at most FLUSH_DELAY), a batch's worth, or
        nothing left running."""
        if running is not None:
            self.done.put((running, outcome, error))
        with self.lock:
            following = None
            if self.ready and not self.hold:
                following = self.ready.popleft()
            else:
                self.free += 1
            if running is not None:
                self.uncollected += 1
            wake = self.uncollected == 1 or self.uncollected >= self.batch or self.free == self.concurrency
        if wake and not self.wake.is_set():  # set() takes a lock; in a burst the flag is usually up already
            self.wake.set()
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
        self.launch(self.hand_over(running, outcome, error), via_pool=True)
