"""Audit rows of the user_id_str fixes (reconcile's mismatch fix and the batched
backfill, run by the command, by reconcile or from the console) carry the tenant of the
job whose attempt rows they changed, so tenant staff see them and only them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from taskengine.models import ExecutionLog, Job, OperatorAction
from taskengine.ops import backfill, reconcile

from . import scenario
from .test_console import staff

AUDIT_PAGE = "/taskengine/audit/"
FIX_ACTIONS = ("reconcile.user_id_str_mismatch", "backfill.user_id_str")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def audit_rows(action: str) -> list[tuple[str, str | None]]:
    return sorted(OperatorAction.objects.filter(action=action).values_list("target_id", "tenant"))


def page_for(user: User) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(AUDIT_PAGE)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_tenant_staff_see_the_audit_rows_of_user_id_fixes_on_their_jobs_and_not_others():
    acme, globex = scenario.build(tenant="acme"), scenario.build(tenant="globex", tag="-g")
    untenanted = scenario.build(tenant=None, tag="-n")
    reconcile.apply(categories=["user_id_str_mismatch", "user_id_str_missing"])

    [acme_mismatch], [globex_mismatch], [none_mismatch] = (
        s.expected["user_id_str_mismatch"] for s in (acme, globex, untenanted)
    )
    [acme_missing], [globex_missing], [none_missing] = (
        s.expected["user_id_str_missing"] for s in (acme, globex, untenanted)
    )
    assert audit_rows("reconcile.user_id_str_mismatch") == sorted(
        [(str(acme_mismatch), "acme"), (str(globex_mismatch), "globex"), (str(none_mismatch), None)]
    )
    # One batch held the missing rows of all three: one audit row per tenant.
    assert audit_rows("backfill.user_id_str") == sorted(
        [
            (f"{acme_missing}-{acme_missing}", "acme"),
            (f"{globex_missing}-{globex_missing}", "globex"),
            (f"{none_missing}-{none_missing}", None),
        ]
    )

    body = page_for(staff("acme-staff", "acme"))
    for action in FIX_ACTIONS:
        assert action in body
    assert f"task_execution_logs {acme_mismatch}<" in body
    assert f"task_execution_logs {acme_missing}-{acme_missing}<" in body
    for other in (globex_mismatch, globex_missing, none_mismatch, none_missing):
        assert f"task_execution_logs {other}" not in body
    root = User.objects.create_superuser("root", password="pw")
    assert all(f"task_execution_logs {log}" in page_for(root) for log in (globex_mismatch, none_missing))


@pytest.mark.django_db
def test_a_backfill_batch_spanning_tenants_writes_one_audit_row_per_tenant_with_its_own_rows():
    jobs = {
        tenant: Job.objects.create(
            task_path=scenario.TASK, state="succeeded", attempts=1, tenant=tenant, finished_at="2026-01-01T00:00:00Z"
        )
        for tenant in ("acme", "globex")
    }
    # Interleaved by id: acme, globex, acme, globex, …
    logs = [
        ExecutionLog.objects.create(
            job=jobs["acme" if i % 2 == 0 else "globex"],
            attempt=i + 1,
            worker_id="w",
            started_at="2026-01-01T00:00:00Z",
            user_id=100 + i,
        )
        for i in range(6)
    ]
    result = backfill.run(batch_size=4)
    assert result.updated == 6 and result.batches == 2
    rows = list(
        OperatorAction.objects.filter(action="backfill.user_id_str")
        .order_by("pk")
        .values_list("tenant", "target_id", "state_after")
    )
    ids = [log.id for log in logs]
    assert rows == [
        ("acme", f"{ids[0]}-{ids[2]}", {"updated": 2}),
        ("globex", f"{ids[1]}-{ids[3]}", {"updated": 2}),
        ("acme", f"{ids[4]}-{ids[4]}", {"updated": 1}),
        ("globex", f"{ids[5]}-{ids[5]}", {"updated": 1}),
    ]
