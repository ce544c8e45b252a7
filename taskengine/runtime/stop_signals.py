"""A worker's stop signals: SIGTERM (or SIGINT) drains it, a second one exits at once.

Invariants:
- The first signal only starts the drain (no new claims; running jobs get the grace
  period, the rest are released: runtime/release.py) and wakes the loop — from another
  thread: the handler runs on the main thread wherever it was interrupted, possibly
  inside Event.wait holding the event's (non-reentrant) lock, where setting the event
  could deadlock.
- A second signal flushes the logs and exits with status 1 at once; the jobs held are
  recovered when their leases expire.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("taskengine.worker")


class StopSignals:
    def __init__(self, worker_id: str, shutdown_grace: float, drain: Callable[[], None], wake: threading.Event) -> None:
        self.worker_id = worker_id
        self.shutdown_grace = shutdown_grace
        self.drain = drain  # a plain call: it runs in the signal handler
        self.wake = wake
        self.received = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received == 1:
            logger.info(
                "received %s: draining (no new claims, %.0fs grace)",
                signal.Signals(signum).name,
                self.shutdown_grace,
                extra={"worker_id": self.worker_id},
            )
            self.drain()
            threading.Thread(target=self.wake.set, name="taskengine-signal-wake", daemon=True).start()
        else:
            logger.warning(
                "second signal: exiting now; running jobs are recovered when their leases expire",
                extra={"worker_id": self.worker_id},
            )
            for handler in logging.getLogger("taskengine").handlers + logging.getLogger().handlers:
                handler.flush()
            os._exit(1)
