"""The worker's threads for sync handlers.

A fixed-size set of threads fed from one queue, lighter than ThreadPoolExecutor for
this use: no Future, Condition and callback list per job (a fifth of a busy worker's
main-thread time went there with no-op handlers), and the result is handed straight to
the worker's ``done`` callback on the thread that ran the job, which may hand that
thread its next job at once (a prefetched job taking over the slot). The worker only
ever submits a job into a free execution slot, so no job waits for a thread: the pool
grows, up to ``size``, whenever no thread is idle.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class JobThreads:
    def __init__(
        self,
        size: int,
        run: Callable[[Any], Any],
        done: Callable[[Any, Any, BaseException | None], Any],
        name: str = "taskengine-job",
    ) -> None:
        """``run(item)`` runs on a pool thread; ``done(item, result, error)`` is called
        there with its result, or with the exception it raised, and returns the next item
        for that thread to run, or None."""
        self.size = size
        self._run = run
        self._done = done
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()  # guards _idle and _threads

    def submit(self, item: Any) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that thread is taken by this item
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._loop, name=f"{self._name}_{len(self._threads)}", daemon=True)
                thread.start()  # first: a thread that never started must not be joined at shutdown
                self._threads.append(thread)
        self._queue.put(item)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                while item is not None:
                    try:
                        result, error = self._run(item), None
                    except BaseException as exc:
                        result, error = None, exc
                    # ``done`` may hand back the next item to run on this thread at once
                    # (the worker's prefetched job that takes over this slot): no queue
                    # hand-off and no wake-up between the two.
                    item = self._done(item, result, error)
            finally:
                with self._lock:
                    self._idle += 1

    def shutdown(self, wait: bool = True) -> None:
        """Stop every thread once its current item is done; ``wait`` joins them."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                thread.join()
