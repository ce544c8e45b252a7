"""How long an idle worker waits before it claims again.

Invariants:
- With nothing running and nothing claimed, the wait doubles from ``backoff_base`` up to
  ``max_backoff`` (``next_wait``); a claim that returns jobs starts it over (``reset``).
  A LISTEN wake-up (runtime/listener.py) or a handler's return ends any wait early.
- A worker that serves a held queue waits at most PAUSED_POLL_SECONDS: a limited one
  (nothing wakes a worker when a limit has room again: docs/queues.md), or a paused one
  while it polls (nothing wakes it on resume), so that it claims within a second. So does
  the first wait after the queue was last seen held: a resume that commits between an
  empty claim and the look at the queues must not buy a full back-off.
"""

from __future__ import annotations

from collections.abc import Callable

from taskengine import queues
from taskengine.runtime.db_calls import DatabaseCalls


class IdleWaits:
    def __init__(
        self,
        *,
        queue_names: list[str],
        database: str,
        backoff_base: float,
        max_backoff: float,
        db: DatabaseCalls,
        woken_on_change: Callable[[], bool],
    ) -> None:
        """``woken_on_change()``: whether a LISTEN connection wakes the worker on enqueue
        and on resume, now."""
        self.queue_names = queue_names
        self.database = database
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.db = db
        self.woken_on_change = woken_on_change
        self.rounds = 0  # idle waits since the last claim that returned jobs
        self.held_when_last_seen = False

    def reset(self) -> None:
        self.rounds = 0

    def next_wait(self) -> float:
        wait: float = min(self.max_backoff, self.backoff_base * (2**self.rounds))
        self.rounds = min(self.rounds + 1, 30)
        return self.poll_wait(wait)

    def poll_wait(self, wait: float) -> float:
        """``wait``, or at most PAUSED_POLL_SECONDS for a worker that polls while a queue
        of its own is paused (nothing wakes it on resume, so it polls often enough to
        claim within a second of the resume), or while one is limited."""
        if wait <= queues.PAUSED_POLL_SECONDS:
            return wait
        # The claim that came back empty may have run while the queue was held, and the
        # resume committed since: a queue held at the last look still counts this once.
        held_before, self.held_when_last_seen = self.held_when_last_seen, self._serves_held_queue()
        if self.held_when_last_seen or held_before:
            return queues.PAUSED_POLL_SECONDS
        return wait

    def _serves_held_queue(self) -> bool:
        nothing: set[str] = set()
        paused = not self.woken_on_change()
        return bool(
            self.db.call("claim", lambda: queues.held_among(self.queue_names, self.database, paused), default=nothing)
        )
