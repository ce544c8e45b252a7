"""Database gauges for /metrics: queue depth and oldest queued age per queue, running
jobs and expired leases per queue, whether the queue is paused, leader term and presence, live workers and the
migration gate. Served by the web's /metrics (``metrics_view``, routed in
project/urls.py); workers export only their own process metrics (taskengine.metrics).

Invariants:
- Registering runs no query: ``describe()`` names the families without collecting.
- A scrape is cheap on a table of millions of rows: every query is bounded (see
  db/<vendor>/metrics.sql — capped index-only counts and index probes on
  taskengine_job_claim_idx / taskengine_job_worker_idx), and one reading is reused for
  ``METRICS_CACHE_SECONDS``, so parallel or frequent scrapes cost one set of queries.
- Read-only: SELECT and EXPLAIN only, outside any transaction the collector opens.
- While the migration gate is closed no taskengine table is read; only the gate gauge
  (0) and the collector's own health are reported.
- A failing query never breaks /metrics: it counts in
  ``taskengine_db_errors_total{operation="metrics"}``, the table gauges are left out of
  that scrape and ``taskengine_metrics_collect_success`` reads 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from taskengine import gate
from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.db.queries import sql
from taskengine.engine_task import EngineTask
from taskengine.observability import metrics

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

logger = logging.getLogger("taskengine.metrics")


@dataclass
class QueueReading:
    depth: float = 0.0
    oldest_age_seconds: float = 0.0
    running: float = 0.0
    expired_leases: float = 0.0
    oldest_running_seconds: float = 0.0
    paused: float = 0.0


@dataclass
class Reading:
    """One snapshot of the database gauges. ``ok`` is False when a query failed."""

    database: str
    gate_open: bool
    ok: bool = True
    duration: float = 0.0
    queues: dict[str, QueueReading] = field(default_factory=dict)
    leaders: list[tuple[str, int, bool]] = field(default_factory=list)
    workers_alive: int | None = None


FAMILIES: dict[str, tuple[str, list[str]]] = {
    "taskengine_queue_depth": (
        "Jobs queued per queue (exact up to METRICS_DEPTH_EXACT_LIMIT, estimated above).",
        ["queue"],
    ),
    "taskengine_oldest_queued_age_seconds": (
        "Seconds the oldest due queued job of the queue has waited past its run_after (0: none due).",
        ["queue"],
    ),
    "taskengine_queue_running": ("Jobs in state running per queue (database, all workers).", ["queue"]),
    "taskengine_expired_leases": (
        "Running jobs whose lease has expired and that recovery has not swept yet.",
        ["queue"],
    ),
    "taskengine_oldest_running_seconds": ("Seconds since the oldest running attempt of the queue started.", ["queue"]),
    "taskengine_queue_paused": ("1 while an operator (or the settings) paused the queue, else 0.", ["queue"]),
    "taskengine_leader_term": ("Fencing term of the current leader lease, per election name.", ["name"]),
    "taskengine_leader_present": ("1 while the election has a leader whose lease is live, else 0.", ["name"]),
    "taskengine_workers_alive": ("Workers running or draining with a fresh heartbeat.", []),
    "taskengine_migration_gate_open": ("1 when the database is at the head of the migrations, else 0.", ["database"]),
    "taskengine_metrics_collect_success": ("1 when the last database reading for /metrics succeeded, else 0.", []),
    "taskengine_metrics_collect_duration_seconds": ("Time the last database reading for /metrics took.", []),
}
_QUEUE_FIELDS = {
    "taskengine_queue_depth": "depth",
    "taskengine_oldest_queued_age_seconds": "oldest_age_seconds",
    "taskengine_queue_running": "running",
    "taskengine_expired_leases": "expired_leases",
    "taskengine_oldest_running_seconds": "oldest_running_seconds",
    "taskengine_queue_paused": "paused",
}


class EngineCollector:
    """A prometheus_client collector over the engine's tables on one database alias."""

    def __init__(self, database: str | None = None) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._cached: Reading | None = None
        self._cached_at = 0.0
        self._failing = False

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, labels) in FAMILIES.items():
            yield GaugeMetricFamily(name, doc, labels=labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from families(self.reading())

    def reading(self) -> Reading:
        with self._lock:
            now = time.monotonic()  # cache age only; no lease or schedule depends on it
            if self._cached is None or now - self._cached_at >= float(engine_settings.METRICS_CACHE_SECONDS):
                self._cached = self._read()
                self._cached_at = time.monotonic()
            return self._cached

    def _read(self) -> Reading:
        alias = self.database or engine_settings.DATABASE
        started = time.perf_counter()
        reading = Reading(database=alias, gate_open=False)
        try:
            reading.gate_open = gate.is_ready(alias)
            if reading.gate_open:
                read_tables(connections[alias], reading)
        except Exception as exc:
            metrics.DB_ERRORS.labels("metrics").inc()
            reading.ok = False
            reading.queues, reading.leaders, reading.workers_alive = {}, [], None
            if not self._failing:
                logger.warning("metrics: reading the job tables failed: %s", exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("metrics: reading the job tables works again")
            self._failing = False
        reading.duration = time.perf_counter() - started
        return reading


def known_queues() -> list[str]:
    """Queues named in the TASKS settings of taskengine backends (no database): the
    backends whose tasks are EngineTasks (backend.DatabaseBackend's ``task_class``; the
    backend module itself reports to these metrics, so it is not imported here)."""
    from taskengine.compat import task_backends

    names: set[str] = set()
    for backend in task_backends.all():
        if issubclass(backend.task_class, EngineTask):
            names.update(backend.queues)
    return sorted(names)


def read_tables(connection: BaseDatabaseWrapper, reading: Reading) -> None:
    """Fill ``reading`` from the bounded queries of db/<vendor>/metrics.sql."""
    max_queues = int(engine_settings.METRICS_MAX_QUEUES)
    cap = int(engine_settings.METRICS_DEPTH_EXACT_LIMIT)
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "metrics_queued_queues"), {"max_queues": max_queues})
        names = sorted(set(known_queues()) | {row[0] for row in cursor.fetchall()})[:max_queues]
        for name in names:
            reading.queues[name] = queue_reading(connection, cursor, name, cap)
        cursor.execute(sql(connection, "metrics_running_stats"), {"cap": cap, "max_queues": max_queues})
        for name, running, expired, oldest in cursor.fetchall():
            if name in reading.queues or len(reading.queues) < max_queues:
                q = reading.queues.setdefault(name, QueueReading())
                q.running, q.expired_leases, q.oldest_running_seconds = running, expired or 0, max(0.0, oldest or 0)
        cursor.execute(sql(connection, "metrics_queues_paused"), {"max_queues": max_queues})
        for (name,) in cursor.fetchall():
            if name in reading.queues or len(reading.queues) < max_queues:
                reading.queues.setdefault(name, QueueReading()).paused = 1.0
        cursor.execute(sql(connection, "metrics_leaders"))
        reading.leaders = [(name, int(term), bool(present)) for name, term, present in cursor.fetchall()]
        cursor.execute(
            sql(connection, "metrics_workers_alive"), {"dead_after": float(engine_settings.WORKER_DEAD_AFTER_SECONDS)}
        )
        reading.workers_alive = int(cursor.fetchone()[0])


def queue_reading(connection: BaseDatabaseWrapper, cursor: CursorWrapper, name: str, cap: int) -> QueueReading:
    cursor.execute(sql(connection, "metrics_queue_stats"), {"queue": name, "cap": cap})
    depth, age = cursor.fetchone()
    depth = store_for(connection).queue_depth(connection, cursor, name, depth, cap)
    return QueueReading(depth=float(depth), oldest_age_seconds=max(0.0, float(age or 0)))


def families(reading: Reading) -> Iterator[GaugeMetricFamily]:
    made = {name: GaugeMetricFamily(name, doc, labels=labels) for name, (doc, labels) in FAMILIES.items()}
    made["taskengine_migration_gate_open"].add_metric([reading.database], 1 if reading.gate_open else 0)
    made["taskengine_metrics_collect_success"].add_metric([], 1 if reading.ok else 0)
    made["taskengine_metrics_collect_duration_seconds"].add_metric([], reading.duration)
    for queue, q in sorted(reading.queues.items()):
        for family, attr in _QUEUE_FIELDS.items():
            made[family].add_metric([queue], float(getattr(q, attr)))
    for name, term, present in reading.leaders:
        made["taskengine_leader_term"].add_metric([name], term)
        made["taskengine_leader_present"].add_metric([name], 1 if present else 0)
    if reading.workers_alive is not None:
        made["taskengine_workers_alive"].add_metric([], reading.workers_alive)
    for metric_family in made.values():
        if metric_family.samples:
            yield metric_family


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The web's /metrics: django-prometheus's exporter view, with the database gauges
    registered on first use. Registering here rather than at import keeps them out of
    processes that merely import the URLconf (runworker's system checks do): workers
    export only their own process metrics. In prometheus_client's multiprocess mode
    (PROMETHEUS_MULTIPROC_DIR) the merged per-process files are served with the gauges
    read live by the answering process."""
    import os

    from django.http import HttpResponse
    from django_prometheus.exports import ExportToDjangoView
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, multiprocess

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and "prometheus_multiproc_dir" not in os.environ:
        register()
        response: HttpResponse = ExportToDjangoView(request)
        return response
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    registry.register(_multiprocess_collector)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


_multiprocess_collector = EngineCollector()  # keeps its cache across requests
_registered: dict[int, EngineCollector] = {}
_register_lock = threading.Lock()


def register(registry: CollectorRegistry = REGISTRY, database: str | None = None) -> EngineCollector:
    """Add the database gauges to ``registry`` once (idempotent; runs no query)."""
    with _register_lock:
        collector = _registered.get(id(registry))
        if collector is None:
            collector = _registered[id(registry)] = EngineCollector(database)
            registry.register(collector)
        return collector
