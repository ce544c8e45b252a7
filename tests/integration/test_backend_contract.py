"""The django.tasks contract, against taskengine's DatabaseBackend."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test.utils import override_settings
from django.utils import timezone

from taskengine.backend import DatabaseBackend, EngineTask, InvalidTaskArguments
from taskengine.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    default_task_backend,
    task_backends,
    task_enqueued,
)
from taskengine.models import Job
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_backend_declares_every_capability():
    backend = task_backends["default"]
    assert isinstance(backend, DatabaseBackend)
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task
    assert backend.task_class is EngineTask


def test_enqueue_stores_a_ready_job_and_get_result_reads_it_back():
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None and result.started_at is None
    again = tasks.add.get_result(result.id)
    assert (again.id, again.args, again.kwargs, again.status) == (result.id, [2, 3], {}, TaskResultStatus.READY)
    assert again.worker_ids == [] and again.errors == []
    job = Job.objects.get(pk=result.id)
    assert (job.task_path, job.queue, job.state) == ("tests.tasks.add", "default", "queued")


def test_aenqueue_and_aget_result_work():
    result = async_to_sync(tasks.add.aenqueue)(1, 1)
    fetched = async_to_sync(tasks.add.aget_result)(result.id)
    assert fetched.id == result.id and fetched.args == [1, 1]


def test_get_result_of_an_unknown_id_raises_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("999999999")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not-a-number")


def test_get_result_through_another_task_raises_mismatch():
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.noop.get_result(result.id)


def test_refresh_reloads_status_from_the_store():
    result = tasks.add.enqueue(1, 2)
    Job.objects.filter(pk=result.id).update(state="cancelled", finished_at=timezone.now())
    result.refresh()
    assert result.status == TaskResultStatus.FAILED  # django.tasks has no CANCELLED
    assert result.finished_at is not None


def test_priority_queue_and_run_after_are_stored():
    when = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(priority=50, run_after=when).enqueue(1, 2)
    job = Job.objects.get(pk=result.id)
    assert job.priority == 50
    assert abs((job.run_after - when).total_seconds()) < 0.01


def test_unknown_queue_is_rejected_at_enqueue_and_nothing_is_stored():
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid"):
        tasks.add.using(queue_name="nowhere").enqueue(1, 2)
    assert not Job.objects.exists()


def test_queues_setting_is_honoured():
    with override_settings(TASKS={"default": {"BACKEND": "taskengine.backend.DatabaseBackend", "QUEUES": ["only"]}}):
        backend = task_backends["default"]
        assert backend.queues == {"only"}
        with pytest.raises(InvalidTask):
            backend.validate_task(tasks.add)


def test_priority_out_of_range_is_invalid():
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101)


def test_naive_run_after_is_invalid():
    from datetime import datetime

    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=datetime(2030, 1, 1))


def test_non_json_arguments_fail_at_enqueue_and_store_nothing():
    with pytest.raises(InvalidTaskArguments, match="JSON-serialisable") as info:
        tasks.add.enqueue(object(), 1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, InvalidTask)
    with pytest.raises(InvalidTaskArguments):
        tasks.add.enqueue(1, b=float("nan"))
    assert not Job.objects.exists()


def test_per_task_options_are_validated_and_stored():
    with pytest.raises(InvalidTask, match="max_attempts"):
        tasks.add.using(max_attempts=0)
    with pytest.raises(InvalidTask, match="timeout"):
        tasks.add.using(timeout=-1)
    result = tasks.add.using(max_attempts=7, timeout=12.5, retry_backoff=3).enqueue(1, 2)
    job = Job.objects.get(pk=result.id)
    assert (job.max_attempts, job.timeout_seconds, job.retry_backoff_seconds) == (7, 12.5, 3)


def test_tenant_acting_user_and_unique_key_are_set_at_call_time(django_user_model):
    user = django_user_model.objects.create(username="ada")
    result = tasks.add.using(tenant="acme", acting_user=user, unique_key="invoice-7").enqueue(1, 2)
    job = Job.objects.get(pk=result.id)
    assert (job.tenant, job.acting_user_id, job.unique_key) == ("acme", str(user.pk), "invoice-7")


def test_a_live_unique_key_returns_the_existing_job():
    first = tasks.add.using(unique_key="k").enqueue(1, 2)
    second = tasks.add.using(unique_key="k").enqueue(3, 4)
    assert second.id == first.id and second.args == [1, 2]
    assert Job.objects.count() == 1


def test_a_finished_job_frees_its_unique_key():
    first = tasks.add.using(unique_key="k").enqueue(1, 2)
    Job.objects.filter(pk=first.id).update(state="succeeded", finished_at=timezone.now())
    second = tasks.add.using(unique_key="k").enqueue(3, 4)
    assert second.id != first.id
    assert Job.objects.count() == 2


def test_bulk_enqueue_inserts_every_job_in_order():
    results = tasks.add.enqueue_many([(i, i) for i in range(500)] + [((1,), {"b": 9})])
    assert len(results) == 501
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids)
    stored = dict(Job.objects.filter(pk__in=ids).values_list("id", "args"))
    assert stored[ids[0]] == [0, 0] and stored[ids[499]] == [499, 499]
    assert Job.objects.get(pk=ids[500]).kwargs == {"b": 9}


def test_bulk_enqueue_with_unique_keys_keeps_one_live_job_per_key():
    keyed = [tasks.add.using(unique_key=f"k{i % 3}") for i in range(6)]
    results = default_task_backend.enqueue_many([(t, (i, 0), {}) for i, t in enumerate(keyed)])
    assert Job.objects.count() == 3
    assert [r.id for r in results[3:]] == [r.id for r in results[:3]]


def test_enqueue_inside_a_rolled_back_transaction_leaves_no_job_and_no_signal():
    seen = []
    task_enqueued.connect(
        lambda sender, task_result, **kw: seen.append(task_result.id), weak=False, dispatch_uid="test-rollback"
    )
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.enqueue(1, 2)
            raise RuntimeError("roll back")
    finally:
        task_enqueued.disconnect(dispatch_uid="test-rollback")
    assert not Job.objects.exists()
    assert seen == []


def test_task_enqueued_fires_only_after_commit():
    seen = []
    task_enqueued.connect(
        lambda sender, task_result, **kw: seen.append(task_result.id), weak=False, dispatch_uid="test-commit"
    )
    try:
        with transaction.atomic():
            result = tasks.add.enqueue(1, 2)
            assert seen == []
        assert seen == [result.id]
    finally:
        task_enqueued.disconnect(dispatch_uid="test-commit")


def test_default_options_from_settings_are_read_again_after_a_settings_change():
    """Job templates are kept per task object; a changed TASKENGINE must not be hidden."""
    before = tasks.noop.enqueue()
    with override_settings(TASKENGINE={"MAX_ATTEMPTS": 7, "TIMEOUT_SECONDS": 9.0}):
        changed = tasks.noop.enqueue()
    after = tasks.noop.enqueue()
    stored = dict(Job.objects.filter(pk__in=[before.id, changed.id, after.id]).values_list("pk", "max_attempts"))
    timeouts = dict(Job.objects.filter(pk__in=[before.id, changed.id, after.id]).values_list("pk", "timeout_seconds"))
    assert [stored[int(r.id)] for r in (before, changed, after)] == [3, 7, 3]
    assert [timeouts[int(r.id)] for r in (before, changed, after)] == [None, 9.0, None]


def test_tasks_made_per_call_do_not_grow_the_template_cache_without_bound():
    backend = tasks.noop.get_backend()
    per_call = [tasks.noop.using(unique_key=f"k-{i}") for i in range(backend._TEMPLATES_KEPT + 100)]
    results = backend.enqueue_many([(task, (), {}) for task in per_call])
    assert len({r.id for r in results}) == len(per_call)
    assert len(backend._templates) <= backend._TEMPLATES_KEPT
    assert Job.objects.filter(unique_key="k-5").count() == 1


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
def test_a_failing_task_enqueued_receiver_loses_no_job_and_is_logged(in_transaction, caplog):
    def broken(sender, task_result, **kwargs):
        raise RuntimeError("receiver is broken")

    task_enqueued.connect(broken)
    try:
        if in_transaction:
            with transaction.atomic():
                result = tasks.noop.enqueue()
        else:
            result = tasks.noop.enqueue()
    finally:
        task_enqueued.disconnect(broken)
    assert Job.objects.filter(pk=result.id).exists()
    assert "receiver is broken" in caplog.text
