"""Queue limits from the console's queue page, the JSON API and the admin: POST only,
permission ``limit_queue`` (``pause_queue`` alone is not enough), the tenant scope of a
pause, one audit row ``queue.limit`` per change in the same transaction."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from taskengine.models import OperatorAction, Queue
from taskengine.ops import queue_settings

from .conftest import JOB_PERMS, make_staff

pytestmark = pytest.mark.django_db

OWN_QUEUES = {"QUEUES": {"reports-a": {"tenant": "a"}, "reports-b": {"tenant": "b"}}}


@pytest.fixture
def tenant_queues(settings):
    settings.TASKENGINE = OWN_QUEUES
    queue_settings.sync_settings(connection.alias, ["default", "demo"])


@pytest.fixture
def limiter(users):
    """Tenant a's operator with the limit permission (and not the pause one)."""
    user = make_staff("limiter", ["a"], perms=[*JOB_PERMS, "limit_queue"])
    users["limiter"] = user
    return user


def limits_of(name: str) -> tuple[int | None, int | None, int | None]:
    row = Queue.objects.get(pk=name)
    return row.concurrency_limit, row.rate_limit, row.rate_period


def audit_rows() -> list[tuple[str, str, str, str | None]]:
    return list(OperatorAction.objects.order_by("pk").values_list("actor_repr", "action", "target_id", "tenant"))


def post_json(client, path: str, body: dict):
    return client.post(path, json.dumps(body), content_type="application/json")


def test_the_queue_page_shows_and_sets_limits(client_for, tenant_queues):
    client = client_for("root")
    response = client.post("/taskengine/queues/demo/limits/", {"concurrency": "3", "rate": "100/m", "reason": "quota"})
    assert response.status_code == 303
    assert limits_of("demo") == (3, 100, 60)
    page = client.get("/taskengine/queues/").content.decode()
    assert "Set limits" in page and "100/m" in page and "concurrency 3, rate 100/m" in page
    client.post("/taskengine/queues/demo/limits/", {"concurrency": "", "rate": "100/m"})
    assert limits_of("demo") == (None, 100, 60)  # an empty field lifts that limit
    bad = client.post("/taskengine/queues/demo/limits/", {"concurrency": "0", "rate": ""}, follow=True)
    assert "at least 1" in bad.content.decode()
    assert limits_of("demo") == (None, 100, 60)
    assert audit_rows() == [("root", "queue.limit", "demo", None)] * 2


def test_api_sets_and_lifts_limits_and_lists_them(client_for, tenant_queues):
    client = client_for("root")
    response = post_json(client, "/taskengine/api/v1/queues/demo/limits", {"concurrency": 5, "reason": "r"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["queue"]["concurrency_limit"] == 5 and body["queue"]["rate"] is None
    assert OperatorAction.objects.get(pk=body["audit_id"]).reason == "r"
    assert post_json(client, "/taskengine/api/v1/queues/demo/limits", {"rate": "20/s"}).status_code == 200
    assert limits_of("demo") == (5, 20, 1)  # a key left out keeps that limit
    listed = {q["name"]: q for q in client.get("/taskengine/api/v1/queues").json()["queues"]}
    assert listed["demo"]["concurrency_limit"] == 5 and listed["demo"]["rate"] == "20/s"
    assert listed["demo"]["can_limit"] is True
    again = post_json(client, "/taskengine/api/v1/queues/demo/limits", {"rate": "20/s"})
    assert again.status_code == 409
    lifted = post_json(client, "/taskengine/api/v1/queues/demo/limits", {"concurrency": None, "rate": None})
    assert lifted.status_code == 200 and limits_of("demo") == (None, None, None)
    for body in ({"concurrency": 0}, {"rate": "5/d"}, {"concurrency": "x"}, {}):
        response = post_json(client, "/taskengine/api/v1/queues/demo/limits", body)
        assert response.status_code == 400, (body, response.content)
    # JSON's 1e999 is Python's float("inf"): a clear 400, not a server error
    huge = client.post(
        "/taskengine/api/v1/queues/demo/limits", '{"concurrency": 1e999}', content_type="application/json"
    )
    assert huge.status_code == 400 and "concurrency limit" in huge.json()["error"]
    assert len(audit_rows()) == 3


def test_api_limit_refusals_carry_their_status_and_write_nothing(client_for, limiter, tenant_queues):
    path = "/taskengine/api/v1/queues/{}/limits"
    assert post_json(client_for("alice"), path.format("reports-a"), {"concurrency": 1}).status_code == 403
    assert post_json(client_for("limiter"), path.format("demo"), {"concurrency": 1}).status_code == 403  # shared
    assert post_json(client_for("limiter"), path.format("reports-b"), {"concurrency": 1}).status_code == 404
    assert audit_rows() == []
    assert post_json(client_for("limiter"), path.format("reports-a"), {"concurrency": 1}).status_code == 200
    assert audit_rows() == [("limiter", "queue.limit", "reports-a", "a")]


def test_the_admin_sets_limits_of_the_selected_queues(client_for, limiter, tenant_queues):
    client = client_for("root")
    response = client.post(
        "/admin/taskengine/queue/",
        {"action": "set_limits", "_selected_action": ["demo", "default"], "concurrency": "2", "rate": "", "index": 0},
    )
    assert response.status_code == 302
    assert limits_of("demo") == (2, None, None) and limits_of("default") == (2, None, None)
    assert [row[1:3] for row in audit_rows()] == [("queue.limit", "default"), ("queue.limit", "demo")]
    assert "set_limits" not in client_for("alice").get("/admin/taskengine/queue/").content.decode()
    assert "set_limits" in client_for("limiter").get("/admin/taskengine/queue/").content.decode()
