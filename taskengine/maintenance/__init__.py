"""Maintenance services (recovery now; schedules, dead workers and retention to come).

``build_services(worker)`` returns the background services runworker starts after it
registers. Until leader election lands, every worker runs the recovery sweep on a tick;
its compare-and-set writes make concurrent sweeps safe (each job is recovered once).
"""
from __future__ import annotations

import logging
import threading

from django.db import Error as DatabaseError
from django.db import connections

from .. import gate
from . import recovery

logger = logging.getLogger("taskengine.maintenance")


class MaintenanceTicker:
    """Runs ``recovery.run_once`` every ``interval`` seconds on its own thread and
    its own database connection, skipping ticks while the migration gate is closed."""

    def __init__(self, database: str, interval: float) -> None:
        self.database = database
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskengine-maintenance", daemon=True)
        self._gate_open: bool | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self) -> None:
        ready = gate.is_ready(self.database)
        if ready != self._gate_open:
            self._gate_open = ready
            if not ready:
                logger.warning("maintenance paused: migrations pending on %r", self.database)
        if ready:
            recovery.run_once(self.database)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.tick()
                except DatabaseError as exc:
                    logger.warning("maintenance tick failed: %s", exc)
                    connections[self.database].close()
        finally:
            connections[self.database].close()


def build_services(worker) -> list:
    return [MaintenanceTicker(worker.database, interval=max(0.5, min(5.0, worker.lease_seconds / 4)))]
