"""The database gauges (taskengine.collectors) against the real database: what they
report, that registering runs no query, that a closed migration gate keeps them off the
job tables, that errors are counted instead of breaking /metrics, and that they stay on
the indexes on a large table."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry

from taskengine import store
from taskengine.db.queries import sql
from taskengine.models import Job, Leader, WorkerProcess
from taskengine.observability import collectors
from tests import tasks
from tests.observability.promscrape import Samples


@pytest.fixture
def no_cache(settings):
    settings.TASKENGINE = {**settings.TASKENGINE, "METRICS_CACHE_SECONDS": 0}


def gauges(collector: collectors.EngineCollector) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples}


def queue_value(values, name: str, queue: str) -> float:
    return values[(name, (("queue", queue),))]


def db_errors() -> float:
    return REGISTRY.get_sample_value("taskengine_db_errors_total", {"operation": "metrics"}) or 0.0


def test_registering_the_collector_runs_no_query():
    # No django_db mark: any database access here would raise (and be counted).
    errors = db_errors()
    registry = CollectorRegistry()
    collector = collectors.register(registry)
    assert collectors.register(registry) is collector
    assert collector._cached is None
    assert db_errors() == errors
    assert "taskengine_queue_depth" in registry._names_to_collectors


@pytest.mark.django_db
def test_queue_depth_and_oldest_due_age_are_reported_per_queue(no_cache):
    old = tasks.add.using(priority=-5).enqueue(1, 1)
    tasks.add.using(priority=10).enqueue(1, 1)
    tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=old.id).update(run_after=Now() - timedelta(seconds=120))
    tasks.add.using(queue_name="demo", run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    Job.objects.create(task_path="tests.tasks.noop", queue="unlisted")  # a queue not in TASKS
    values = gauges(collectors.EngineCollector())
    assert queue_value(values, "taskengine_queue_depth", "default") == 3
    assert 60 <= queue_value(values, "taskengine_oldest_queued_age_seconds", "default") < 240
    assert queue_value(values, "taskengine_queue_depth", "demo") == 1
    assert queue_value(values, "taskengine_oldest_queued_age_seconds", "demo") == 0  # nothing due yet
    assert queue_value(values, "taskengine_queue_depth", "unlisted") == 1
    assert values[("taskengine_metrics_collect_success", ())] == 1


@pytest.mark.django_db
def test_queue_depth_beyond_the_exact_limit_is_capped_or_estimated(settings, no_cache):
    settings.TASKENGINE = {**settings.TASKENGINE, "METRICS_DEPTH_EXACT_LIMIT": 3}
    tasks.add.get_backend().enqueue_many([(tasks.add, (i, i), {}) for i in range(6)])
    depth = queue_value(gauges(collectors.EngineCollector()), "taskengine_queue_depth", "default")
    assert depth >= 3  # exact up to the cap, the planner's estimate (PostgreSQL) beyond it


@pytest.mark.django_db
def test_running_jobs_expired_leases_leader_and_workers_are_reported(no_cache):
    for _ in range(2):
        tasks.add.enqueue(1, 1)
    claimed = store.claim_jobs(connection, worker_id="w1", queues=["default"], limit=2, lease_seconds=60)
    Job.objects.filter(pk=claimed[0].id).update(lease_expires_at=Now() - timedelta(hours=1))
    Leader.objects.create(name="maintenance", holder="w1", term=7, expires_at="2000-01-01T00:00:00Z")
    Leader.objects.filter(name="maintenance").update(expires_at=Now() + timedelta(seconds=30))
    WorkerProcess.objects.create(worker_id="w1", host="h", pid=1, queues=["default"], concurrency=2)
    values = gauges(collectors.EngineCollector())
    assert queue_value(values, "taskengine_queue_running", "default") == 2
    assert queue_value(values, "taskengine_expired_leases", "default") == 1
    assert queue_value(values, "taskengine_queue_depth", "default") == 0
    assert values[("taskengine_leader_term", (("name", "maintenance"),))] == 7
    assert values[("taskengine_leader_present", (("name", "maintenance"),))] == 1
    assert values[("taskengine_workers_alive", ())] == 1


@pytest.mark.django_db
def test_a_reading_is_reused_within_the_cache_window(settings):
    settings.TASKENGINE = {**settings.TASKENGINE, "METRICS_CACHE_SECONDS": 60}
    collector = collectors.EngineCollector()
    with CaptureQueriesContext(connection) as first:
        gauges(collector)
    with CaptureQueriesContext(connection) as second:
        gauges(collector)
    assert len(first) > 0 and len(second) == 0


@pytest.fixture
def gate_closed(transactional_db):
    """A real closed gate: taskengine migrated back to 0001 (0002.. pending)."""
    call_command("migrate", "taskengine", "0001_initial", verbosity=0)
    try:
        yield
    finally:
        call_command("migrate", "taskengine", verbosity=0)


def test_no_job_table_is_read_while_the_migration_gate_is_closed(gate_closed, no_cache):
    with CaptureQueriesContext(connection) as queries:
        values = gauges(collectors.EngineCollector())
    assert values[("taskengine_migration_gate_open", (("database", "default"),))] == 0
    assert not any(name == "taskengine_queue_depth" for name, _ in values)
    assert not [q["sql"] for q in queries if "taskengine_" in q["sql"]]


@pytest.mark.django_db(transaction=True)
def test_a_failing_query_is_counted_and_metrics_are_still_served(monkeypatch, no_cache):
    def broken(conn, name):
        return "SELECT depth FROM taskengine_no_such_table" if name == "metrics_queued_queues" else sql(conn, name)

    monkeypatch.setattr(collectors, "sql", broken)
    errors = db_errors()
    response = Client().get("/metrics")
    assert response.status_code == 200
    scraped = Samples(response.content.decode())
    assert scraped.sum("taskengine_metrics_collect_success") == 0
    assert "taskengine_queue_depth" not in scraped.names()
    assert db_errors() == errors + 1


@pytest.mark.postgres
@pytest.mark.django_db
def test_queue_gauges_stay_on_the_indexes_of_a_large_table(no_cache):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after,"
            " enqueued_at, attempts, max_attempts, on_lease_expired, finished_at)"
            " SELECT 'tests.tasks.noop', 'default', CASE WHEN mod(g, 3) = 0 THEN 'bulk' ELSE 'default' END,"
            " mod(g, 5) - 2, '[]', '{}', CASE WHEN mod(g, 10) = 0 THEN 'succeeded' ELSE 'queued' END,"
            " now() - make_interval(secs => mod(g, 600)), now(), 0, 3, 'retry',"
            " CASE WHEN mod(g, 10) = 0 THEN now() END"
            " FROM generate_series(1, 60000) AS g"
        )
        cursor.execute("ANALYZE taskengine_job")
        plans = {}
        for name, params in (
            ("metrics_queued_queues", {"max_queues": 50}),
            ("metrics_queue_stats", {"queue": "default", "cap": 10000}),
            ("metrics_running_stats", {"cap": 10000, "max_queues": 50}),
        ):
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql(connection, name), params)
            plan = cursor.fetchone()[0]
            plans[name] = json.dumps(plan if not isinstance(plan, str) else json.loads(plan))
    for name, plan in plans.items():
        assert "Seq Scan" not in plan, f"{name} scans the table: {plan}"
    assert "taskengine_job_claim_idx" in plans["metrics_queue_stats"]
    assert '"Node Type": "Sort"' not in plans["metrics_queue_stats"]  # walks the index, stops at the cap
    assert "taskengine_job_claim_idx" in plans["metrics_queued_queues"]
    values = gauges(collectors.EngineCollector())
    assert queue_value(values, "taskengine_queue_depth", "default") >= 10000
    assert queue_value(values, "taskengine_queue_depth", "bulk") >= 10000
    assert 590 <= queue_value(values, "taskengine_oldest_queued_age_seconds", "bulk") < 700


@pytest.mark.django_db
def test_multiprocess_mode_still_serves_the_database_gauges(monkeypatch, tmp_path, no_cache):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    tasks.add.enqueue(1, 1)
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert Samples(response.content.decode()).sum("taskengine_queue_depth", queue="default") == 1


@pytest.mark.sqlite_only
@pytest.mark.django_db
def test_queue_gauges_search_the_indexes_on_sqlite():
    with connection.cursor() as cursor:
        for name, params in (
            ("metrics_queued_queues", {"max_queues": 50}),
            ("metrics_queue_stats", {"queue": "default", "cap": 10000}),
            ("metrics_running_stats", {"cap": 10000, "max_queues": 50}),
        ):
            cursor.execute("EXPLAIN QUERY PLAN " + sql(connection, name), params)
            steps = [row[-1] for row in cursor.fetchall()]
            job_steps = [s for s in steps if " job " in f"{s} "]
            assert job_steps and all("USING INDEX" in s for s in job_steps), (name, steps)
            if name == "metrics_queue_stats":
                assert not any("TEMP B-TREE" in s for s in steps), steps  # no sort of a whole queue
