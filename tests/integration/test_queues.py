"""Queues as records: the claim never takes a paused queue's jobs (and only those), enqueue
and finishing go on, settings and operator changes combine as docs/queues.md says, the
polling worker shortens its idle wait while a queue of its own is paused, and /metrics
reports the pause. On both databases."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from taskengine import queues, store
from taskengine.jobs import Outcome
from taskengine.models import Job, OperatorAction, Queue
from taskengine.observability import collectors
from taskengine.ops import queue_changes, queue_control, queue_settings
from taskengine.ops.operations import JobNotFound, OperationError, OperationForbidden, OperationRefused
from taskengine.runtime.worker import Worker
from taskengine.states import AttemptOutcome
from taskengine.testing import drain
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

CLI = "cli:tester"


def claim(queues_: tuple[str, ...] = ("default", "demo"), limit: int = 10, advisory: bool = False) -> list:
    return store.claim_jobs(
        connection, worker_id="w1", queues=list(queues_), limit=limit, lease_seconds=30.0, advisory=advisory
    )


def queue(name: str) -> Queue:
    return Queue.objects.get(pk=name)


def test_a_paused_queue_is_never_claimed_from_while_other_queues_are():
    paused_queue_claims_nothing(advisory=False)


@pytest.mark.postgres
def test_the_advisory_claim_skips_a_paused_queue_too():
    paused_queue_claims_nothing(advisory=True)


def paused_queue_claims_nothing(*, advisory: bool) -> None:
    queue_control.pause("demo", actor=CLI, reason="maintenance")
    held = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(3)]
    free = [int(tasks.add.enqueue(2, i).id) for i in range(3)]
    claimed = claim(advisory=advisory)
    assert sorted(j.id for j in claimed) == sorted(free)
    assert set(Job.objects.filter(pk__in=held).values_list("state", flat=True)) == {"queued"}
    assert claim(("demo",), advisory=advisory) == []
    queue_control.resume("demo", actor=CLI)
    assert sorted(j.id for j in claim(("demo",), advisory=advisory)) == sorted(held)


def test_enqueue_into_a_paused_queue_works_and_running_jobs_finish_normally():
    running = tasks.add.using(queue_name="demo").enqueue(1, 1)
    [job] = claim(("demo",))
    queue_control.pause("demo", actor=CLI)
    later = tasks.add.using(queue_name="demo").enqueue(2, 2)
    assert Job.objects.get(pk=later.id).state == "queued"
    won = store.finish_jobs(
        connection,
        worker_id="w1",
        outcomes=[Outcome(job.id, job.attempt, "succeeded", AttemptOutcome.SUCCEEDED, return_value="2")],
    )
    assert won[int(running.id)][0] == "succeeded"
    assert claim(("demo",)) == []


def test_a_queue_without_a_row_is_not_paused_and_first_use_creates_it_unpaused():
    job = tasks.add.using(queue_name="demo").enqueue(1, 1)
    assert not Queue.objects.exists()  # enqueue never writes the queue table
    assert [j.id for j in claim(("demo",))] == [int(job.id)]
    queue_settings.sync_settings(connection.alias, ["demo", "default"])
    assert sorted(Queue.objects.values_list("name", "paused")) == [("default", False), ("demo", False)]


def test_pause_and_resume_are_compare_and_set_with_an_audit_row_each():
    first = queue_control.pause("demo", actor=CLI, reason="smtp down")
    row = queue("demo")
    assert (row.paused, row.paused_by, row.pause_reason) == (True, CLI, "smtp down")
    assert row.paused_at is not None
    with pytest.raises(OperationRefused, match=r"already paused \(by cli:tester"):
        queue_control.pause("demo", actor=CLI)
    second = queue_control.resume("demo", actor=CLI, reason="fixed")
    row = queue("demo")
    assert (row.paused, row.paused_at, row.paused_by, row.pause_reason) == (False, None, "", "")
    with pytest.raises(OperationRefused, match="already not paused"):
        queue_control.resume("demo", actor=CLI)
    audit = list(OperatorAction.objects.order_by("pk"))
    assert [(a.pk, a.action, a.target_type, a.target_id, a.actor_repr, a.reason) for a in audit] == [
        (first.audit_id, "queue.pause", "queue", "demo", CLI, "smtp down"),
        (second.audit_id, "queue.resume", "queue", "demo", CLI, "fixed"),
    ]
    assert audit[0].state_before["paused"] is False and audit[0].state_after["paused"] is True
    assert audit[1].state_after == {
        "paused": False,
        "paused_at": None,
        "paused_by": "",
        "pause_reason": "",
        "concurrency_limit": None,
        "rate": None,
    }


def test_a_failed_audit_insert_rolls_the_pause_back(monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(queue_changes.audit, "record", refuse)
    with pytest.raises(RuntimeError, match="audit table unavailable"):
        queue_control.pause("demo", actor=CLI)
    # The row the pause would have created is rolled back with it (the queue is new).
    assert not Queue.objects.filter(pk="demo").exists()
    queues.ensure(["demo"])
    with pytest.raises(RuntimeError, match="audit table unavailable"):
        queue_control.pause("demo", actor=CLI)
    assert queue("demo").paused is False
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    assert len(claim(("demo",))) == 1


@pytest.mark.parametrize("reason", ["a\x00b", "\ud800"])
def test_a_reason_postgresql_cannot_store_is_refused_and_nothing_is_written(reason):
    with pytest.raises(OperationError, match=r"reason.*(NUL character|lone surrogate)"):
        queue_control.pause("new-queue", actor=CLI, reason=reason)
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


def test_a_refused_or_failed_change_of_a_new_queue_leaves_no_row(monkeypatch):
    queue_control.pause("new-queue", actor=CLI)
    Queue.objects.all().delete()
    OperatorAction.objects.all().delete()

    def refuse(**kwargs):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(queue_changes.audit, "record", refuse)
    with pytest.raises(RuntimeError, match="audit table unavailable"):
        queue_control.pause("new-queue", actor=CLI)
    with pytest.raises(OperationRefused):
        queue_control.resume("other-new-queue", actor=CLI)  # a new queue is not paused
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


def test_an_actor_out_of_scope_creates_no_row_of_a_declared_queue(settings, django_user_model):
    from django.contrib.auth.models import Permission

    from taskengine.models import TenantMembership

    settings.TASKENGINE = {"QUEUES": {"reports-b": {"tenant": "b"}, "shared": {}}}
    user = django_user_model.objects.create_user("pauser-a", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="pause_queue"))
    TenantMembership.objects.create(user=user, tenant="a")
    user = django_user_model.objects.get(pk=user.pk)
    with pytest.raises(JobNotFound):
        queue_control.pause("reports-b", actor=user)
    with pytest.raises(OperationForbidden):
        queue_control.pause("shared", actor=user)
    with pytest.raises(JobNotFound):
        queue_control.pause("brand-new", actor=user)
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


# --- settings and operator changes ------------------------------------------------------


def test_settings_pause_applies_once_and_an_operator_resume_then_stands(settings):
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": True}}}
    assert queue_settings.sync_settings(connection.alias) == ["demo"]
    row = queue("demo")
    assert (row.paused, row.paused_by, row.settings_paused) == (True, "settings", True)
    assert OperatorAction.objects.get().actor_repr == "settings"
    queue_control.resume("demo", actor=CLI)
    assert queue_settings.sync_settings(connection.alias) == []  # same declared value: the operator's resume stands
    assert queue("demo").paused is False
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": False}}}
    assert queue_settings.sync_settings(connection.alias) == []  # a change of the declared value, already in effect
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": True}}}
    assert queue_settings.sync_settings(connection.alias) == ["demo"]  # a new change of the declared value applies
    assert queue("demo").paused is True


def test_declaring_a_queue_without_paused_never_resumes_an_operator_pause(settings):
    queue_control.pause("demo", actor=CLI, reason="incident")
    settings.TASKENGINE = {"QUEUES": {"demo": {}}}
    assert queue_settings.sync_settings(connection.alias) == []
    assert queue("demo").paused is True


def test_removing_a_declared_pause_resumes_the_queue(settings):
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": True}}}
    queue_settings.sync_settings(connection.alias)
    settings.TASKENGINE = {"QUEUES": {}}
    assert queue_settings.sync_settings(connection.alias) == ["demo"]
    assert (queue("demo").paused, queue("demo").settings_paused) == (False, False)


def test_an_operator_change_applies_a_pending_settings_change_first(settings):
    queue_settings.sync_settings(connection.alias, ["demo"])
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": True}}}  # deployed, not yet applied by a worker
    with pytest.raises(OperationRefused, match=r"already paused \(by settings"):
        queue_control.pause("demo", actor=CLI)
    queue_control.resume("demo", actor=CLI)  # the operator's change is the later one ...
    assert queue_settings.sync_settings(connection.alias) == []  # ... so a worker starting later keeps it
    assert queue("demo").paused is False


def test_the_settings_own_a_queues_tenant(settings):
    settings.TASKENGINE = {"QUEUES": {"demo": {"tenant": "a"}}}
    queue_settings.sync_settings(connection.alias)
    assert queue("demo").tenant == "a"
    settings.TASKENGINE = {"QUEUES": {}}
    queue_settings.sync_settings(connection.alias)
    assert queue("demo").tenant is None


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"demo": {"concurency": 5}}, r"unknown option\(s\) concurency"),
        ({"demo": {"concurrency": 0}}, "at least 1"),
        ({"demo": {"concurrency": "five"}}, "not a concurrency limit"),
        ({"demo": {"rate": "10/d"}}, "not a rate"),
        ({"demo": {"rate": "0/s"}}, "at least 1 start"),
        ({"demo": {"paused": "yes"}}, "must be True or False"),
        ({"demo": []}, "must be a dict"),
        ({"": {}}, "non-empty string"),
        ({"demo": {"tenant": 3}}, "must be a tenant name"),
        # The stored-text rule (values.text_problem): PostgreSQL cannot store them, and a
        # worker serving the queue could never register.
        ({"q\x00x": {}}, "NUL character"),
        ({"bad \udcff": {}}, "lone surrogate"),
        ({"demo": {"tenant": "a\x00b"}}, "NUL character"),
        ({"demo": {"tenant": "\ud800"}}, "lone surrogate"),
    ],
)
def test_bad_queue_settings_are_refused_with_the_entry_named(settings, declared, message):
    settings.TASKENGINE = {"QUEUES": declared}
    with pytest.raises(ImproperlyConfigured, match=message):
        queue_settings.sync_settings(connection.alias)


def test_the_system_check_reports_a_queue_name_or_tenant_postgresql_cannot_store(settings):
    from django.core.checks import run_checks

    settings.TASKENGINE = {"QUEUES": {"ok": {}, "q\x00x": {}}}
    [error] = [m for m in run_checks(tags=["taskengine"]) if m.id == "taskengine.E007"]
    assert "NUL character" in error.msg
    settings.TASKENGINE = {"QUEUES": {"ok": {"tenant": "\udcff"}}}
    [error] = [m for m in run_checks(tags=["taskengine"]) if m.id == "taskengine.E007"]
    assert "lone surrogate" in error.msg


@pytest.mark.parametrize("name", ["q\x00x", "bad \udcff"])
def test_an_operator_action_on_a_queue_name_postgresql_cannot_store_is_refused(name):
    with pytest.raises(OperationError, match=r"NUL character|lone surrogate"):
        queue_control.pause(name, actor=CLI)
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


# --- the worker's wake-up and /metrics ------------------------------------------------------


def test_a_polling_worker_waits_at_most_half_a_second_while_a_queue_of_its_own_is_paused():
    worker = Worker(queues=["default", "demo"], poll_only=True, max_backoff=2.0, backoff_base=0.05)
    worker._idle.rounds = 10  # long idle: the wait is at its ceiling
    assert worker._idle.next_wait() == 2.0
    queue_control.pause("demo", actor=CLI)
    assert worker._idle.next_wait() == queues.PAUSED_POLL_SECONDS
    other = Worker(queues=["default"], poll_only=True, max_backoff=2.0)
    other._idle.rounds = 10
    assert other._idle.next_wait() == 2.0  # not its queue
    assert worker._idle.poll_wait(2.0) == queues.PAUSED_POLL_SECONDS  # free slots beside running jobs: the same
    assert worker._idle.poll_wait(0.1) == 0.1
    queue_control.resume("demo", actor=CLI)
    # Once more short: the last look saw demo paused, and the claim before this wait may
    # have run before the resume (runtime/idle.py); then the full back-off.
    assert worker._idle.next_wait() == queues.PAUSED_POLL_SECONDS
    assert worker._idle.next_wait() == 2.0
    assert worker._idle.poll_wait(2.0) == 2.0


def test_a_worker_serving_a_queue_name_too_long_for_a_job_still_starts():
    queue_settings.sync_settings(connection.alias, ["default", "q" * 65])
    assert list(Queue.objects.values_list("name", flat=True)) == ["default"]


def test_metrics_report_which_queues_are_paused():
    queue_control.pause("demo", actor=CLI)
    queue_settings.sync_settings(connection.alias, ["default"])
    reading = collectors.EngineCollector(connection.alias)._read()
    assert reading.ok
    paused = {
        sample.labels["queue"]: sample.value
        for family in collectors.families(reading)
        if family.name == "taskengine_queue_paused"
        for sample in family.samples
    }
    assert paused["demo"] == 1.0
    assert paused["default"] == 0.0


@pytest.mark.parametrize("advance", [False, True])
def test_drain_leaves_a_paused_queues_jobs_queued(advance):
    queue_control.pause("demo", actor=CLI)
    held = tasks.add.using(queue_name="demo").enqueue(1, 1)
    free = tasks.add.enqueue(2, 2)
    result = drain(advance=advance)
    assert result.ran == 1
    assert Job.objects.get(pk=free.id).state == "succeeded"
    assert Job.objects.get(pk=held.id).state == "queued"
