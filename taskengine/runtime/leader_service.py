"""The leader in a runworker process: the elector, the maintenance ticker, and the
services the ticker runs while this process leads (``default_services``).

``build_services(worker)`` gives runworker (unless ``--no-leader``) one service that
stands for leader: the elector (leader/election.py, its own thread) and the tickers
(leader/ticker.py, a thread and a database connection each: one for the services below
but the vacuum, one for the vacuum, ``OWN_TICKER``). The services are the
leader's own (recovery, dead workers, schedules, retention, the job tables' vacuum) and
the batches of unfinished bulk operations (ops/bulk_batches.py), which any one process
runs, and the leader does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskengine.conf import engine_settings
from taskengine.leader import dead_workers, recovery, retention, vacuum
from taskengine.leader.election import Elector
from taskengine.leader.schedule_enqueuer import Scheduler
from taskengine.leader.ticker import MaintenanceTicker, Service
from taskengine.ops import bulk_batches

if TYPE_CHECKING:
    from taskengine.runtime.worker import Service as WorkerService
    from taskengine.runtime.worker import Worker


def default_services(database: str, scheduler: Scheduler | None = None) -> list[Service]:
    s = engine_settings
    scheduler = scheduler or Scheduler(database)
    return [
        Service("recovery", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: recovery.run_once(database, lease=lease)),
        Service("dead_workers", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: dead_workers.run_once(database, lease)),
        Service("schedules", s.SCHEDULER_INTERVAL_SECONDS, scheduler.run_once),
        Service("retention", s.RETENTION_INTERVAL_SECONDS, retention.RetentionSweep(database).run_once),
        Service("vacuum", s.VACUUM_INTERVAL_SECONDS, lambda lease: vacuum.run_once(database, lease)),
        # A bounded slice of the unfinished bulk operations' batches (each its own
        # transaction, under the operation row's lock: a second runner takes turns).
        Service("bulk", s.MAINTENANCE_INTERVAL_SECONDS, lambda lease: bulk_batches.run_unfinished(database)),
    ]


# Services that run on a ticker thread (and database connection) of their own: a paced
# VACUUM of a big job table takes seconds (docs/performance.md, "The leader's vacuum,
# paced"), and on the shared ticker recovery, dead workers and schedules would wait
# behind it.
OWN_TICKER = frozenset({"vacuum"})
OWN_TICKER_STOP_WAIT_SECONDS = 1.0


class LeaderService:
    """The worker service: elector + tickers. Stopping it stops maintenance first and
    then resigns, so a successor takes over at once after a clean shutdown."""

    def __init__(self, elector: Elector, tickers: list[MaintenanceTicker]) -> None:
        self.elector = elector
        self.tickers = tickers

    def start(self) -> None:
        self.elector.start()
        for ticker in self.tickers:
            ticker.start()

    def stop(self) -> None:
        for ticker in self.tickers:  # all told first: none waits for another's service
            ticker.request_stop()
        shared, *own = self.tickers
        shared.stop()
        for ticker in own:
            # A paced VACUUM may run for seconds more: the worker's stop (its finished
            # outcomes are written after this) does not wait for it. Its daemon thread
            # ends with the process; SKIP_LOCKED lets the next leader's vacuum pass it.
            ticker.stop(wait=OWN_TICKER_STOP_WAIT_SECONDS)
        self.elector.stop()


def build_services(worker: Worker) -> list[WorkerService]:
    """runworker's leader service. Validates TASKENGINE["SCHEDULES"] first, so a bad
    entry stops the worker at start with ImproperlyConfigured naming it."""
    scheduler = Scheduler(worker.database)
    elector = Elector(worker.database, worker.worker_id)
    services = default_services(worker.database, scheduler)
    shared = [service for service in services if service.name not in OWN_TICKER]
    tickers = [MaintenanceTicker(worker.database, elector, shared)] + [
        MaintenanceTicker(worker.database, elector, [service], name=f"taskengine-{service.name}")
        for service in services
        if service.name in OWN_TICKER
    ]
    return [LeaderService(elector, tickers)]
