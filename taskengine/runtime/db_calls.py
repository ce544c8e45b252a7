"""The worker loop's database calls, and its back-off through an outage.

Invariants:
- Database errors never kill the loop: a call that raises one is logged (once per
  outage), counted (``taskengine_db_errors_total`` by operation), closes the connection
  and returns the caller's default; every call until the retry time returns the default
  at once, without touching the database. The back-off doubles from 0.1 s up to the
  smaller of five times ``max_backoff`` and 10 s, and resets on the first call that
  succeeds (logged with the outage's length).
- Outcomes not yet written wait in memory meanwhile (their leases may lapse, and the
  jobs are then recovered and run again: at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import overload

from django.db import Error as DatabaseError
from django.db import connections

from taskengine.observability import metrics

logger = logging.getLogger("taskengine.worker")


class DatabaseCalls:
    def __init__(self, database: str, worker_id: str, max_backoff: float) -> None:
        self.database = database
        self.worker_id = worker_id
        self.max_backoff = max_backoff
        self.retry_at = 0.0  # monotonic time before which every call returns its default
        self.down_since: float | None = None  # monotonic time of the outage's first error
        self._backoff = 0.0

    @overload
    def call[T](self, operation: str, fn: Callable[[], T]) -> T | None: ...
    @overload
    def call[T](self, operation: str, fn: Callable[[], T], default: T) -> T: ...
    def call[T](self, operation: str, fn: Callable[[], T], default: T | None = None) -> T | None:
        now = time.monotonic()
        if now < self.retry_at:
            return default
        try:
            result = fn()
        except DatabaseError as exc:
            self._failed(operation, exc, now)
            return default
        if self.down_since is not None:
            logger.warning(
                "database reachable again after %.1fs; resuming",
                now - self.down_since,
                extra={"worker_id": self.worker_id},
            )
            self.down_since = None
            self._backoff = 0.0
        return result

    def _failed(self, operation: str, exc: DatabaseError, now: float) -> None:
        metrics.DB_ERRORS.labels(operation).inc()
        self.back_off(now)
        if self.down_since is None:
            self.down_since = now
            logger.error(
                "database error during %s: %s; backing off and retrying",
                operation,
                exc,
                extra={"worker_id": self.worker_id},
            )
        try:
            connections[self.database].close()
        except DatabaseError:
            pass

    def back_off(self, now: float) -> None:
        self._backoff = min(max(self._backoff * 2, 0.1), self.max_backoff * 5, 10.0)
        self.retry_at = now + self._backoff
