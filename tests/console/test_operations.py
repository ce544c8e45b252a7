"""operations.perform: state rules, compare-and-set, tenant scope, permissions, and the
audit row that commits with the change or not at all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.db.models.functions import Now

from taskengine.models import Job, OperatorAction
from taskengine.ops import operations

from .conftest import make_job

pytestmark = pytest.mark.django_db


def state_of(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def test_cancel_of_queued_job_finishes_it_at_once(users):
    job = make_job("queued")
    result = operations.perform("cancel", job.pk, actor=users["alice"], reason="not needed")
    after = state_of(job)
    assert after.state == "cancelled"
    assert after.finished_at is not None and after.cancel_requested_at is not None
    row = OperatorAction.objects.get(pk=result.audit_id)
    assert (row.actor_id, row.action, row.target_type, row.target_id, row.tenant, row.reason) == (
        users["alice"].pk,
        "cancel",
        "job",
        str(job.pk),
        "a",
        "not needed",
    )
    assert row.state_before["state"] == "queued" and row.state_after["state"] == "cancelled"
    assert row.created_at is not None


def test_cancel_of_running_job_only_requests_it(users):
    job = make_job("running")
    operations.perform("cancel", job.pk, actor=users["alice"])
    after = state_of(job)
    assert after.state == "running" and after.cancel_requested_at is not None
    assert after.locked_by == "worker-x"
    with pytest.raises(operations.OperationRefused, match="already requested"):
        operations.perform("cancel", job.pk, actor=users["alice"])


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_cancel_of_finished_job_is_refused_without_change(users, state):
    job = make_job(state)
    with pytest.raises(operations.OperationRefused, match=f"already {state}") as exc:
        operations.perform("cancel", job.pk, actor=users["alice"])
    assert exc.value.status == 409
    assert state_of(job).state == state
    assert not OperatorAction.objects.exists()


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_requeue_keeps_attempts_and_grants_one_more(users, state):
    job = make_job(state, attempts=3, max_attempts=3, return_value={"x": 1})
    operations.perform("requeue", job.pk, actor=users["alice"])
    after = state_of(job)
    assert after.state == "queued"
    assert after.attempts == 3 and after.max_attempts == 4
    assert after.finished_at is None and after.return_value is None and after.cancel_requested_at is None
    assert after.run_after >= job.finished_at


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_requeue_of_other_states_is_refused(users, state):
    job = make_job(state)
    with pytest.raises(operations.OperationRefused, match="only failed or cancelled"):
        operations.perform("requeue", job.pk, actor=users["alice"])
    assert state_of(job).state == state


def test_requeue_is_refused_while_another_live_job_holds_the_unique_key(users):
    old = make_job("failed", unique_key="k1")
    make_job("queued", unique_key="k1")
    with pytest.raises(operations.OperationRefused, match="unique key"):
        operations.perform("requeue", old.pk, actor=users["alice"])
    assert state_of(old).state == "failed"
    assert not OperatorAction.objects.exists()


def test_retry_now_makes_a_delayed_job_due(users):
    job = make_job("queued", run_after=Now() + timedelta(hours=1))
    operations.perform("retry", job.pk, actor=users["alice"])
    after = state_of(job)
    assert after.state == "queued" and after.run_after < job.run_after


def test_retry_now_of_due_job_is_refused(users):
    job = make_job("queued")
    with pytest.raises(operations.OperationRefused, match="already due"):
        operations.perform("retry", job.pk, actor=users["alice"])


@pytest.mark.parametrize("state", ["running", "succeeded", "failed", "cancelled"])
def test_retry_now_of_running_or_finished_job_is_refused(users, state):
    job = make_job(state)
    with pytest.raises(operations.OperationRefused, match=f"is {state}"):
        operations.perform("retry", job.pk, actor=users["alice"])
    assert state_of(job).state == state


def test_job_of_another_tenant_is_not_found_and_unchanged(users):
    job = make_job("queued", tenant="b")
    with pytest.raises(operations.JobNotFound) as exc:
        operations.perform("cancel", job.pk, actor=users["alice"])
    assert exc.value.status == 404
    assert state_of(job).state == "queued"
    assert not OperatorAction.objects.exists()


def test_superuser_acts_on_every_tenant(users):
    job = make_job("queued", tenant="b")
    operations.perform("cancel", job.pk, actor=users["root"])
    assert state_of(job).state == "cancelled"


def test_user_without_permission_is_forbidden(users):
    job = make_job("queued")
    with pytest.raises(operations.OperationForbidden) as exc:
        operations.perform("cancel", job.pk, actor=users["viewer"])
    assert exc.value.status == 403
    assert state_of(job).state == "queued"


def test_job_that_moved_after_the_read_is_refused_not_overwritten(users, monkeypatch):
    job = make_job("queued")
    stale = Job.objects.get(pk=job.pk)
    # The worker claims the job between the operator's read and the UPDATE.
    Job.objects.filter(pk=job.pk).update(
        state="running", attempts=1, locked_by="w", lease_expires_at=Now() + timedelta(minutes=1)
    )
    monkeypatch.setattr(operations, "_scoped_job", lambda *a: stale)
    with pytest.raises(operations.OperationRefused, match="changed state meanwhile"):
        operations.perform("cancel", job.pk, actor=users["alice"])
    after = state_of(job)
    assert after.state == "running" and after.cancel_requested_at is None


def test_failed_audit_insert_rolls_the_change_back(users):
    job = make_job("failed")

    def refuse_audit_insert(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT") and "taskengine_operator_action" in sql:
            raise DatabaseError("audit table unavailable (injected)")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_audit_insert):
        with pytest.raises(DatabaseError, match="injected"):
            operations.perform("requeue", job.pk, actor=users["alice"])
    after = state_of(job)
    assert after.state == "failed" and after.max_attempts == job.max_attempts
    assert not OperatorAction.objects.exists()


def test_perform_many_applies_job_by_job_and_reports_refusals(users):
    failed = make_job("failed")
    running = make_job("running")
    other_tenant = make_job("failed", tenant="b")
    result = operations.perform_many("requeue", [failed.pk, running.pk, other_tenant.pk], actor=users["alice"])
    assert result.done == [failed.pk]
    assert set(result.refused) == {running.pk, other_tenant.pk}
    assert state_of(failed).state == "queued" and state_of(other_tenant).state == "failed"
    assert OperatorAction.objects.count() == 1
