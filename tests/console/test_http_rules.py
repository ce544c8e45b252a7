"""HTTP rules of every console endpoint: mutating endpoints refuse GET (405) and a POST
without a CSRF token (403); every page and GET endpoint issues no INSERT, UPDATE or
DELETE; user-controlled text renders escaped."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from taskengine.models import ExecutionLog, Job, MissedSlot, OperatorAction, Queue, Schedule

from .conftest import make_job

pytestmark = pytest.mark.django_db

MUTATING_API = [
    "/taskengine/api/v1/jobs/{id}/requeue",
    "/taskengine/api/v1/jobs/{id}/cancel",
    "/taskengine/api/v1/jobs/{id}/retry",
    "/taskengine/api/v1/queues/default/pause",
    "/taskengine/api/v1/queues/default/resume",
    "/taskengine/api/v1/bulk/1/cancel",
    "/taskengine/api/v1/queues/default/limits",
]
MUTATING_PAGES = [
    "/taskengine/jobs/{id}/requeue/",
    "/taskengine/jobs/{id}/cancel/",
    "/taskengine/jobs/{id}/retry/",
    "/taskengine/queues/default/pause/",
    "/taskengine/queues/default/resume/",
    "/taskengine/bulk/1/cancel/",
    "/taskengine/queues/default/limits/",
]
READ_URLS = [
    "/taskengine/",
    "/taskengine/jobs/",
    "/taskengine/jobs/?state=failed&queue=default&tenant=a&since=2020-01-01",
    "/taskengine/jobs/{id}/",
    "/taskengine/queues/",
    "/taskengine/workers/",
    "/taskengine/schedules/",
    "/taskengine/audit/",
    "/taskengine/reconcile/",
    "/taskengine/backfill/",
    "/taskengine/jobs/bulk/requeue/?state=failed&tenant=a",
    "/taskengine/jobs/bulk/cancel/",
    "/taskengine/bulk/",
    "/taskengine/api/v1/bulk",
    "/taskengine/api/v1/summary",
    "/taskengine/api/v1/jobs",
    "/taskengine/api/v1/jobs?state=failed&limit=2",
    "/taskengine/api/v1/jobs/{id}",
    "/taskengine/api/v1/queues",
    "/taskengine/api/v1/workers",
    "/taskengine/api/v1/schedules",
    "/admin/taskengine/job/",
    "/admin/taskengine/job/?state__exact=failed&tenant=a&queue=default",
    "/admin/taskengine/job/{id}/change/",
    "/admin/taskengine/executionlog/",
    "/admin/taskengine/operatoraction/",
    "/admin/taskengine/schedule/",
    "/admin/taskengine/workerprocess/",
    "/admin/taskengine/leader/",
    "/admin/taskengine/queue/",
]
WRITE_WORDS = ("INSERT", "UPDATE", "DELETE")


@pytest.mark.parametrize("url", MUTATING_API + MUTATING_PAGES)
def test_get_on_a_mutating_endpoint_is_405(client_for, jobs, url):
    job = jobs["a_queued"]
    response = client_for("alice").get(url.format(id=job.pk))
    assert response.status_code == 405
    if "/api/" in url:
        assert response.json()["error"].startswith("method GET not allowed") and response["Allow"] == "POST"
    assert Job.objects.get(pk=job.pk).state == "queued"


@pytest.mark.parametrize("url", MUTATING_API + MUTATING_PAGES)
def test_post_without_csrf_token_is_403(client_for, jobs, url):
    job = jobs["a_queued"]
    response = client_for("alice", csrf=True).post(url.format(id=job.pk))
    assert response.status_code == 403
    if "/api/" in url:
        assert "CSRF" in response.json()["error"]
    assert Job.objects.get(pk=job.pk).state == "queued"
    assert not OperatorAction.objects.exists()


def test_admin_action_without_csrf_token_is_403(client_for, jobs):
    job = jobs["a_queued"]
    response = client_for("alice", csrf=True).post(
        "/admin/taskengine/job/", {"action": "cancel_jobs", "_selected_action": [job.pk], "index": 0, "confirm": "yes"}
    )
    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).state == "queued"


def test_api_post_with_csrf_token_works(client_for, jobs):
    client = client_for("alice", csrf=True)
    client.get("/admin/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        f"/taskengine/api/v1/jobs/{jobs['a_queued'].pk}/cancel",
        data={"reason": "cleanup"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200, response.content
    assert OperatorAction.objects.get().reason == "cleanup"


@pytest.mark.parametrize("user", ["root", "alice"])
def test_pages_and_get_endpoints_never_write(client_for, jobs, user):
    job = jobs["a_failed"]
    ExecutionLog.objects.create(
        job=job,
        attempt=1,
        worker_id="w1",
        started_at=job.enqueued_at,
        finished_at=job.finished_at,
        outcome="failed",
        traceback="Traceback ...",
    )
    schedule = Schedule.objects.create(name="nightly", task_path="tests.tasks.noop", cron="0 3 * * *", tenant="a")
    MissedSlot.objects.create(schedule=schedule, slot=job.enqueued_at, reason="skip")
    make_job("succeeded", schedule=schedule, slot=job.enqueued_at)
    Queue.objects.create(name="demo", paused=True, paused_at=job.enqueued_at, paused_by="root", pause_reason="x")
    client = client_for(user)
    client.get("/admin/")  # let login-time session writes happen before capturing
    for url in READ_URLS:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url.format(id=job.pk))
        assert response.status_code == 200, url
        if url == "/taskengine/schedules/":
            assert b"nightly" in response.content and b"skip" in response.content
        writes = [q["sql"] for q in captured.captured_queries if q["sql"].lstrip().upper().startswith(WRITE_WORDS)]
        assert writes == [], f"{url} wrote: {writes}"


SCRIPT = "<script>alert('x')</script>"


def test_payload_and_traceback_with_script_render_escaped(client_for):
    job = make_job("failed", args=[SCRIPT], kwargs={"note": SCRIPT}, task_path="tests.tasks.boom")
    ExecutionLog.objects.create(
        job=job,
        attempt=1,
        worker_id="w1",
        started_at=job.enqueued_at,
        finished_at=job.finished_at,
        outcome="failed",
        error_class="ValueError",
        error_message=SCRIPT,
        traceback=f"Traceback\nValueError: {SCRIPT}",
    )
    client = client_for("root")
    for url in (
        f"/taskengine/jobs/{job.pk}/",
        f"/admin/taskengine/job/{job.pk}/change/",
        f"/admin/taskengine/executionlog/{ExecutionLog.objects.get().pk}/change/",
    ):
        body = client.get(url).content.decode()
        assert "<script>alert(" not in body, url
        assert "&lt;script&gt;alert(" in body, url
    api = client.get(f"/taskengine/api/v1/jobs/{job.pk}")
    assert api["Content-Type"] == "application/json"
    assert api.json()["args"] == [SCRIPT]


def test_long_traceback_is_truncated_to_its_end(client_for):
    job = make_job("failed")
    long_tb = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "RuntimeError: the real cause"
    ExecutionLog.objects.create(
        job=job, attempt=1, worker_id="w1", started_at=job.enqueued_at, traceback=long_tb, outcome="failed"
    )
    client = client_for("root")
    detail = client.get(f"/taskengine/api/v1/jobs/{job.pk}").json()["attempt_log"][0]["traceback"]
    assert detail["truncated"] is True and detail["length"] == len(long_tb)
    assert detail["text"].endswith("RuntimeError: the real cause") and len(detail["text"]) <= 4001
    page = client.get(f"/taskengine/jobs/{job.pk}/").content.decode()
    assert "RuntimeError: the real cause" in page and f"of {len(long_tb)} characters" in page
