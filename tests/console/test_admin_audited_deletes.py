"""Admin writes of schedules and tenant memberships commit with exactly one audit row per
object or not at all — including the changelist's bulk "delete selected" action, which
Django runs outside the change/delete views' transaction.

These tests run with real transactions (``transaction=True``): inside the test case's
own wrapping transaction an unaudited commit could not be seen."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import LogEntry
from django.db import DatabaseError, connection
from django.test import Client

from taskengine.models import MissedSlot, OperatorAction, Schedule, TenantMembership

pytestmark = pytest.mark.django_db(transaction=True)
TICK = "tests.tasks.noop"


def root_client(users) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(users["root"])
    return client


def post_delete_selected(client: Client, model: str, ids: list[int]):
    """The confirmation form the admin's "Delete selected …" page posts back."""
    return client.post(
        f"/admin/taskengine/{model}/",
        {
            "action": "delete_selected",
            "_selected_action": [str(pk) for pk in ids],
            "index": 0,
            "select_across": "0",
            "post": "yes",
        },
    )


def refuse_audit_insert(execute, sql, params, many, context):
    if sql.lstrip().upper().startswith("INSERT") and "taskengine_operator_action" in sql:
        raise DatabaseError("audit table unavailable (injected)")
    return execute(sql, params, many, context)


def make_schedules() -> list[Schedule]:
    return [
        Schedule.objects.create(name=f"nightly-{tenant}", task_path=TICK, cron="0 3 * * *", tenant=tenant)
        for tenant in ("a", "b")
    ]


def test_bulk_delete_of_schedules_writes_one_audit_row_per_schedule(users):
    schedules = make_schedules()
    response = post_delete_selected(root_client(users), "schedule", [s.pk for s in schedules])
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert not Schedule.objects.exists()
    rows = OperatorAction.objects.order_by("target_id")
    assert [(r.action, r.target_type, r.target_id, r.tenant, r.actor_id) for r in rows] == [
        ("schedule.delete", "schedule", str(s.pk), s.tenant, users["root"].pk) for s in schedules
    ]
    assert [r.state_before["name"] for r in rows] == ["nightly-a", "nightly-b"]
    assert all(r.state_after is None for r in rows)


def test_bulk_delete_of_tenant_memberships_writes_one_audit_row_per_membership(users):
    memberships = list(TenantMembership.objects.filter(user__username__in=["alice", "bob"]).order_by("pk"))
    response = post_delete_selected(root_client(users), "tenantmembership", [m.pk for m in memberships])
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert not TenantMembership.objects.filter(pk__in=[m.pk for m in memberships]).exists()
    rows = sorted(OperatorAction.objects.all(), key=lambda r: int(r.target_id))
    assert [(r.action, r.target_id, r.tenant) for r in rows] == [
        ("tenant_membership.delete", str(m.pk), m.tenant) for m in memberships
    ]


@pytest.mark.parametrize("model", ["schedule", "tenantmembership"])
def test_bulk_delete_rolls_back_entirely_when_the_audit_insert_fails(users, model):
    if model == "schedule":
        ids = [s.pk for s in make_schedules()]
        remaining = lambda: Schedule.objects.filter(pk__in=ids).count()  # noqa: E731 - a one-line count, read where it is used
    else:
        ids = list(TenantMembership.objects.order_by("pk").values_list("pk", flat=True))
        remaining = lambda: TenantMembership.objects.filter(pk__in=ids).count()  # noqa: E731 - a one-line count, read where it is used
    client = root_client(users)
    with connection.execute_wrapper(refuse_audit_insert):
        response = post_delete_selected(client, model, ids)
    assert response.status_code == 500  # the injected database error, raised to the handler
    assert remaining() == len(ids)
    assert not OperatorAction.objects.exists()
    assert not LogEntry.objects.exists()  # the admin's own deletion log rolled back too


def test_single_delete_rolls_back_when_the_audit_insert_fails(users):
    schedule = make_schedules()[0]
    client = root_client(users)
    with connection.execute_wrapper(refuse_audit_insert):
        response = client.post(f"/admin/taskengine/schedule/{schedule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 500
    assert Schedule.objects.filter(pk=schedule.pk).exists() and not OperatorAction.objects.exists()


def test_staff_without_delete_permission_cannot_bulk_delete_schedules(users):
    schedule = make_schedules()[0]
    client = Client(raise_request_exception=False)
    client.force_login(users["alice"])
    response = post_delete_selected(client, "schedule", [schedule.pk])
    assert response.status_code in (200, 302, 403)
    assert Schedule.objects.filter(pk=schedule.pk).exists() and not OperatorAction.objects.exists()


def test_bulk_delete_of_a_schedule_with_missed_slots_is_refused_and_deletes_nothing(users):
    kept, other = make_schedules()
    MissedSlot.objects.create(schedule=kept, slot=datetime(2026, 1, 1, 3, tzinfo=UTC), reason="misfire:skip")
    response = post_delete_selected(root_client(users), "schedule", [kept.pk, other.pk])
    # Missed slots are read-only in the admin, so Django refuses the cascade.
    assert response.status_code == 403
    assert Schedule.objects.count() == 2 and MissedSlot.objects.count() == 1
    assert not OperatorAction.objects.exists()


def test_schedule_change_and_add_roll_back_when_the_audit_insert_fails(users):
    schedule = make_schedules()[0]
    form = {
        "name": schedule.name,
        "task_path": TICK,
        "cron": "0 4 * * *",
        "timezone": "UTC",
        "args": "[]",
        "kwargs": "{}",
        "queue": "default",
        "priority": 0,
        "tenant": "a",
        "misfire_policy": "run_once",
        "catch_up_limit": 10,
    }
    client = root_client(users)
    with connection.execute_wrapper(refuse_audit_insert):
        changed = client.post(f"/admin/taskengine/schedule/{schedule.pk}/change/", form)
        added = client.post("/admin/taskengine/schedule/add/", {**form, "name": "added"})
    assert (changed.status_code, added.status_code) == (500, 500)
    assert Schedule.objects.get(pk=schedule.pk).cron == "0 3 * * *"
    assert not Schedule.objects.filter(name="added").exists() and not OperatorAction.objects.exists()


def test_deleting_a_user_in_the_auth_admin_audits_the_tenant_memberships_it_cascades_to(users):
    alice = users["alice"]
    memberships = list(TenantMembership.objects.filter(user=alice).order_by("pk"))
    assert memberships
    response = root_client(users).post(f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert not TenantMembership.objects.filter(pk__in=[m.pk for m in memberships]).exists()
    rows = list(OperatorAction.objects.filter(target_type="tenant_membership").order_by("target_id"))
    assert [(r.action, r.target_id, r.tenant) for r in rows] == [
        ("tenant_membership.delete", str(m.pk), m.tenant) for m in memberships
    ]
    assert all(
        r.state_before == {"user": alice.pk, "tenant": m.tenant} and r.state_after is None
        for r, m in zip(rows, memberships, strict=True)
    )
    assert all("alice" in r.reason for r in rows)


def test_a_membership_deleted_in_its_own_admin_is_audited_once_not_twice(users):
    membership = TenantMembership.objects.filter(user=users["alice"]).first()
    response = root_client(users).post(f"/admin/taskengine/tenantmembership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert OperatorAction.objects.filter(target_type="tenant_membership").count() == 1


def test_a_user_delete_whose_membership_audit_fails_deletes_nothing(users):
    alice = users["alice"]
    client = root_client(users)
    with connection.execute_wrapper(refuse_audit_insert):
        response = client.post(f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 500
    assert TenantMembership.objects.filter(user=alice).exists()
    assert type(alice).objects.filter(pk=alice.pk).exists()
