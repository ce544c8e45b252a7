"""The console's reconcile and backfill pages and their JSON API: GET only reads,
POST applies with permission, CSRF, tenant scope and audit."""

from __future__ import annotations

import csv
import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from taskengine.models import ExecutionLog, Job, OperatorAction, TenantMembership
from taskengine.ops import reconcile

from . import scenario

PAGE = "/taskengine/reconcile/"
API = "/taskengine/api/v1/reconcile"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def staff(username: str, tenant: str, *perms: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="taskengine", codename__in=perms))
    TenantMembership.objects.create(user=user, tenant=tenant)
    return user


@pytest.fixture
def world(db):
    return {
        "acme": scenario.build(tenant="acme"),
        "globex": scenario.build(tenant="globex", tag="-g"),
        "operator": staff("operator", "acme", "reconcile_apply", "view_backfill_report"),
        "reader": staff("reader", "acme"),
    }


def client_for(user: User, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def writes(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]


def test_get_of_the_reconcile_page_shows_the_tenant_report_and_changes_nothing(world):
    client = client_for(world["operator"])
    with CaptureQueriesContext(connection) as queries:
        response = client.get(PAGE)
    assert response.status_code == 200
    assert writes(queries) == []
    body = response.content.decode()
    acme, globex = world["acme"], world["globex"]
    assert f"<code>{acme.expected['dead_worker_jobs'][0]}</code>" in body
    assert f"<code>{globex.expected['dead_worker_jobs'][0]}</code>" not in body
    assert 'name="category" value="expired_leases"' in body
    assert 'name="category" value="stale_queued_jobs"' not in body  # report only
    assert "queues: {&#x27;default&#x27;: 1}" in body  # the finding's detail
    with CaptureQueriesContext(connection) as queries:
        assert client.get(API).status_code == 200
        assert client.get("/taskengine/backfill/").status_code == 200
        assert client.get("/taskengine/backfill/?format=csv").status_code == 200
        assert client.get("/taskengine/api/v1/backfill").status_code == 200
    assert writes(queries) == []


def test_post_applies_selected_categories_in_the_users_tenants_with_audit(world):
    client = client_for(world["operator"], csrf=True)
    client.get(PAGE)  # the form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    acme, globex = world["acme"], world["globex"]
    response = client.post(PAGE, {"category": ["expired_leases", "user_id_str_mismatch"], "csrfmiddlewaretoken": token})
    assert response.status_code == 303
    assert Job.objects.get(pk=acme.expected["expired_leases"][0]).state == "queued"
    assert Job.objects.get(pk=globex.expected["expired_leases"][0]).state == "running"
    assert Job.objects.get(pk=acme.expected["dead_worker_jobs"][0]).state == "running"  # not selected
    assert ExecutionLog.objects.get(pk=acme.expected["user_id_str_mismatch"][0]).user_id_str == "5"
    assert ExecutionLog.objects.get(pk=globex.expected["user_id_str_mismatch"][0]).user_id_str == "6"
    audits = OperatorAction.objects.filter(actor=world["operator"])
    assert sorted(audits.values_list("action", flat=True)) == [
        "reconcile.expired_leases",
        "reconcile.user_id_str_mismatch",
    ]
    assert "Applied" in client.get(PAGE).content.decode()


def test_post_without_csrf_token_or_permission_is_refused_and_changes_nothing(world):
    before = OperatorAction.objects.count()
    no_token = client_for(world["operator"], csrf=True)
    assert no_token.post(PAGE, {"category": "expired_leases"}).status_code == 403
    assert no_token.post(f"{API}/apply", "{}", content_type="application/json").status_code == 403
    reader = client_for(world["reader"])
    page = reader.get(PAGE)
    assert page.status_code == 200 and "te-reconcile-form" not in page.content.decode()
    assert reader.post(PAGE, {"category": "expired_leases"}).status_code == 403
    assert reader.post(f"{API}/apply", "{}", content_type="application/json").status_code == 403
    assert reader.post(API, "{}", content_type="application/json").status_code == 403
    assert reader.get("/taskengine/backfill/").status_code == 403
    assert reader.get("/taskengine/api/v1/backfill").status_code == 403
    assert client_for(world["operator"]).post(PAGE, {"category": "stale_queued_jobs"}).status_code == 400
    assert OperatorAction.objects.count() == before
    assert Job.objects.filter(pk=world["acme"].expected["expired_leases"][0], state="running").exists()
    anonymous = Client().get(PAGE)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_api_report_and_apply(world):
    client = client_for(world["operator"])
    data = client.get(API).json()
    assert {"gate", "leader", "workers", "findings"} <= set(data)
    assert set(data) == {"gate", "leader", "workers", "findings"}
    assert set(data["gate"]) == {"ready", "pending", "conflicts", "unknown_applied", "error", "reason"}
    assert {w["worker_id"] for w in data["workers"]} >= {"w-live", "w-dead"}
    assert all(
        set(w)
        == {"worker_id", "host", "pid", "state", "last_heartbeat_at", "heartbeat_age_seconds", "alive", "running_jobs"}
        for w in data["workers"]
    )
    assert [f["category"] for f in data["findings"]] == ["migration_gate", *reconcile.CATEGORIES]
    assert all(
        set(f) == {"category", "count", "sample_ids", "action", "description", "fixable", "detail"}
        for f in data["findings"]
    )
    by_category = {f["category"]: f for f in data["findings"]}
    assert by_category["expired_leases"]["sample_ids"] == world["acme"].expected["expired_leases"]
    assert client.get(f"{API}/apply").status_code == 405
    assert (
        client.post(f"{API}/apply", json.dumps({"categories": ["nope"]}), content_type="application/json").status_code
        == 400
    )
    response = client.post(
        f"{API}/apply", json.dumps({"categories": ["dead_worker_jobs"]}), content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["applied"] == [
        {"category": "dead_worker_jobs", "fixed": 1, "ids": world["acme"].expected["dead_worker_jobs"], "note": ""}
    ]
    again = client.post(API, "{}", content_type="application/json").json()["applied"]
    assert {a["category"]: a["fixed"] for a in again}["dead_worker_jobs"] == 0


def test_backfill_page_csv_and_api_are_scoped_to_the_users_tenants(world):
    client = client_for(world["operator"])
    page = client.get("/taskengine/backfill/")
    assert page.status_code == 200 and "not clean" in page.content.decode()
    download = client.get("/taskengine/backfill/?format=csv")
    assert download["Content-Type"].startswith("text/csv")
    assert "attachment" in download["Content-Disposition"]
    rows = list(csv.reader(StringIO(download.content.decode())))
    # acme only: 5 attempt logs of the history job + 3 running jobs' logs.
    assert rows[1][:6] == ["task_execution_logs", "8", "6", "1", "1", "1"]
    [table] = client.get("/taskengine/api/v1/backfill").json()["tables"]
    assert table["sample_missing_ids"] == world["acme"].expected["user_id_str_missing"]
