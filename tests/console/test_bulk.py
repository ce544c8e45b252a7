"""Bulk actions on a filter (bulk.py): the exact count, batches, tenant scope and
permission per batch, compare-and-set per job, one audit row per job changed plus the
operation's own, resumption after the cursor; the console's confirm → POST → progress
flow and the JSON API."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from taskengine.models import BulkOperation, Job, OperatorAction, TenantMembership
from taskengine.ops import bulk, bulk_batches
from taskengine.testing import advance_clock

from .conftest import make_job

pytestmark = pytest.mark.django_db


def failed_jobs(n: int, tenant: str | None = "a", **fields) -> list[int]:
    values = {"task_path": "tests.tasks.add", "state": "failed", "attempts": 3, "max_attempts": 3, "tenant": tenant}
    values.update(fields)
    rows = Job.objects.bulk_create([Job(finished_at=Now(), **values) for _ in range(n)])
    return (
        [row.pk for row in rows] if rows[0].pk else list(Job.objects.order_by("-pk").values_list("pk", flat=True)[:n])
    )


def job_audit(action: str = "requeue"):
    return OperatorAction.objects.filter(action=action, target_type="job")


# --- the engine --------------------------------------------------------------------------


def test_requeue_by_filter_changes_only_the_actors_tenant_in_batches(users):
    failed_jobs(23, "a")
    failed_jobs(7, "b")
    make_job("succeeded", "a")
    other_task = make_job("failed", "a", task_path="tests.tasks.noop")
    found = bulk.preview("requeue", {"task": "tests.tasks.add"}, actor=users["alice"])
    assert found.count == 23 and found.tenants == ["a"]
    op = bulk.create("requeue", {"task": "tests.tasks.add"}, actor=users["alice"], reason="bad deploy", batch_size=5)
    assert (op.state, op.matched, op.changed, op.actor_id, op.tenants) == ("pending", 23, 0, users["alice"].pk, ["a"])
    assert Job.objects.filter(state="queued").count() == 0, "create() changes no job"
    own = OperatorAction.objects.get(target_type="bulk_operation")
    assert (own.action, own.target_id, own.tenant, own.state_after["matched"]) == ("bulk.requeue", str(op.pk), "a", 23)

    op = bulk_batches.run(op.pk)
    assert (op.state, op.changed, op.skipped, op.batches) == ("done", 23, 0, 5)
    assert op.finished_at is not None
    assert Job.objects.filter(tenant="a", task_path="tests.tasks.add", state="queued", max_attempts=4).count() == 23
    assert Job.objects.filter(tenant="b", state="failed").count() == 7
    assert Job.objects.get(pk=other_task.pk).state == "failed"
    rows = job_audit()
    assert rows.count() == 23 and len({r.target_id for r in rows}) == 23
    row = rows.first()
    assert (row.actor_id, row.tenant, row.state_before["state"], row.state_after["state"]) == (
        users["alice"].pk,
        "a",
        "failed",
        "queued",
    )
    assert row.reason == f"bulk operation {op.pk}: bad deploy"


def test_a_run_stopped_after_some_batches_resumes_after_its_cursor(users):
    failed_jobs(12, "a")
    op = bulk.create("requeue", {"state": "failed"}, actor=users["alice"], batch_size=5)
    op = bulk_batches.run(op.pk, max_batches=1)
    assert (op.state, op.changed, op.batches) == ("running", 5, 1)
    first_cursor = op.cursor
    op = bulk_batches.run(op.pk)
    assert (op.state, op.changed, op.skipped) == ("done", 12, 0)
    assert op.cursor > first_cursor
    assert job_audit().count() == 12
    assert bulk_batches.run_batch(op.pk) is None, "a finished operation runs no batch"
    assert job_audit().count() == 12


def test_a_job_that_moved_meanwhile_is_not_touched(users):
    ids = failed_jobs(4, "a")
    op = bulk.create("requeue", {"state": "failed"}, actor=users["alice"])
    Job.objects.filter(pk=ids[0]).update(state="queued", finished_at=None)  # someone requeued it
    op = bulk_batches.run(op.pk)
    assert (op.matched, op.changed) == (4, 3)
    assert job_audit().count() == 3


def test_a_group_whose_job_moved_falls_back_to_one_compare_and_set_per_job(users):
    ids = failed_jobs(4, "a")
    stale = list(Job.objects.filter(pk__in=ids).order_by("pk"))
    Job.objects.filter(pk=ids[1]).update(state="queued", finished_at=None)  # moved after the read
    with transaction.atomic():
        changed, skipped = bulk_batches._apply_group("requeue", stale, "default")
    assert sorted(j.pk for j in changed) == [ids[0], ids[2], ids[3]]
    assert list(skipped) == [ids[1]] and "changed state meanwhile" in skipped[ids[1]]
    assert Job.objects.get(pk=ids[1]).max_attempts == 3, "the moved job was not overwritten"


def test_a_job_whose_unique_key_is_held_is_skipped_and_the_others_changed(users):
    make_job("queued", "a", unique_key="k1")
    held = make_job("failed", "a", unique_key="k1")
    free = failed_jobs(3, "a")
    op = bulk_batches.run(bulk.create("requeue", {"state": "failed"}, actor=users["alice"]).pk)
    assert (op.state, op.matched, op.changed, op.skipped) == ("done", 4, 3, 1)
    assert "unique key" in op.error
    assert Job.objects.get(pk=held.pk).state == "failed"
    assert Job.objects.filter(pk__in=free, state="queued").count() == 3
    assert job_audit().count() == 3


def test_jobs_enqueued_after_creation_are_not_touched(users):
    failed_jobs(3, "a")
    op = bulk.create("requeue", {"state": "failed"}, actor=users["alice"])
    late = failed_jobs(2, "a")
    bulk_batches.run(op.pk)
    assert set(Job.objects.filter(pk__in=late).values_list("state", flat=True)) == {"failed"}


def test_permission_revoked_half_way_fails_the_operation(users):
    failed_jobs(6, "a")
    alice = users["alice"]
    op = bulk.create("requeue", {}, actor=alice, batch_size=2)
    bulk_batches.run(op.pk, max_batches=1)
    alice.user_permissions.remove(Permission.objects.get(codename="requeue_job"))
    op = bulk_batches.run(op.pk)
    assert (op.state, op.changed) == ("failed", 2)
    assert "no longer has permission" in op.error


def test_tenant_membership_removed_half_way_stops_changing_its_jobs(users):
    failed_jobs(6, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    bulk_batches.run(op.pk, max_batches=1)
    TenantMembership.objects.filter(user=users["alice"]).delete()
    op = bulk_batches.run(op.pk)
    assert (op.state, op.changed) == ("done", 2)
    assert Job.objects.filter(state="failed").count() == 4


def test_without_permission_nothing_is_created(users):
    failed_jobs(2, "a")
    with pytest.raises(bulk.operations.OperationForbidden):
        bulk.create("requeue", {}, actor=users["viewer"])
    assert not BulkOperation.objects.exists()


def test_cancel_and_retry_count_only_the_jobs_they_apply_to(users):
    make_job("queued", "a")
    make_job("running", "a")
    make_job("running", "a", cancel_requested_at=Now())
    make_job("queued", "a", run_after=Now() + timedelta(hours=1))
    make_job("failed", "a")
    assert bulk.preview("retry", {}, actor=users["alice"]).count == 1
    assert bulk.preview("cancel", {}, actor=users["alice"]).count == 3
    op = bulk_batches.run(bulk.create("cancel", {}, actor=users["alice"]).pk)
    assert (op.state, op.changed) == ("done", 3)
    assert Job.objects.filter(state="cancelled").count() == 2
    assert Job.objects.filter(state="running", cancel_requested_at__isnull=False).count() == 2
    assert job_audit("cancel").count() == 3


def test_the_superuser_acts_on_every_tenant_and_a_system_actor_too(users):
    failed_jobs(2, "a")
    failed_jobs(2, "b")
    failed_jobs(1, None)
    assert bulk.preview("requeue", {}, actor=users["root"]).count == 5
    op = bulk_batches.run(bulk.create("requeue", {"tenant": "b"}, actor="cli:ops").pk)
    assert (op.changed, op.actor_repr, op.actor_kind, op.tenants) == (2, "cli:ops", "system", None)
    assert job_audit().filter(actor_repr="cli:ops").count() == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"state": "exploded"}, "state"),
        ({"since": "yesterday"}, "not an ISO 8601 date"),
        ({"until": "2026-13-01"}, "not an ISO 8601 date"),
        ({"task": "tests.tasks.\x00add"}, "task"),
        ({"queue": "q\ud800"}, "lone surrogate"),
        ({"colour": "red"}, "unknown filter field"),
        ({"state": 3}, "must be text"),
        # the ends of the calendar: the whole day after 9999-12-31, or a time whose UTC
        # instant is not a date any more, cannot be compared with (a 500 before)
        ({"until": "9999-12-31"}, "out of range"),
        ({"since": "0001-01-01T00:00+14:00"}, "out of range"),
        ({"until": "9999-12-31T23:59-14:00"}, "out of range"),
    ],
)
def test_bad_filters_are_clear_errors(users, data, message):
    with pytest.raises(bulk.BulkFilterError, match=message) as exc:
        bulk.create("requeue", data, actor=users["alice"])
    assert exc.value.status == 400
    assert not BulkOperation.objects.exists()


def test_since_takes_a_date_or_an_iso_time(users):
    failed_jobs(2, "a")
    assert bulk.preview("requeue", {"since": "2000-01-01"}, actor=users["alice"]).count == 2
    assert bulk.preview("requeue", {"since": "2000-01-01T10:00:00+02:00"}, actor=users["alice"]).count == 2
    assert bulk.preview("requeue", {"since": "2999-01-01T00:00"}, actor=users["alice"]).count == 0
    assert bulk.preview("requeue", {"until": "2000-01-01"}, actor=users["alice"]).count == 0


def test_nothing_matching_is_done_at_once(users):
    op = bulk.create("requeue", {"state": "failed"}, actor=users["alice"])
    assert (op.state, op.matched) == ("done", 0)


def test_cancelling_an_operation_stops_it(users):
    failed_jobs(4, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    bulk_batches.run(op.pk, max_batches=1)
    op = bulk.cancel(op.pk, actor=users["alice"])
    assert op.state == "cancelled"
    assert bulk_batches.run(op.pk).changed == 2
    with pytest.raises(bulk.operations.JobNotFound):
        bulk.cancel(op.pk, actor=users["bob"])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_cancel_waiting_for_a_running_batch_records_the_operation_as_that_batch_left_it(users):
    """bulk.cancel read the operation before it took the row: a cancel that waited for a
    runner's batch audited the state and count from before that batch."""
    import threading

    from django.db import connections

    failed_jobs(4, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    in_batch, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def runner() -> None:  # a batch in flight: the row taken, two jobs changed, not committed
        try:
            with transaction.atomic():
                bulk.take(op.pk, "default", "console")
                BulkOperation.objects.filter(pk=op.pk).update(changed=2, cursor=2)
                in_batch.set()
                release.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def canceller() -> None:
        try:
            bulk.cancel(op.pk, actor=users["alice"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner), threading.Thread(target=canceller)]
    threads[0].start()
    assert in_batch.wait(timeout=30)
    threads[1].start()
    with connection.cursor() as cursor:  # the cancel waits for the batch's row lock
        for _ in range(600):
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.05)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    row = OperatorAction.objects.get(action="bulk.requeue.cancel")
    assert row.state_before == {"state": "running", "changed": 2}


def test_the_leaders_service_finishes_unfinished_operations(users):
    failed_jobs(5, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    assert bulk_batches.run_unfinished(max_batches=1) == 1, "a console operation is the leader's at once"
    assert BulkOperation.objects.get(pk=op.pk).runner == "leader"
    assert bulk_batches.run_unfinished(max_batches=1) == 1
    assert BulkOperation.objects.get(pk=op.pk).changed == 4
    bulk_batches.run_unfinished()
    assert BulkOperation.objects.get(pk=op.pk).state == "done"


def test_the_leader_leaves_a_commands_operation_alone_until_it_is_idle(users):
    failed_jobs(3, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    bulk_batches.run(op.pk, max_batches=1, runner="cli:host:123")
    assert bulk_batches.run_unfinished() == 0, "a command may still be running it"
    advance_clock(bulk.IDLE_SECONDS + 1)
    assert bulk_batches.run_unfinished() == 1
    assert BulkOperation.objects.get(pk=op.pk).state == "done"


# --- the console -------------------------------------------------------------------------


def test_console_flow_count_confirm_post_progress(client_for, users):
    failed_jobs(8, "a")
    failed_jobs(3, "b")
    client = client_for("alice", csrf=True)
    listing = client.get("/taskengine/jobs/?state=failed")
    assert b"Requeue all matching" in listing.content
    page = client.get("/taskengine/jobs/bulk/requeue/?state=failed")
    assert page.status_code == 200
    assert b'data-count="8"' in page.content and b"requeue all 8 jobs" in page.content
    assert not BulkOperation.objects.exists(), "the confirmation page only reads"

    no_csrf = client.post("/taskengine/jobs/bulk/requeue/", {"state": "failed", "expected": "8"})
    assert no_csrf.status_code == 403
    token = client.cookies["csrftoken"].value
    wrong = client.post(
        "/taskengine/jobs/bulk/requeue/", {"state": "failed", "expected": "9", "csrfmiddlewaretoken": token}
    )
    assert wrong.status_code == 200 and b"is now 8" in wrong.content
    assert not BulkOperation.objects.exists()

    done = client.post(
        "/taskengine/jobs/bulk/requeue/",
        {"state": "failed", "expected": "8", "reason": "fixed", "csrfmiddlewaretoken": token},
    )
    assert done.status_code == 303
    op = BulkOperation.objects.get()
    assert done["Location"] == f"/taskengine/bulk/{op.pk}/"
    assert (op.state, op.changed, op.filter) == ("done", 8, {"state": "failed"})
    assert Job.objects.filter(tenant="b", state="failed").count() == 3
    assert job_audit().count() == 8
    with CaptureQueriesContext(connection) as queries:
        progress = client.get(done["Location"])
    assert not [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert progress.status_code == 200 and b'id="te-bulk-changed">8<' in progress.content
    assert client_for("bob").get(done["Location"]).status_code == 404, "another tenant's operation"
    assert client.get("/taskengine/bulk/").status_code == 200


def test_console_refuses_without_permission(client_for, users):
    failed_jobs(2, "a")
    viewer = client_for("viewer")
    assert b"Requeue all matching" not in viewer.get("/taskengine/jobs/").content
    assert viewer.get("/taskengine/jobs/bulk/requeue/").status_code == 403
    assert viewer.post("/taskengine/jobs/bulk/requeue/", {"expected": "2"}).status_code == 403
    assert not BulkOperation.objects.exists()


def test_console_refuses_a_bad_reason_without_a_500(client_for, users):
    failed_jobs(1, "a")
    client = client_for("alice")
    page = client.post("/taskengine/jobs/bulk/requeue/", {"expected": "1", "reason": "oops\x00"})
    assert page.status_code == 200 and b"NUL" in page.content and b"nothing was changed" in page.content
    assert not BulkOperation.objects.exists()


def test_console_shows_a_bad_filter(client_for, users):
    page = client_for("alice").get("/taskengine/jobs/bulk/requeue/?since=nonsense")
    assert page.status_code == 200 and b"not an ISO 8601 date" in page.content


# --- the API ---------------------------------------------------------------------------


def post_json(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def test_api_dry_run_create_and_progress(client_for, users):
    failed_jobs(6, "a")
    failed_jobs(2, "b")
    client = client_for("alice")
    dry = post_json(
        client, "/taskengine/api/v1/bulk", {"action": "requeue", "filter": {"state": "failed"}, "dry_run": True}
    )
    assert dry.status_code == 200 and dry.json() == {
        "action": "requeue",
        "filter": {"state": "failed"},
        "count": 6,
        "dry_run": True,
    }
    assert not BulkOperation.objects.exists() and Job.objects.filter(state="queued").count() == 0
    stale = post_json(client, "/taskengine/api/v1/bulk", {"action": "requeue", "filter": {}, "expected": 5})
    assert stale.status_code == 409
    made = post_json(
        client, "/taskengine/api/v1/bulk", {"action": "requeue", "filter": {"state": "failed"}, "expected": 6}
    )
    assert made.status_code == 201
    op = made.json()["operation"]
    assert set(op) == {
        "id",
        "action",
        "filter",
        "actor",
        "tenants",
        "reason",
        "state",
        "matched",
        "changed",
        "skipped",
        "cursor",
        "max_job_id",
        "batch_size",
        "batches",
        "error",
        "created_at",
        "updated_at",
        "finished_at",
    }
    assert (op["state"], op["matched"], op["changed"], op["actor"], op["tenants"]) == ("done", 6, 6, "alice", ["a"])
    read = client.get(made["Location"])
    assert read.status_code == 200 and read.json()["operation"]["id"] == op["id"]
    assert client_for("bob").get(made["Location"]).status_code == 404
    assert [o["id"] for o in client.get("/taskengine/api/v1/bulk").json()["operations"]] == [op["id"]]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"action": "explode"}, 400, "action must be"),
        ({"action": "requeue", "filter": {"since": "x"}}, 400, "not an ISO 8601"),
        ({"action": "requeue", "filter": []}, 400, "filter must be"),
        ({"action": "requeue", "filter": {"tenant": "a\x00"}}, 400, "tenant"),
    ],
)
def test_api_errors(client_for, users, body, status, message):
    response = post_json(client_for("alice"), "/taskengine/api/v1/bulk", body)
    assert response.status_code == status and message in response.json()["error"]


def test_api_permission_and_csrf(client_for, users):
    failed_jobs(1, "a")
    response = post_json(client_for("viewer"), "/taskengine/api/v1/bulk", {"action": "requeue", "filter": {}})
    assert response.status_code == 403
    response = post_json(client_for("alice", csrf=True), "/taskengine/api/v1/bulk", {"action": "requeue"})
    assert response.status_code == 403 and "CSRF" in response.json()["error"]
    assert not BulkOperation.objects.exists()


def test_anonymous_and_non_staff_are_refused(users):
    from django.test import Client

    failed_jobs(1, "a")
    for url in ("/taskengine/jobs/bulk/requeue/", "/taskengine/bulk/", "/taskengine/bulk/1/"):
        assert Client().get(url).status_code == 302
    assert Client().get("/taskengine/api/v1/bulk").status_code == 403
    outsider = Client()
    outsider.force_login(users["outsider"])
    response = post_json(outsider, "/taskengine/api/v1/bulk", {"action": "requeue", "filter": {}})
    assert response.status_code == 403 and response.json()["error"] == "staff access required"
    assert not BulkOperation.objects.exists()


def test_the_leaders_maintenance_runs_the_bulk_service(users):
    from taskengine.runtime.leader_service import default_services

    failed_jobs(3, "a")
    op = bulk.create("requeue", {}, actor=users["alice"], batch_size=2)
    [service] = [s for s in default_services("default") if s.name == "bulk"]
    assert service.run_once(None) == 2  # the service does not use the lease
    assert BulkOperation.objects.get(pk=op.pk).state == "done"
