"""Bulk enqueue: on PostgreSQL, batches without unique keys are streamed with COPY (ids
reserved first); everything else takes the INSERT path. Both must store the same rows,
honour the caller's transaction, and leave nothing behind on bad input."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict, UserList
from datetime import timedelta
from http import HTTPStatus

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone
from django.utils.safestring import mark_safe
from prometheus_client import REGISTRY

from taskengine import store
from taskengine.backend import InvalidTaskArguments
from taskengine.compat import (
    TASKS_LOGGER,
    TaskResultStatus,
    default_task_backend,
    enqueue_is_observed,
    normalize_json,
    task_enqueued,
)
from taskengine.db.postgresql.copy_rows import CHUNK_ROWS
from taskengine.models import Job
from taskengine.values import json_ready
from tests import tasks
from tests.conftest import subprocess_database_url

pytestmark = pytest.mark.django_db(transaction=True)

BULK = store.BULK_INSERT_MIN + 20  # large enough for the COPY path
CHUNKS = 3 * CHUNK_ROWS + 7  # a COPY of four chunks, the last one short


def stored_columns(job_id: int) -> dict:
    """Every column enqueue writes, but the id and the times."""
    return (
        Job.objects.filter(pk=job_id)
        .values(
            "task_path",
            "backend",
            "queue",
            "priority",
            "args",
            "kwargs",
            "state",
            "attempts",
            "max_attempts",
            "timeout_seconds",
            "retry_backoff_seconds",
            "on_lease_expired",
            "unique_key",
            "tenant",
            "acting_user_id",
            "locked_by",
            "finished_at",
        )
        .get()
    )


def test_a_bulk_row_is_stored_exactly_like_a_single_enqueue(django_user_model):
    user = django_user_model.objects.create(username="bulk-user")
    task = tasks.add.using(
        priority=7, queue_name="demo", tenant="acme", acting_user=user, max_attempts=4, timeout=12.5, retry_backoff=0.5
    )
    args, kwargs = (1, ("nested", [1.5, None, True])), {"b": {"ü": "snow ☃", "n": 3}}
    single = task.enqueue(*args, **kwargs)
    bulk = task.get_backend().enqueue_many([(task, args, kwargs)] * BULK)
    assert stored_columns(int(single.id)) == stored_columns(int(bulk[0].id)) == stored_columns(int(bulk[-1].id))
    assert Job.objects.get(pk=bulk[0].id).args == [1, ["nested", [1.5, None, True]]]
    assert bulk[0].args == single.args and bulk[0].kwargs == single.kwargs


def test_text_with_copys_special_characters_is_stored_exactly_in_bulk():
    # The COPY path writes PostgreSQL's text format itself: a backslash, tab, newline or
    # carriage return in any text column or argument must come back as it went in.
    awkward = "a\\b\tc\nd\re \\N \\. ☃"
    task = tasks.add.using(tenant="t\\\t\n", queue_name="demo")
    calls = [(task, (awkward, i), {"k\t": awkward}) for i in range(BULK)]
    results = task.get_backend().enqueue_many(calls)
    single = task.enqueue(awkward, 0, **{"k\t": awkward})
    assert stored_columns(int(results[0].id)) == stored_columns(int(single.id))
    stored = Job.objects.get(pk=results[-1].id)
    assert stored.args == [awkward, BULK - 1]
    assert stored.kwargs == {"k\t": awkward}
    assert stored.tenant == "t\\\t\n"


def test_bulk_ids_follow_the_call_order_and_every_job_is_due_at_once():
    results = tasks.add.enqueue_many([(i, i) for i in range(BULK)])
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == BULK
    rows = Job.objects.filter(pk__in=ids).order_by("pk").values_list("args", "enqueued_at", "run_after")
    assert [args for args, _, _ in rows] == [[i, i] for i in range(BULK)]
    assert [enqueued for _, enqueued, _ in rows] == [r.enqueued_at for r in results]
    assert all(run_after == enqueued for _, enqueued, run_after in rows)
    assert all(r.status == TaskResultStatus.READY for r in results)


def test_a_bulk_of_many_chunks_returns_every_job_in_call_order_counted_once():
    labels = {"queue": "default", "task": tasks.add.module_path}
    before = REGISTRY.get_sample_value("taskengine_jobs_submitted_total", labels) or 0.0
    results = tasks.add.enqueue_many([(i, -i) for i in range(CHUNKS)])
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == CHUNKS
    stored = dict(Job.objects.filter(pk__in=ids).values_list("pk", "args"))
    assert [stored[job_id] for job_id in ids] == [[i, -i] for i in range(CHUNKS)]
    assert [r.args for r in results] == [[i, -i] for i in range(CHUNKS)]
    assert len({id(r.args) for r in results}) == CHUNKS  # each result's own list
    after = REGISTRY.get_sample_value("taskengine_jobs_submitted_total", labels)
    assert after - before == CHUNKS


def test_a_bad_argument_after_the_first_chunks_went_out_stores_none_of_them_and_the_callers_transaction_goes_on():
    # The COPY path checks each call's arguments while the server takes the chunks before
    # it: a refusal in the last chunk comes after three were sent. The call rolls back to
    # its own savepoint; the caller's transaction and what it wrote before are intact.
    calls = [(i, i) for i in range(CHUNKS)]
    calls[-2] = ({"text": "nul \x00 inside"}, 1)
    labels = {"queue": "default", "task": tasks.add.module_path}
    before = REGISTRY.get_sample_value("taskengine_jobs_submitted_total", labels) or 0.0
    with transaction.atomic():
        kept = tasks.add.enqueue(-1, -1)
        with pytest.raises(InvalidTaskArguments, match=r"args\[0\]\['text'\].*NUL"):
            tasks.add.enqueue_many(calls)
        also_kept = tasks.add.enqueue(-2, -2)
    assert sorted(Job.objects.values_list("pk", flat=True)) == sorted([int(kept.id), int(also_kept.id)])
    with pytest.raises(InvalidTaskArguments, match="NUL"):
        tasks.add.enqueue_many(calls)  # in autocommit: nothing of it either
    assert Job.objects.count() == 2
    after = REGISTRY.get_sample_value("taskengine_jobs_submitted_total", labels)
    assert after - before == 2


@pytest.mark.postgres
def test_a_bulk_refused_mid_copy_does_not_send_the_callers_values_to_the_server(monkeypatch):
    # psycopg ends a COPY left by an exception with a CopyFail message made of the
    # exception's text, and PostgreSQL writes it to its log; a refusal's text quotes the
    # caller's values. The spy passes every call through to psycopg's own writer.
    from psycopg.copy import LibpqWriter

    ended_with: list[BaseException | None] = []
    real_finish = LibpqWriter.finish

    def finish(self, exc=None):
        ended_with.append(exc)
        return real_finish(self, exc)

    monkeypatch.setattr(LibpqWriter, "finish", finish)
    calls = [(i, i) for i in range(CHUNKS)]
    calls[-1] = ({"card": "4111-secret \x00"}, 1)
    with pytest.raises(InvalidTaskArguments, match="4111-secret"):  # the caller is told where
        tasks.add.enqueue_many(calls)
    [stopped_by] = ended_with
    assert stopped_by is not None
    assert "4111-secret" not in f"{type(stopped_by).__qualname__} - {stopped_by}"
    assert not Job.objects.exists()


@pytest.mark.postgres
def test_a_streamed_insert_hands_each_chunk_to_the_server_before_reading_the_next():
    # What lets the client's work per job run beside the server's parsing: the jobs are
    # read a chunk at a time, and each chunk is reported sent before the next is read.
    template = default_task_backend.new_job(tasks.add, (0, 0), {})
    read: list[int] = []
    reported: list[tuple[int, int, list[int]]] = []

    def jobs():
        for i in range(CHUNKS):
            read.append(i)
            yield default_task_backend.new_job(tasks.add, (i, i), {})

    def sent(rows, inserted):
        reported.append((len(read), len(rows), [job.id for job in inserted]))

    store.insert_streamed(connection, CHUNKS, jobs(), sent)
    assert [(was_read, n) for was_read, n, _ in reported] == [
        (CHUNK_ROWS, CHUNK_ROWS),
        (2 * CHUNK_ROWS, CHUNK_ROWS),
        (3 * CHUNK_ROWS, CHUNK_ROWS),
        (CHUNKS, 7),
    ]
    ids = [job_id for _, _, chunk in reported for job_id in chunk]
    assert sorted(Job.objects.values_list("pk", flat=True)) == ids
    assert Job.objects.filter(task_path=template.task_path).count() == CHUNKS


@pytest.mark.postgres
def test_a_copied_bulk_is_enqueued_at_its_transactions_time():
    with transaction.atomic():
        results = tasks.add.enqueue_many([(i, i) for i in range(BULK)])
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            now = cursor.fetchone()[0]
    assert set(Job.objects.values_list("enqueued_at", flat=True)) == {now}
    assert {r.enqueued_at for r in results} == {now}


def test_bulk_run_after_is_kept_per_job():
    later = timezone.now() + timedelta(hours=1)
    results = tasks.add.using(run_after=later).enqueue_many([(i, 0) for i in range(BULK)])
    assert set(Job.objects.filter(pk__in=[r.id for r in results]).values_list("run_after", flat=True)) == {later}


def test_a_bulk_enqueue_rolled_back_with_its_transaction_stores_nothing_and_signals_nothing():
    seen = []
    task_enqueued.connect(
        lambda sender, task_result, **kw: seen.append(task_result.id), weak=False, dispatch_uid="bulk-rollback"
    )
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.enqueue_many([(i, i) for i in range(BULK)])
            assert Job.objects.count() == BULK  # visible inside the caller's transaction
            raise RuntimeError("roll back")
    finally:
        task_enqueued.disconnect(dispatch_uid="bulk-rollback")
    assert not Job.objects.exists()
    assert seen == []


def test_a_committed_bulk_enqueue_signals_every_job_after_commit():
    seen = []
    task_enqueued.connect(
        lambda sender, task_result, **kw: seen.append(task_result.id), weak=False, dispatch_uid="bulk-commit"
    )
    try:
        with transaction.atomic():
            results = tasks.add.enqueue_many([(i, i) for i in range(BULK)])
            assert seen == []
    finally:
        task_enqueued.disconnect(dispatch_uid="bulk-commit")
    assert seen == [r.id for r in results]


def test_one_bad_argument_in_a_bulk_stores_none_of_it():
    calls = [(i, i) for i in range(BULK)]
    calls[BULK // 2] = (object(), 1)
    with pytest.raises(InvalidTaskArguments):
        tasks.add.enqueue_many(calls)
    calls[BULK // 2] = (float("nan"), 1)
    with pytest.raises(InvalidTaskArguments):
        tasks.add.enqueue_many(calls)
    calls[BULK // 2] = ({"text": "nul \x00 inside"}, 1)
    with pytest.raises(InvalidTaskArguments, match="NUL"):
        tasks.add.enqueue_many(calls)
    for hidden in ("nul \x00 inside", mark_safe("safe \x00"), UserList(["in a list \x00"]), b"bytes \x00"):
        with pytest.raises(InvalidTaskArguments, match="NUL"):
            tasks.add.enqueue(hidden, 1)
    assert not Job.objects.exists()


def test_a_bulk_with_a_unique_key_keeps_one_live_job_per_key():
    plain = [(tasks.add, (i, 0), {}) for i in range(BULK)]
    keyed = [(tasks.add.using(unique_key="only-one"), (i, 1), {}) for i in range(3)]
    results = default_task_backend.enqueue_many(plain + keyed)
    assert Job.objects.count() == BULK + 1
    assert len({r.id for r in results[BULK:]}) == 1


def test_the_garbage_collector_is_running_again_after_a_bulk_enqueue_even_a_failed_one():
    assert gc.isenabled()
    tasks.add.enqueue_many([(i, i) for i in range(BULK)])
    assert gc.isenabled()
    with pytest.raises(InvalidTaskArguments):
        tasks.add.enqueue_many([(object(), 0)] * BULK)
    assert gc.isenabled()


@pytest.mark.postgres
@pytest.mark.parametrize("count", [1, 3, BULK], ids=["single", "insert", "copy"])
def test_workers_are_notified_on_commit_only(count):
    with psycopg.connect(
        subprocess_database_url().replace("postgres://", "postgresql://"), autocommit=True
    ) as listener:
        listener.execute("LISTEN taskengine_jobs")
        with pytest.raises(RuntimeError), transaction.atomic():
            tasks.add.using(queue_name="demo").enqueue_many([(i, i) for i in range(count)])
            raise RuntimeError("roll back")
        assert list(listener.notifies(timeout=0.3)) == []
        tasks.add.using(queue_name="demo").enqueue_many([(i, i) for i in range(count)])
        received = list(listener.notifies(timeout=1.0, stop_after=1))
    assert [n.payload for n in received] == ["demo"]


@pytest.mark.postgres
@pytest.mark.parametrize("count", [3, BULK], ids=["insert", "copy"])
def test_one_notify_per_queue_with_due_jobs_and_none_for_deferred_ones(count):
    later = timezone.now() + timedelta(hours=1)
    with psycopg.connect(
        subprocess_database_url().replace("postgres://", "postgresql://"), autocommit=True
    ) as listener:
        listener.execute("LISTEN taskengine_jobs")
        tasks.add.using(run_after=later).enqueue_many([(i, i) for i in range(count)])
        assert list(listener.notifies(timeout=0.3)) == []
        mixed = [
            (tasks.add.using(queue_name=q, run_after=later if q == "default" else None), (i, 0), {})
            for i in range(count)
            for q in ("default", "demo")
        ]
        mixed.append((tasks.add.using(queue_name="default"), (0, 0), {}))  # one due job in default
        default_task_backend.enqueue_many(mixed)
        received = sorted(n.payload for n in listener.notifies(timeout=0.5))
    assert received == ["default", "demo"]


# --- the Python fast paths behave like Django's own ---------------------------------


class Pairs(OrderedDict):
    pass


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        (1, "a", 2.5, True, None),
        [[1, (2, 3)], {"k": (4,)}],
        {1: "int key", "s": [b"bytes"]},
        UserList([1, 2]),
        Pairs(a=1),
        mark_safe("<b>"),
        {"deep": [{"x": (b"y",)}]},
        HTTPStatus.OK,
        [HTTPStatus.OK, UserList([mark_safe("x")])],
    ],
)
def test_json_ready_matches_normalize_json(value):
    assert json_ready(value) == normalize_json(value)
    assert type(json_ready(value)) is type(normalize_json(value))


@pytest.mark.parametrize("value", [object(), [1, {2, 3}], {"k": b"\xff"}])
def test_json_ready_rejects_what_normalize_json_rejects(value):
    with pytest.raises((TypeError, ValueError)) as ours:
        json_ready(value)
    with pytest.raises((TypeError, ValueError)) as djangos:
        normalize_json(value)
    assert type(ours.value) is type(djangos.value)


def test_task_enqueued_is_sent_only_when_something_would_observe_it(caplog):
    caplog.set_level(logging.INFO, logger=TASKS_LOGGER)
    assert not enqueue_is_observed()  # django.tasks' own receiver logs at DEBUG only
    caplog.set_level(logging.DEBUG, logger=TASKS_LOGGER)
    assert enqueue_is_observed()
    result = tasks.add.enqueue(1, 2)
    assert f"Task id={result.id} path=tests.tasks.add enqueued" in caplog.text
    caplog.set_level(logging.INFO, logger=TASKS_LOGGER)
    task_enqueued.connect(lambda **kw: None, weak=False, dispatch_uid="observer")
    try:
        assert enqueue_is_observed()
    finally:
        task_enqueued.disconnect(dispatch_uid="observer")
