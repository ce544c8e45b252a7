"""The permission and tenant matrix: anonymous, active non-staff, staff without a
permission, tenant A against tenant B, and the superuser — across the admin, the
console pages and the JSON API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from taskengine.models import ExecutionLog, Job, OperatorAction

from .conftest import make_job

pytestmark = pytest.mark.django_db

PAGES = [
    "/taskengine/",
    "/taskengine/jobs/",
    "/taskengine/jobs/{id}/",
    "/taskengine/queues/",
    "/taskengine/workers/",
    "/taskengine/schedules/",
    "/taskengine/audit/",
    "/taskengine/reconcile/",
    "/taskengine/backfill/",
]
API_GETS = [
    "/taskengine/api/v1/summary",
    "/taskengine/api/v1/jobs",
    "/taskengine/api/v1/jobs/{id}",
    "/taskengine/api/v1/queues",
    "/taskengine/api/v1/workers",
    "/taskengine/api/v1/schedules",
]
ACTIONS = ["requeue", "cancel", "retry"]


def state(job: Job) -> str:
    return Job.objects.get(pk=job.pk).state


# --- anonymous and non-staff -----------------------------------------------------------


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_is_sent_to_the_admin_login(jobs, url):
    response = Client().get(url.format(id=jobs["a_failed"].pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", API_GETS)
def test_anonymous_api_call_is_refused_with_json(jobs, url):
    response = Client().get(url.format(id=jobs["a_failed"].pk))
    assert response.status_code == 403
    assert "authentication required" in response.json()["error"]


@pytest.mark.parametrize("url", PAGES)
def test_active_non_staff_user_is_refused_pages(client_for, jobs, url):
    response = client_for("outsider").get(url.format(id=jobs["a_failed"].pk))
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", API_GETS)
def test_active_non_staff_user_is_refused_the_api(client_for, jobs, url):
    response = client_for("outsider").get(url.format(id=jobs["a_failed"].pk))
    assert response.status_code == 403 and response.json() == {"error": "staff access required"}


def test_active_non_staff_user_cannot_act(client_for, jobs):
    client = client_for("outsider")
    job = jobs["a_queued"]
    assert client.post(f"/taskengine/api/v1/jobs/{job.pk}/cancel").status_code == 403
    assert client.post(f"/taskengine/jobs/{job.pk}/cancel/").status_code == 302
    assert state(job) == "queued"


def test_inactive_staff_user_is_refused(users, jobs):
    user = User.objects.create_user("gone", password="pw", is_staff=True, is_active=False)
    client = Client()
    client.force_login(user)
    assert client.get("/taskengine/api/v1/summary").status_code == 403


# --- staff without a permission ----------------------------------------------------------


def test_actions_are_hidden_from_staff_without_permission(client_for, jobs):
    client = client_for("viewer")
    detail = client.get(f"/taskengine/jobs/{jobs['a_failed'].pk}/").content.decode()
    assert "/requeue/" not in detail and "/cancel/" not in detail
    assert client.get(f"/taskengine/api/v1/jobs/{jobs['a_queued'].pk}").json()["actions"] == {
        "requeue": False,
        "retry": False,
        "cancel": False,
    }
    changelist = client.get("/admin/taskengine/job/").content.decode()
    for action in ("requeue_jobs", "retry_jobs_now", "cancel_jobs"):
        assert action not in changelist


def test_actions_are_shown_to_staff_with_permission(client_for, jobs):
    client = client_for("alice")
    detail = client.get(f"/taskengine/jobs/{jobs['a_failed'].pk}/").content.decode()
    assert "/requeue/" in detail and "/cancel/" not in detail  # failed: requeue only
    changelist = client.get("/admin/taskengine/job/").content.decode()
    assert "requeue_jobs" in changelist and "cancel_jobs" in changelist


@pytest.mark.parametrize("action,job_key", [("cancel", "a_queued"), ("requeue", "a_failed")])
def test_forged_post_without_permission_changes_nothing(client_for, jobs, action, job_key):
    client = client_for("viewer")
    job = jobs[job_key]
    before = state(job)
    api = client.post(f"/taskengine/api/v1/jobs/{job.pk}/{action}")
    assert api.status_code == 403 and "permission" in api.json()["error"]
    page = client.post(f"/taskengine/jobs/{job.pk}/{action}/")
    assert page.status_code == 403
    admin_action = client.post(
        "/admin/taskengine/job/",
        {"action": f"{action}_jobs", "_selected_action": [job.pk], "index": 0, "confirm": "yes"},
    )
    assert admin_action.status_code in (200, 302)
    assert state(job) == before
    assert not OperatorAction.objects.exists()


# --- tenant A against tenant B ------------------------------------------------------------


def test_tenant_a_lists_only_its_jobs_everywhere(client_for, jobs):
    client = client_for("alice")
    mine = {str(j.pk) for k, j in jobs.items() if k.startswith("a_")}
    theirs = {str(j.pk) for k, j in jobs.items() if k.startswith("b_")}
    api_ids = {str(r["id"]) for r in client.get("/taskengine/api/v1/jobs").json()["results"]}
    assert api_ids == mine
    page = client.get("/taskengine/jobs/").content.decode()
    admin_page = client.get("/admin/taskengine/job/").content.decode()
    for pk in theirs:
        assert f'data-job-id="{pk}"' not in page
        assert f"/admin/taskengine/job/{pk}/change/" not in admin_page
    for pk in mine:
        assert f'data-job-id="{pk}"' in page
        assert f"/admin/taskengine/job/{pk}/change/" in admin_page


def test_tenant_a_cannot_view_tenant_b_job(client_for, jobs):
    client = client_for("alice")
    other = jobs["b_failed"]
    assert client.get(f"/taskengine/jobs/{other.pk}/").status_code == 404
    api = client.get(f"/taskengine/api/v1/jobs/{other.pk}")
    assert api.status_code == 404 and api.json() == {"error": f"no job {other.pk}"}
    admin_detail = client.get(f"/admin/taskengine/job/{other.pk}/change/", follow=True)
    assert b"doesn" in admin_detail.content  # "Job with ID … doesn't exist"
    assert b"worker-of-b" not in admin_detail.content
    log = ExecutionLog.objects.create(job=other, attempt=1, worker_id="worker-of-b", started_at=other.enqueued_at)
    assert b"worker-of-b" not in client.get("/admin/taskengine/executionlog/").content
    assert b"worker-of-b" in client_for("bob").get("/admin/taskengine/executionlog/").content
    hidden = client.get(f"/admin/taskengine/executionlog/{log.pk}/change/", follow=True)
    assert b"worker-of-b" not in hidden.content


@pytest.mark.parametrize("action,job_key", [("cancel", "b_queued"), ("requeue", "b_failed"), ("retry", "b_queued")])
def test_tenant_a_cannot_act_on_tenant_b_job(client_for, jobs, action, job_key):
    client = client_for("alice")
    job = jobs[job_key]
    before = state(job)
    assert client.post(f"/taskengine/api/v1/jobs/{job.pk}/{action}").status_code == 404
    assert client.post(f"/taskengine/jobs/{job.pk}/{action}/").status_code == 404
    client.post(
        "/admin/taskengine/job/",
        {"action": f"{action}_jobs", "_selected_action": [job.pk], "index": 0, "confirm": "yes"},
    )
    assert state(job) == before
    assert not OperatorAction.objects.exists()


def test_tenant_a_cannot_read_tenant_b_audit(client_for, jobs):
    client_for("bob").post(f"/taskengine/api/v1/jobs/{jobs['b_failed'].pk}/requeue", {"reason": "bob-secret"})
    assert OperatorAction.objects.filter(tenant="b").count() == 1
    client = client_for("alice")
    assert b"bob-secret" not in client.get("/taskengine/audit/").content
    assert b"bob-secret" not in client.get(f"/taskengine/jobs/{jobs['b_failed'].pk}/").content
    admin_list = client.get("/admin/taskengine/operatoraction/").content.decode()
    row = OperatorAction.objects.get()
    assert f"/admin/taskengine/operatoraction/{row.pk}/change/" not in admin_list
    assert b"bob-secret" not in client.get(f"/admin/taskengine/operatoraction/{row.pk}/change/", follow=True).content
    # bob sees his own audit entry
    assert b"bob-secret" in client_for("bob").get("/taskengine/audit/").content


def test_tenant_scoped_dashboard_counts_only_own_jobs(client_for, jobs):
    make_job("failed", tenant="b")
    counts = client_for("alice").get("/taskengine/api/v1/summary").json()["counts"]["by_state"]
    assert counts["failed"]["value"] == 1
    counts = client_for("bob").get("/taskengine/api/v1/summary").json()["counts"]["by_state"]
    assert counts["failed"]["value"] == 2


def test_superuser_sees_every_tenant(client_for, jobs):
    client = client_for("root")
    ids = {r["id"] for r in client.get("/taskengine/api/v1/jobs").json()["results"]}
    assert ids == {j.pk for j in jobs.values()}
    assert client.get(f"/taskengine/jobs/{jobs['b_failed'].pk}/").status_code == 200
    assert client.post(f"/taskengine/api/v1/jobs/{jobs['b_queued'].pk}/cancel").status_code == 200
    assert state(jobs["b_queued"]) == "cancelled"


def test_staff_without_tenants_sees_no_jobs(users, jobs):
    lonely = User.objects.create_user("lonely", password="pw", is_staff=True)
    client = Client()
    client.force_login(lonely)
    assert client.get("/taskengine/api/v1/jobs").json()["results"] == []
    assert client.get(f"/taskengine/jobs/{jobs['a_failed'].pk}/").status_code == 404
