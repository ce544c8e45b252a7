"""LISTEN for new-job notifications on PostgreSQL and wake the worker.

Runs on its own thread with its own psycopg connection in autocommit (LISTEN needs a
session, so this connection must not go through PgBouncer in transaction mode: set
TASKENGINE["POLL_ONLY"] there). On any error it reconnects with backoff and wakes the
worker once, so nothing sent while it was away is missed for longer than one poll.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from taskengine.db.base import JOBS_CHANNEL

logger = logging.getLogger("taskengine.listener")


class Listener(threading.Thread):
    def __init__(self, connection_params: dict[str, Any], queues: set[str], wake: threading.Event) -> None:
        super().__init__(name="taskengine-listener", daemon=True)
        self.params = {k: v for k, v in connection_params.items() if k not in ("cursor_factory", "context")}
        self.queues = queues
        self.wake = wake
        self.stopping = threading.Event()
        self.connected = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        import psycopg

        backoff = 0.1
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**self.params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    self.connected.set()
                    backoff = 0.1
                    self.wake.set()
                    while not self.stopping.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            if notice.payload in self.queues:
                                self.wake.set()
            except Exception as exc:
                self.connected.clear()
                if self.stopping.is_set():
                    return
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self.wake.set()
