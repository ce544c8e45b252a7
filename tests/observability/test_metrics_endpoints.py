"""Jobs run through a real runworker subprocess; then the web /metrics (live_server) and
the worker's --metrics-port are scraped over HTTP. The counters of both processes add
up, histograms have observations, promtool accepts both scrapes, and scraping writes
nothing."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.db.models.functions import Now
from django.utils import timezone

from taskengine.models import ExecutionLog, Job, Leader, WorkerProcess
from tests import tasks
from tests.conftest import wait_for
from tests.observability.promscrape import (
    Samples,
    free_port,
    listening_addresses,
    promtool_check_metrics,
    scrape,
    try_scrape,
)

FINISHED = ("taskengine_jobs_succeeded_total", "taskengine_jobs_failed_total", "taskengine_jobs_cancelled_total")


@pytest.fixture
def fresh_db_gauges(settings):
    """Read the database on every scrape (no cached reading from an earlier test)."""
    settings.TASKENGINE = {**settings.TASKENGINE, "METRICS_CACHE_SECONDS": 0}


def start_worker(worker_process, port: int):
    worker = worker_process(
        "--metrics-port",
        str(port),
        "--concurrency",
        "4",
        "--lease-seconds",
        "10",
        "--backoff-base",
        "0.05",
        "--max-backoff",
        "0.2",
        "--shutdown-grace",
        "0.5",
    )
    wait_for(lambda: try_scrape(f"http://127.0.0.1:{port}/metrics"), timeout=30, message="worker /metrics")
    return worker


def run_mixed_jobs(tmp_path: Path, worker_process, port: int):
    """9 jobs: 5 succeed (one after a retry), 1 fails, 1 is cancelled while running,
    1 is due in an hour (queued), 1 is still running when the scrapes happen."""
    for i in range(4):
        tasks.add.enqueue(i, 1)
    tasks.boom.enqueue()
    tasks.fail_until.enqueue(2)
    tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(0, 0)
    to_cancel = tasks.cooperative_sleep.enqueue(60)
    held = tasks.sleep_then_record.enqueue(str(tmp_path), "held", 60)
    worker = start_worker(worker_process, port)
    worker_url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(
            lambda: Job.objects.filter(pk=to_cancel.id, state="running").exists(), timeout=60, message="job to start"
        )
        Job.objects.filter(pk=to_cancel.id).update(cancel_requested_at=Now())  # what the console's cancel writes
        wait_for(lambda: (tmp_path / "held.started").exists(), timeout=60, message="held job to start")
        wait_for(
            lambda: Job.objects.filter(state__in=["succeeded", "failed", "cancelled"]).count() == 7,
            timeout=60,
            message="7 jobs to finish",
        )
        wait_for(
            lambda: sum(Samples(scrape(worker_url)).sum(n) for n in FINISHED) == 7,
            timeout=30,
            message="worker counters",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\njobs: {list(Job.objects.values_list('id', 'task_path', 'state'))}"
            f"\nworker log:\n{worker.log()[-5000:]}"
        ) from None
    return worker, worker_url, held


@pytest.mark.django_db(transaction=True)
def test_counters_add_up_across_the_web_and_worker_scrapes(live_server, worker_process, tmp_path, fresh_db_gauges):
    web_url = f"{live_server.url}/metrics"
    before = Samples(scrape(web_url))
    port = free_port()
    _worker, worker_url, _held = run_mixed_jobs(tmp_path, worker_process, port)

    web, work = Samples(scrape(web_url)), Samples(scrape(worker_url))
    submitted = web.sum("taskengine_jobs_submitted_total") - before.sum("taskengine_jobs_submitted_total")
    assert submitted == 9
    assert work.sum("taskengine_jobs_succeeded_total") == 5
    assert work.sum("taskengine_jobs_failed_total", task="tests.tasks.boom") == 1
    assert work.sum("taskengine_jobs_cancelled_total", task="tests.tasks.cooperative_sleep") == 1
    assert work.sum("taskengine_jobs_retried_total", task="tests.tasks.fail_until") == 1
    queued, running = web.sum("taskengine_queue_depth"), web.sum("taskengine_queue_running")
    assert (queued, running) == (1, 1)
    assert work.sum("taskengine_jobs_running") == running
    finished = sum(work.sum(name) for name in FINISHED)
    assert submitted == finished + queued + running
    # The worker exports its own process metrics, not the database gauges.
    assert "taskengine_queue_depth" not in work.names()
    assert work.sum("taskengine_worker_slots") == 4
    assert listening_addresses(port) == {"127.0.0.1"}  # --metrics-host defaults to loopback


@pytest.mark.django_db(transaction=True)
def test_histograms_observe_claims_and_attempts_and_promtool_accepts_both_scrapes(
    live_server, worker_process, tmp_path, fresh_db_gauges
):
    port = free_port()
    run_mixed_jobs(tmp_path, worker_process, port)
    web_text, worker_text = scrape(f"{live_server.url}/metrics"), scrape(f"http://127.0.0.1:{port}/metrics")
    work = Samples(worker_text)
    assert work.sum("taskengine_claim_latency_seconds_count") >= 1
    assert work.sum("taskengine_claim_latency_seconds_sum") > 0
    # 4 adds + boom + 2 attempts of fail_until + the cancelled attempt.
    assert work.sum("taskengine_job_duration_seconds_count", queue="default") == 8
    assert work.sum("taskengine_job_duration_seconds_bucket", queue="default", le="+Inf") == 8
    web = Samples(web_text)
    assert web.sum("django_http_requests_total_by_method_total", method="GET") >= 1
    assert web.sum("django_db_execute_total") >= 1  # django-prometheus database backend
    assert web.sum("taskengine_migration_gate_open", database="default") == 1
    assert web.sum("taskengine_workers_alive") == 1
    assert web.sum("taskengine_oldest_running_seconds", queue="default") > 0
    for text in (web_text, worker_text):
        done = promtool_check_metrics(text)
        assert done.returncode == 0, done.stdout + done.stderr


def record_statements(statements: list[str]):
    def wrapper(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    def on_connect(sender, connection, **kwargs):
        connection.execute_wrappers.append(wrapper)

    return on_connect


def row_counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (Job, ExecutionLog, WorkerProcess, Leader))


@pytest.mark.django_db(transaction=True)
def test_scraping_the_web_metrics_issues_no_writes(live_server, fresh_db_gauges):
    tasks.add.enqueue(1, 2)
    tasks.add.using(queue_name="demo", priority=5).enqueue(3, 4)
    counts = row_counts()
    statements: list[str] = []
    receiver = record_statements(statements)
    connection_created.connect(receiver)
    try:
        for alias in connections:  # the live server opens a new connection per request
            connections[alias].close()
        for _ in range(3):
            text = scrape(f"{live_server.url}/metrics")
    finally:
        connection_created.disconnect(receiver)
    assert Samples(text).sum("taskengine_queue_depth") == 2
    assert any("taskengine_job" in s for s in statements), "the collector's queries were not seen"
    writes = [s for s in statements if not re.match(r"\s*(--[^\n]*\n\s*)*(SELECT|WITH|EXPLAIN)\b", s, re.I)]
    assert writes == []
    assert row_counts() == counts
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM taskengine_job WHERE state <> 'queued'")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_waiting_on_the_migration_gate_is_scrapeable_and_reports_it(worker_process):
    from django.core.management import call_command

    call_command("migrate", "taskengine", "0001_initial", verbosity=0)
    try:
        port = free_port()
        worker = worker_process("--metrics-port", str(port), "--backoff-base", "0.05")
        url = f"http://127.0.0.1:{port}/metrics"
        waiting = Samples(wait_for(lambda: try_scrape(url), timeout=30, message="worker /metrics"))
        assert waiting.sum("taskengine_worker_gate_open") == 0
        assert worker.proc.poll() is None
    finally:
        call_command("migrate", "taskengine", verbosity=0)
    wait_for(
        lambda: Samples(scrape(url)).sum("taskengine_worker_gate_open") == 1,
        timeout=30,
        message="worker to pass the gate",
    )
