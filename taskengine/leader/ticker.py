"""The maintenance ticker: the thread that runs the leader's services while this process
leads. Which services a runworker runs is runtime/leader_service.py's ``default_services``
(recovery, dead workers, schedules, retention, vacuum, unfinished bulk batches).
On every tick:

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

from django.db import Error as DatabaseError
from django.db import connections

from taskengine import gate
from taskengine.leader.election import Elector, LeaderLease, NotLeader
from taskengine.observability import metrics

logger = logging.getLogger("taskengine.maintenance")


@dataclass(slots=True)
class Service:
    name: str
    interval: float
    run_once: Callable[[LeaderLease], object]
    next_due: float = 0.0


class MaintenanceTicker:
    """Runs the due services while this process holds a trusted lease and the
    migration gate is open. ``tick()`` is one pass (tests call it directly)."""

    def __init__(
        self,
        database: str,
        elector: Elector,
        services: list[Service],
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str = "taskengine-maintenance",
    ) -> None:
        self.database = database
        self.elector = elector
        self.services = services
        self.clock = clock
        self.interval = max(0.05, min(s.interval for s in services))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._gate_open: bool | None = None
        self._term: int | None = None
        self._failing: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Run no further service; the one running finishes (see stop)."""
        self._stop.set()

    def stop(self, wait: float = 30.0) -> None:
        """Stop, waiting up to ``wait`` seconds for a service still running to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)

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
