"""Pause and resume from the console's queue page, the JSON API and the admin: POST only
(the 405 and CSRF rules are in test_http_rules), permission ``pause_queue``, tenant scope
(a shared queue needs a user who sees every tenant; a tenant's queue is its operators'
and absent for everyone else) and one audit row per change, in the same transaction."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from taskengine.models import OperatorAction, Queue
from taskengine.ops import queue_settings

from .conftest import JOB_PERMS, make_job, make_staff

pytestmark = pytest.mark.django_db

OWN_QUEUES = {"QUEUES": {"reports-a": {"tenant": "a"}, "reports-b": {"tenant": "b"}}}


@pytest.fixture
def tenant_queues(settings):
    settings.TASKENGINE = OWN_QUEUES
    queue_settings.sync_settings(connection.alias, ["default", "demo"])


@pytest.fixture
def pauser(users):
    """Tenant a's operator with the pause permission."""
    user = make_staff("pauser", ["a"], perms=[*JOB_PERMS, "pause_queue"])
    users["pauser"] = user
    return user


def paused(name: str) -> bool:
    return Queue.objects.get(pk=name).paused


def audit_rows() -> list[tuple[str, str, str, str | None, str]]:
    return list(
        OperatorAction.objects.order_by("pk").values_list("actor_repr", "action", "target_id", "tenant", "reason")
    )


# --- console page -------------------------------------------------------------------------


def test_the_superuser_pauses_and_resumes_a_shared_queue_from_the_queue_page(client_for, tenant_queues):
    client = client_for("root")
    response = client.post("/taskengine/queues/demo/pause/", {"reason": "smtp down"})
    assert response.status_code == 303 and response["Location"] == "/taskengine/queues/"
    assert paused("demo")
    page = client.get("/taskengine/queues/").content.decode()
    assert "smtp down" in page and "Resume" in page and "Paused queue demo." in page
    assert client.post("/taskengine/queues/demo/resume/").status_code == 303
    assert not paused("demo")
    assert audit_rows() == [
        ("root", "queue.pause", "demo", None, "smtp down"),
        ("root", "queue.resume", "demo", None, ""),
    ]


def test_pausing_a_paused_queue_is_refused_with_a_message_and_no_audit_row(client_for, tenant_queues):
    client = client_for("root")
    client.post("/taskengine/queues/demo/pause/")
    response = client.post("/taskengine/queues/demo/pause/", follow=True)
    assert "already paused" in response.content.decode()
    assert len(audit_rows()) == 1


def test_a_user_without_the_permission_is_refused_and_nothing_changes(client_for, tenant_queues):
    response = client_for("alice").post("/taskengine/queues/reports-a/pause/")
    assert response.status_code == 403
    assert not paused("reports-a") and audit_rows() == []
    page = client_for("alice").get("/taskengine/queues/").content.decode()
    assert "reports-a" in page and 'value="pause"' not in page  # no button without the permission


def test_a_tenant_operator_pauses_its_own_queue_only(client_for, pauser, tenant_queues):
    client = client_for("pauser")
    assert client.post("/taskengine/queues/reports-a/pause/", {"reason": "a's outage"}).status_code == 303
    assert paused("reports-a")
    assert audit_rows() == [("pauser", "queue.pause", "reports-a", "a", "a's outage")]
    # A shared queue carries every tenant's jobs: refused.
    assert client.post("/taskengine/queues/demo/pause/").status_code == 403
    # Another tenant's queue, and a queue that does not exist, are not there for it.
    assert client.post("/taskengine/queues/reports-b/pause/").status_code == 404
    assert client.post("/taskengine/queues/brand-new/pause/").status_code == 404
    assert not paused("demo") and not paused("reports-b")
    assert not Queue.objects.filter(pk="brand-new").exists()
    assert len(audit_rows()) == 1


def test_the_queue_page_shows_a_tenant_only_its_queues_and_its_jobs(client_for, pauser, tenant_queues):
    make_job("queued", tenant="a", queue="demo")
    for _ in range(3):
        make_job("queued", tenant="b", queue="demo")
    page = client_for("pauser").get("/taskengine/queues/").content.decode()
    assert "reports-a" in page and "reports-b" not in page
    rows = {q["name"]: q for q in client_for("pauser").get("/taskengine/api/v1/queues").json()["queues"]}
    assert set(rows) >= {"default", "demo", "reports-a"} and "reports-b" not in rows
    assert rows["demo"]["queued"]["value"] == 1  # tenant b's three jobs are not counted
    assert (rows["demo"]["can_pause"], rows["reports-a"]["can_pause"]) == (False, True)
    everything = {q["name"]: q for q in client_for("root").get("/taskengine/api/v1/queues").json()["queues"]}
    assert everything["demo"]["queued"]["value"] == 4 and "reports-b" in everything


def test_the_superuser_may_pause_a_queue_no_one_has_used_yet(client_for):
    assert client_for("root").post("/taskengine/queues/not-yet/pause/").status_code == 303
    assert paused("not-yet")


# --- JSON API --------------------------------------------------------------------------------


def test_api_pause_and_resume_answer_json_and_audit(client_for, tenant_queues):
    client = client_for("root")
    response = client.post(
        "/taskengine/api/v1/queues/demo/pause", {"reason": "deploy"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Paused queue demo."
    assert body["queue"]["state"] == "paused" and body["queue"]["paused_by"] == "root"
    assert body["queue"]["pause_reason"] == "deploy" and body["queue"]["paused_at"]
    assert OperatorAction.objects.get(pk=body["audit_id"]).action == "queue.pause"
    listed = {q["name"]: q for q in client.get("/taskengine/api/v1/queues").json()["queues"]}
    assert listed["demo"]["paused"] is True and listed["demo"]["pause_reason"] == "deploy"
    again = client.post("/taskengine/api/v1/queues/demo/pause")
    assert again.status_code == 409 and "already paused" in again.json()["error"]
    resumed = client.post("/taskengine/api/v1/queues/demo/resume")
    assert resumed.status_code == 200 and resumed.json()["queue"]["state"] == "active"


def test_api_refusals_carry_their_status(client_for, pauser, tenant_queues):
    assert client_for("alice").post("/taskengine/api/v1/queues/reports-a/pause").status_code == 403
    assert client_for("pauser").post("/taskengine/api/v1/queues/demo/pause").status_code == 403
    assert client_for("pauser").post("/taskengine/api/v1/queues/reports-b/pause").status_code == 404
    assert client_for("outsider").post("/taskengine/api/v1/queues/demo/pause").status_code == 403
    long_name = "x" * 65
    assert client_for("root").post(f"/taskengine/api/v1/queues/{long_name}/pause").status_code == 400
    assert audit_rows() == []
    assert not Queue.objects.filter(paused=True).exists()


def test_api_refuses_a_name_or_reason_postgresql_cannot_store_with_a_400_and_writes_nothing(client_for):
    client = client_for("root")
    response = client.post("/taskengine/api/v1/queues/q%00x/pause")
    assert response.status_code == 400 and "NUL character" in response.json()["error"]
    for reason in ("a\x00b", "\ud800"):
        response = client.post(
            "/taskengine/api/v1/queues/demo/pause", json.dumps({"reason": reason}), content_type="application/json"
        )
        assert response.status_code == 400 and "reason" in response.json()["error"], response.content
    assert audit_rows() == []
    assert not Queue.objects.exists()


# --- admin -------------------------------------------------------------------------------------


def test_the_admin_pause_and_resume_actions_run_the_audited_operation(client_for, tenant_queues):
    client = client_for("root")
    response = client.post(
        "/admin/taskengine/queue/", {"action": "pause_queues", "_selected_action": ["demo", "default"], "index": 0}
    )
    assert response.status_code == 302
    assert paused("demo") and paused("default")
    assert [row[1:3] for row in audit_rows()] == [("queue.pause", "default"), ("queue.pause", "demo")]
    client.post("/admin/taskengine/queue/", {"action": "resume_queues", "_selected_action": ["demo"], "index": 0})
    assert not paused("demo") and paused("default")
    assert audit_rows()[-1][:4] == ("root", "queue.resume", "demo", None)


def test_the_admin_offers_the_actions_only_with_the_permission_and_scopes_rows(client_for, pauser, tenant_queues):
    listing = client_for("alice").get("/admin/taskengine/queue/").content.decode()
    assert "pause_queues" not in listing
    listing = client_for("pauser").get("/admin/taskengine/queue/").content.decode()
    assert "pause_queues" in listing and "reports-a" in listing and "reports-b" not in listing
    client_for("pauser").post(
        "/admin/taskengine/queue/", {"action": "pause_queues", "_selected_action": ["reports-a"], "index": 0}
    )
    assert paused("reports-a")
    assert audit_rows() == [("pauser", "queue.pause", "reports-a", "a", "from the admin")]


def test_the_admin_never_edits_or_deletes_a_queue_row(client_for, tenant_queues):
    client = client_for("root")
    assert client.get("/admin/taskengine/queue/add/").status_code == 403
    assert client.post("/admin/taskengine/queue/demo/delete/", {"post": "yes"}).status_code == 403
    assert Queue.objects.filter(pk="demo").exists()
