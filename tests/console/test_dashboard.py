"""Dashboard and list pages: counts (bounded), the chart's data, oldest due job, the
migration-gate banner, keyset pages on the job list, placeholders."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Now

from taskengine import gate
from taskengine.console import counts
from taskengine.models import Job, Leader, WorkerProcess
from tests.conftest import database_vendor

from .conftest import make_job

pytestmark = pytest.mark.django_db


def test_bounded_count_is_exact_below_the_bound(jobs):
    result = counts.bounded_count(Job.objects.all(), limit=1000)
    assert (result.value, result.exact, result.kind, result.display()) == (10, True, "exact", "10")


def test_bounded_count_above_the_bound_is_an_estimate_or_a_lower_bound(jobs):
    result = counts.bounded_count(Job.objects.all(), limit=4)
    assert result.exact is False
    if database_vendor() == "postgresql":
        assert result.kind == "estimate" and result.value >= 5 and result.display().startswith("≈")
    else:
        assert (result.kind, result.value, result.display()) == ("at_least", 4, "4+")


def test_filter_choices_come_from_index_walks_and_recent_rows(jobs):
    make_job("queued", tenant="c", queue="emails", task_path="tests.tasks.noop")
    make_job("failed", tenant="d", queue="reports")
    assert counts.queued_queues() == ["default", "emails"]  # queues with queued jobs
    assert counts.distinct_tenants() == ["a", "b", "c", "d"]
    assert counts.distinct_tenants(limit=2) == ["a", "b"]
    assert counts.recent_values(Job.objects.all(), "task_path") == ["tests.tasks.add", "tests.tasks.noop"]
    assert counts.recent_values(Job.objects.all(), "task_path", sample=1) == ["tests.tasks.add"]


def test_dashboard_shows_counts_workers_leader_and_chart_hook(client_for, jobs):
    WorkerProcess.objects.create(worker_id="w-live", host="h", pid=1, queues=["default"], concurrency=4)
    WorkerProcess.objects.create(
        worker_id="w-dead",
        host="h",
        pid=2,
        queues=["default"],
        concurrency=4,
        last_heartbeat_at=Now() - timedelta(hours=1),
    )
    Leader.objects.create(name="maintenance", holder="w-live", term=7, expires_at=Now() + timedelta(seconds=30))
    make_job("queued", run_after=Now() - timedelta(minutes=10))
    body = client_for("alice").get("/taskengine/").content.decode()
    assert 'id="te-chart" data-summary-url="/taskengine/api/v1/summary"' in body
    assert "taskengine/dashboard.js" in body and "//cdn" not in body and "https://" not in body
    assert "w-live" in body and "w-dead" not in body and "term 7" in body
    assert '<p id="te-oldest">6' in body  # ~600 s
    assert 'href="/taskengine/jobs/?state=queued"' in body
    assert "Migration gate closed" not in body


def test_summary_counts_failures_per_minute_for_the_chart(client_for, jobs):
    make_job("failed", finished_at=Now() - timedelta(minutes=5))
    make_job("succeeded", finished_at=Now() - timedelta(hours=3))  # outside the hour
    buckets = client_for("root").get("/taskengine/api/v1/summary").json()["throughput"]["buckets"]
    assert sum(b["failed"] for b in buckets) == 3 and sum(b["succeeded"] for b in buckets) == 2
    assert sum(1 for b in buckets if b["failed"]) == 2


def test_closed_gate_shows_a_banner_with_the_reason(client_for, jobs, monkeypatch):
    monkeypatch.setattr(gate, "is_ready", lambda alias="default", **kw: False)
    monkeypatch.setattr(
        gate,
        "status",
        lambda alias="default": gate.GateStatus(alias=alias, ready=False, pending=["taskengine.0099_future"]),
    )
    body = client_for("root").get("/taskengine/").content.decode()
    assert "Migration gate closed" in body and "taskengine.0099_future" in body
    summary = client_for("root").get("/taskengine/api/v1/summary").json()["gate"]
    assert summary["ready"] is False and summary["pending"] == ["taskengine.0099_future"]


def test_job_list_pages_by_keyset_and_keeps_filters(client_for, jobs):
    extra = [make_job("failed", tenant="a") for _ in range(4)]
    client = client_for("alice")
    first = client.get("/taskengine/jobs/?state=failed&limit=2").content.decode()
    newest = sorted([j.pk for j in extra] + [jobs["a_failed"].pk], reverse=True)
    assert f'data-job-id="{newest[0]}"' in first and f'data-job-id="{newest[2]}"' not in first
    assert f"state=failed&amp;limit=2&amp;after={newest[1]}" in first
    second = client.get(f"/taskengine/jobs/?state=failed&limit=2&after={newest[1]}").content.decode()
    assert f'data-job-id="{newest[2]}"' in second and f'data-job-id="{newest[3]}"' in second
    assert f"before={newest[2]}" in second
    assert "Matching jobs: " in first and ">5<" in first


def test_job_list_with_invalid_filter_shows_the_error(client_for, jobs):
    body = client_for("alice").get("/taskengine/jobs/?state=nonsense").content.decode()
    assert "errornote" in body and "data-job-id" not in body


def test_reconcile_and_backfill_pages_are_linked_from_the_console(client_for):
    client = client_for("root")
    body = client.get("/taskengine/").content.decode()
    assert 'href="/taskengine/reconcile/"' in body and 'href="/taskengine/backfill/"' in body


def test_console_action_buttons_post_and_redirect_with_a_message(client_for, jobs):
    client = client_for("alice")
    job = jobs["a_queued"]
    response = client.post(f"/taskengine/jobs/{job.pk}/cancel/", {"reason": "button"}, follow=True)
    assert response.redirect_chain[-1] == (f"/taskengine/jobs/{job.pk}/", 303)
    body = response.content.decode()
    assert f"Cancelled job {job.pk}." in body and "te-audit-row" in body and "button" in body
    again = client.post(f"/taskengine/jobs/{job.pk}/cancel/", follow=True).content.decode()
    assert "already cancelled" in again
    assert client.post(f"/taskengine/jobs/{job.pk}/explode/").status_code == 404


@pytest.mark.postgres
def test_a_slow_count_gives_way_to_the_estimate_and_restores_the_timeout(jobs, monkeypatch):
    from django.db import connection

    monkeypatch.setattr(counts, "COUNT_TIMEOUT_MS", 1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', '12345ms', false)")
    slow = Job.objects.extra(where=["pg_sleep(0.05) IS NOT NULL"])  # each row sleeps 50 ms
    result = counts.bounded_count(slow, limit=1_000_000)
    assert (result.kind, result.exact) == ("estimate", False)
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "12345ms"
        cursor.execute("SELECT set_config('statement_timeout', '0', false)")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_slow_count_in_autocommit_gives_way_to_the_estimate(monkeypatch):
    from django.db import connection

    make_job("queued")
    monkeypatch.setattr(counts, "COUNT_TIMEOUT_MS", 1)
    slow = Job.objects.extra(where=["pg_sleep(0.05) IS NOT NULL"])
    assert counts.bounded_count(slow, limit=1_000_000).kind == "estimate"
    with connection.cursor() as cursor:  # the timeout ended with the count's transaction
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
    assert counts.bounded_count(Job.objects.all(), limit=1_000_000).display() == "1"
