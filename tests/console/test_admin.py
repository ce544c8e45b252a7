"""Django admin: the job actions with their confirmation page, "all matching the
filter", state refusals, read-only audit rows, no job deletion, bounded lists."""

from __future__ import annotations

import pytest

from taskengine import admin as engine_admin
from taskengine.console import counts
from taskengine.models import Job, OperatorAction, Schedule

from .conftest import make_job

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/taskengine/job/"


def post_action(client, action, ids, *, confirm=False, across=False, query=""):
    data = {"action": action, "_selected_action": ids, "index": 0, "select_across": "1" if across else "0"}
    if confirm:
        data.update(confirm="yes", reason="admin test")
    return client.post(CHANGELIST + query, data, follow=confirm)


def test_action_asks_for_confirmation_with_counts_per_state(client_for, jobs):
    client = client_for("alice")
    ids = [jobs[k].pk for k in ("a_failed", "a_cancelled", "a_running")]
    response = post_action(client, "requeue_jobs", ids)
    body = response.content.decode()
    assert response.status_code == 200 and 'id="te-confirm-states"' in body
    assert '<strong id="te-confirm-total">3</strong>' in body
    assert '<strong id="te-confirm-applicable">2</strong>' in body
    for state in ("failed", "cancelled", "running"):
        assert f"<td>{state}</td><td>1</td>" in body
    assert not OperatorAction.objects.exists()
    assert Job.objects.get(pk=jobs["a_failed"].pk).state == "failed"


def test_confirmed_action_applies_and_refuses_wrong_states_with_a_message(client_for, jobs):
    client = client_for("alice")
    ids = [jobs[k].pk for k in ("a_failed", "a_cancelled", "a_running")]
    response = post_action(client, "requeue_jobs", ids, confirm=True)
    body = response.content.decode()
    assert "Requeue: 2 job(s) done." in body
    assert "Requeue: 1 job(s) refused" in body and "only failed or cancelled jobs can be requeued" in body
    assert Job.objects.get(pk=jobs["a_failed"].pk).state == "queued"
    assert Job.objects.get(pk=jobs["a_running"].pk).state == "running"
    assert set(OperatorAction.objects.values_list("reason", flat=True)) == {"admin test"}


def test_cancel_of_finished_job_and_retry_of_running_job_are_refused(client_for, jobs):
    client = client_for("alice")
    body = post_action(client, "cancel_jobs", [jobs["a_succeeded"].pk], confirm=True).content.decode()
    assert "already succeeded" in body
    body = post_action(client, "retry_jobs_now", [jobs["a_running"].pk], confirm=True).content.decode()
    assert "is running" in body
    assert not OperatorAction.objects.exists()


def test_apply_to_all_matching_the_filter_stays_in_the_tenant(client_for, jobs):
    extra = [make_job("failed", tenant="a") for _ in range(3)]
    client = client_for("alice")
    query = "?state__exact=failed"
    confirm = post_action(client, "requeue_jobs", [extra[0].pk], across=True, query=query).content.decode()
    assert '<strong id="te-confirm-total">4</strong>' in confirm
    post_action(client, "requeue_jobs", [extra[0].pk], across=True, query=query, confirm=True)
    assert Job.objects.filter(tenant="a", state="failed").count() == 0
    assert Job.objects.get(pk=jobs["b_failed"].pk).state == "failed"
    assert OperatorAction.objects.filter(tenant="a").count() == 4 and not OperatorAction.objects.filter(tenant="b")


def test_bulk_action_over_the_limit_is_refused(client_for, jobs, monkeypatch):
    monkeypatch.setattr(engine_admin, "BULK_LIMIT", 2)
    client = client_for("root")
    body = post_action(client, "cancel_jobs", [jobs["a_queued"].pk], across=True, confirm=True).content.decode()
    assert "Narrow the filter" in body
    assert not OperatorAction.objects.exists()


def test_audit_rows_are_read_only(client_for, jobs):
    client = client_for("root")
    client.post(f"/taskengine/api/v1/jobs/{jobs['a_queued'].pk}/cancel")
    row = OperatorAction.objects.get()
    assert client.get("/admin/taskengine/operatoraction/add/").status_code == 403
    assert client.get(f"/admin/taskengine/operatoraction/{row.pk}/delete/").status_code == 403
    change = client.get(f"/admin/taskengine/operatoraction/{row.pk}/change/")
    assert change.status_code == 200 and b'name="_save"' not in change.content
    client.post(f"/admin/taskengine/operatoraction/{row.pk}/change/", {"action": "tampered"})
    assert OperatorAction.objects.get().action == "cancel"


def test_jobs_cannot_be_added_edited_or_deleted_in_the_admin(client_for, jobs):
    client = client_for("root")
    job = jobs["a_failed"]
    assert client.get("/admin/taskengine/job/add/").status_code == 403
    assert client.get(f"/admin/taskengine/job/{job.pk}/delete/").status_code == 403
    change = client.get(f"/admin/taskengine/job/{job.pk}/change/")
    assert change.status_code == 200 and b'name="_save"' not in change.content
    assert b"delete_selected" not in client.get(CHANGELIST).content


def test_changelist_count_is_bounded(client_for, jobs, monkeypatch):
    assert "10 jobs" in client_for("root").get(CHANGELIST).content.decode()
    monkeypatch.setattr(counts.bounded_count, "__defaults__", (3,))
    body = client_for("root").get(CHANGELIST).content.decode()
    assert "10 jobs" not in body  # never an unbounded count(*)


def test_filters_offer_values_without_scanning(client_for, jobs):
    make_job("queued", tenant="c", queue="emails", task_path="tests.tasks.noop")
    body = client_for("root").get(CHANGELIST).content.decode()
    for value in ("?queue=emails", "?task=tests.tasks.noop", "?tenant=c"):
        assert value in body
    scoped = client_for("alice").get(CHANGELIST).content.decode()
    assert "?tenant=c" not in scoped and "?task=tests.tasks.noop" not in scoped


def test_schedule_edits_are_superuser_only_and_audited(client_for, users):
    schedule = Schedule.objects.create(name="nightly", task_path="tests.tasks.noop", cron="0 3 * * *", tenant="a")
    assert client_for("alice").get(f"/admin/taskengine/schedule/{schedule.pk}/change/").status_code == 200
    client_for("alice").post(f"/admin/taskengine/schedule/{schedule.pk}/change/", {"enabled": ""})
    assert Schedule.objects.get().enabled is True
    client = client_for("root")
    form = {
        "name": "nightly",
        "task_path": "tests.tasks.noop",
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
    response = client.post(f"/admin/taskengine/schedule/{schedule.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[-2000:]
    row = OperatorAction.objects.get()
    assert (row.action, row.state_before["cron"], row.state_after["cron"]) == (
        "schedule.change",
        "0 3 * * *",
        "0 4 * * *",
    )


def test_job_change_page_shows_its_audit_trail_escaped(client_for, jobs):
    client = client_for("alice")
    job = jobs["a_failed"]
    client.post(f"/taskengine/api/v1/jobs/{job.pk}/requeue", {"reason": "<b>fixed</b>"})
    body = client.get(f"/admin/taskengine/job/{job.pk}/change/").content.decode()
    assert "te-audit-trail" in body and "alice · requeue → queued" in body
    assert "&lt;b&gt;fixed&lt;/b&gt;" in body and "<b>fixed</b>" not in body
