"""Leader-only maintenance: recovery, schedules, dead workers, retention, and the
batches of unfinished bulk operations (bulk_batches.run_unfinished, docs/bulk.md).

``build_services(worker)`` gives runworker (unless ``--no-leader``) one service that
stands for leader (leadership.Elector, its own thread) and runs the maintenance
ticker (another thread, its own database connection). On every tick the ticker:

1. checks the migration gate (``gate.is_ready``) — every tick, logging once per change
   of state — and does nothing while it is closed;
2. asks the elector for a lease; without one (not leader, or the trust window ran
   out) it does nothing;
3. runs each service whose interval has passed, passing the lease, which every write
   checks (a stale term changes nothing). A new term runs every service at once.

Each service has a ``run_once`` tests call directly, without threads. A failing service
is logged and retried next interval; it never stops the others or the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import Error as DatabaseError
from django.db import connections

from .. import bulk_batches, gate, metrics
from ..conf import engine_settings
from ..leadership import Elector, LeaderLease, NotLeader
from . import dead_workers, recovery, retention
from .schedules import Scheduler

if TYPE_CHECKING:
    from ..worker import Service as WorkerService
    from ..worker import Worker

logger = logging.getLogger("taskengine.maintenance")


@dataclass(slots=True)
class Service:
    name: str
    interval: float
    run_once: Callable[[LeaderLease], object]
    next_due: float = 0.0


def default_services(database: str, scheduler: Scheduler | None = None) -> list[Service]:
    s = engine_settings
    scheduler = scheduler or Scheduler(database)
    return [
        Service("recovery", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: recovery.run_once(database, lease=lease)),
        Service("dead_workers", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: dead_workers.run_once(database, lease)),
        Service("schedules", s.SCHEDULER_INTERVAL_SECONDS, scheduler.run_once),
        Service("retention", s.RETENTION_INTERVAL_SECONDS, lambda lease: retention.run_once(database, lease)),
        # A bounded slice of the unfinished bulk operations' batches (each its own
        # transaction, under the operation row's lock: a second runner takes turns).
        Service("bulk", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: bulk_batches.run_unfinished(database)),
    ]


class MaintenanceTicker:
    """Runs the due services while this process holds a trusted lease and the
    migration gate is open. ``tick()`` is one pass (tests call it directly)."""

    def __init__(
        self, database: str, elector: Elector, services: list[Service], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.database = database
        self.elector = elector
        self.services = services
        self.clock = clock
        self.interval = max(0.05, min(s.interval for s in services))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskengine-maintenance", daemon=True)
        self._gate_open: bool | None = None
        self._term: int | None = None
        self._failing: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def tick(self) -> list[str]:
        """One pass; returns the names of the services that ran."""
        if not self._gate_is_open():
            return []
        lease = self.elector.lease()
        if lease is None:
            self._term = None
            return []
        if lease.term != self._term:
            self._term = lease.term
            for service in self.services:
                service.next_due = 0.0
        ran = []
        for service in self.services:
            now = self.clock()
            if now < service.next_due:
                continue
            lease = self.elector.lease()  # re-checked: a long service may outlive trust
            if lease is None or self._stop.is_set():
                break
            service.next_due = now + service.interval
            self._run_service(service, lease)
            ran.append(service.name)
        return ran

    def _gate_is_open(self) -> bool:
        ready = gate.is_ready(self.database)
        if ready != self._gate_open:
            if not ready:
                logger.warning("maintenance paused: migrations pending on %r", self.database)
            elif self._gate_open is not None:
                logger.warning("maintenance resumed: migrations at head on %r", self.database)
            self._gate_open = ready
        return ready

    def _run_service(self, service: Service, lease: LeaderLease) -> None:
        try:
            service.run_once(lease)
        except NotLeader as exc:
            logger.warning("%s skipped: %s", service.name, exc)
        except DatabaseError as exc:
            metrics.DB_ERRORS.labels(service.name).inc()
            if service.name not in self._failing:
                logger.warning("%s failed: %s; retrying next interval", service.name, exc)
            self._failing.add(service.name)
            connections[self.database].close()
            return
        except Exception:
            logger.exception("%s raised; retrying next interval", service.name)
            return
        if service.name in self._failing:
            self._failing.discard(service.name)
            logger.warning("%s works again", service.name)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.tick()
                except DatabaseError as exc:  # the gate's own query
                    metrics.DB_ERRORS.labels("maintenance").inc()
                    logger.warning("maintenance tick failed: %s", exc)
                    connections[self.database].close()
        finally:
            connections[self.database].close()


class LeaderService:
    """The worker service: elector + ticker. Stopping it stops maintenance first and
    then resigns, so a successor takes over at once after a clean shutdown."""

    def __init__(self, elector: Elector, ticker: MaintenanceTicker) -> None:
        self.elector = elector
        self.ticker = ticker

    def start(self) -> None:
        self.elector.start()
        self.ticker.start()

    def stop(self) -> None:
        self.ticker.stop()
        self.elector.stop()


def build_services(worker: Worker) -> list[WorkerService]:
    """runworker's leader service. Validates TASKENGINE["SCHEDULES"] first, so a bad
    entry stops the worker at start with ImproperlyConfigured naming it."""
    scheduler = Scheduler(worker.database)
    elector = Elector(worker.database, worker.worker_id)
    ticker = MaintenanceTicker(worker.database, elector, default_services(worker.database, scheduler))
    return [LeaderService(elector, ticker)]
