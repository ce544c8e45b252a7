"""Hostile values at enqueue: every entry path applies one rule. The same input gets
the same clear error (an InvalidTaskArguments naming the field) and stores nothing, or
is stored and read back exactly — through ``enqueue`` (the engine's cursor),
``enqueue`` with ``TASKENGINE["LIBPQ_FAST_PATH"]`` on (on PostgreSQL outside a
transaction: libpq itself), ``enqueue`` inside a transaction (the cursor),
``enqueue`` with a unique key, ``enqueue_many`` (the JSON multi-row INSERT), a bulk
``enqueue_many`` (COPY on PostgreSQL) and the scheduler's ``backend.new_job``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from taskengine import store
from taskengine.backend import InvalidTaskArguments
from taskengine.compat import default_task_backend, task_backends
from taskengine.db.postgresql import libpq
from taskengine.db.rows import job_params, json_columns
from taskengine.jobs import NewJob
from taskengine.models import Job

from . import tasks
from .values import MEGABYTE, REFUSED, STORED, read_back

pytestmark = pytest.mark.django_db(transaction=True)

BULK = store.BULK_INSERT_MIN + 5


def _single(task, args, kwargs) -> list[int]:
    return [int(task.enqueue(*args, **kwargs).id)]


def _single_fast_path(task, args, kwargs) -> list[int]:
    with override_settings(TASKENGINE={**settings.TASKENGINE, "LIBPQ_FAST_PATH": True}):
        return _single(task, args, kwargs)


def _single_in_transaction(task, args, kwargs) -> list[int]:
    with transaction.atomic():
        return [int(task.enqueue(*args, **kwargs).id)]


_keys = itertools.count()


def _single_with_unique_key(task, args, kwargs) -> list[int]:
    return [int(task.using(unique_key=f"hostile-unique-{next(_keys)}").enqueue(*args, **kwargs).id)]


def _many(task, args, kwargs) -> list[int]:
    return [int(r.id) for r in task.enqueue_many([(tuple(args), kwargs), ((), {"plain": 1})])[:1]]


def _bulk(task, args, kwargs) -> list[int]:
    calls = [((), {"plain": i}) for i in range(BULK)]
    calls[BULK // 2] = (tuple(args), kwargs)
    return [int(task.enqueue_many(calls)[BULK // 2].id)]


def _scheduler_new_job(task, args, kwargs) -> list[int]:
    job = task_backends[task.backend].new_job(task, args, kwargs)
    return [store.insert_jobs(connection, [job])[0].id]


PATHS: dict[str, Callable[[Any, tuple, dict], list[int]]] = {
    "enqueue": _single,
    "enqueue_fast_path": _single_fast_path,
    "enqueue_in_transaction": _single_in_transaction,
    "enqueue_with_unique_key": _single_with_unique_key,
    "enqueue_many": _many,
    "enqueue_many_bulk": _bulk,
    "scheduler_new_job": _scheduler_new_job,
}

# Where a hostile value can sit in a call: (args, kwargs) built around it.
PLACES: dict[str, Callable[[Any], tuple[tuple, dict]]] = {
    "positional": lambda v: ((v,), {}),
    "keyword": lambda v: ((), {"field": v}),
    "nested": lambda v: ((1, {"outer": [0, {"inner": v}]}), {}),
}
WHERE = {"positional": "args[0]", "keyword": "kwargs['field']", "nested": "args[1]['outer'][1]['inner']"}
TOP = {"positional": "args[0]", "keyword": "kwargs['field']", "nested": "args[1]"}  # nesting is named here


@pytest.fixture
def fast_path_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = libpq.run

    def counting(conn, name, params):
        calls.append(name)
        return real(conn, name, params)

    monkeypatch.setattr(store.libpq, "run", counting)
    return calls


# Each test tries every place in turn (a parameter per place would triple the run
# time, which is the database flush between tests, for little more evidence).


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", REFUSED)
def test_a_value_no_database_can_keep_is_refused_on_every_path_naming_where_it_is(kind, path):
    value, reason = REFUSED[kind]
    for place, build in PLACES.items():
        args, kwargs = build(value)
        with pytest.raises(InvalidTaskArguments) as info:
            PATHS[path](tasks.echo, args, kwargs)
        message = str(info.value)
        assert reason in message, message
        assert TOP[place] in message, message
        if not kind.startswith("nested"):
            assert WHERE[place] in message, message
        assert "tests.hostile.tasks.echo" in message and "Nothing was enqueued" in message
        assert len(message) < 600, "the error quotes the value, not all of it"
    assert not Job.objects.exists()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", STORED)
def test_a_storable_value_is_stored_and_read_back_exactly_on_every_path(kind, path, fast_path_calls):
    given, expected = STORED[kind][0], read_back(kind)
    for place, build in PLACES.items():
        args, kwargs = build(given)
        [job_id] = PATHS[path](tasks.echo, args, kwargs)
        want_args, want_kwargs = build(expected)
        result = default_task_backend.get_result(str(job_id))
        assert result.args == list(_lists(want_args)) and result.kwargs == _lists(want_kwargs), place
    per_call = BULK if path == "enqueue_many_bulk" else 2 if path == "enqueue_many" else 1
    assert Job.objects.count() == per_call * len(PLACES)
    if path == "enqueue_fast_path" and connection.vendor == "postgresql":
        assert fast_path_calls == ["insert_job"] * len(PLACES), "outside a transaction enqueue takes libpq"
    else:
        assert fast_path_calls == [], "libpq only with the fast path on"


def _lists(value):
    """What JSON gives back for ``value``: tuples become lists."""
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def test_a_key_no_database_can_keep_is_refused_naming_the_key():
    for path in PATHS.values():
        with pytest.raises(InvalidTaskArguments, match="NUL") as info:
            path(tasks.echo, (), {"bad\x00key": 1})
        assert "key" in str(info.value)
        with pytest.raises(InvalidTaskArguments, match="surrogate"):
            path(tasks.echo, ({"bad \udcff key": 1},), {})
    assert not Job.objects.exists()


# --- the text options: tenant, unique key, acting user, queue, task path -----------------

TEXT_OPTIONS: dict[str, Callable[[str], Any]] = {
    "tenant": lambda text: tasks.echo.using(tenant=text),
    "unique_key": lambda text: tasks.echo.using(unique_key=text),
    "acting_user": lambda text: tasks.echo.using(acting_user=text),
}
BAD_TEXT = {"nul": ("acme\x00x", "NUL"), "lone_surrogate": ("acme\udcffx", "surrogate")}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", BAD_TEXT)
@pytest.mark.parametrize("option", TEXT_OPTIONS)
def test_a_text_option_no_database_can_keep_is_refused_on_every_path(option, bad, path):
    text, reason = BAD_TEXT[bad]
    with pytest.raises(InvalidTaskArguments) as info:
        PATHS[path](TEXT_OPTIONS[option](text), (), {})
    assert reason in str(info.value) and option in str(info.value)
    assert not Job.objects.exists()


@pytest.mark.parametrize("path", PATHS)
def test_a_tenant_with_a_nul_is_not_stored_cut_short(path):
    # The fast path passed text to libpq as a C string: "acme\x00x" became "acme".
    with pytest.raises(InvalidTaskArguments, match=r"tenant.*NUL"):
        PATHS[path](tasks.echo.using(tenant="acme\x00x"), (), {})
    assert not Job.objects.filter(tenant="acme").exists()


def test_an_acting_user_key_longer_than_the_column_is_refused_on_both_databases():
    with pytest.raises(InvalidTaskArguments, match=r"acting_user.*64"):
        tasks.echo.using(acting_user="u" * 65).enqueue()
    assert not Job.objects.exists()


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_a_queue_name_no_database_can_keep_is_refused(bad):
    text, reason = BAD_TEXT[bad]
    with override_settings(
        TASKS={"default": {"BACKEND": "taskengine.backend.DatabaseBackend", "QUEUES": ["default", text]}}
    ):
        with pytest.raises(InvalidTaskArguments, match=f"queue.*{reason}"):
            tasks.echo.using(queue_name=text).enqueue()
    assert not Job.objects.exists()


def test_a_task_path_no_database_can_keep_is_refused():
    from taskengine.compat import task

    def handler() -> None: ...

    handler.__qualname__ = "handler\x00evil"
    with pytest.raises(InvalidTaskArguments, match=r"task path.*NUL"):
        task(handler).enqueue()
    assert not Job.objects.exists()


def test_the_largest_options_each_database_keeps_are_stored_exactly():
    keyed = tasks.echo.using(tenant="t" * 64, unique_key="k☃" * 127 + "k", acting_user="ü" * 64)
    for name, path in PATHS.items():
        # One unique key for a whole batch would keep one job of it: batches go without.
        task = keyed.using(unique_key=None) if name.startswith("enqueue_many") else keyed
        Job.objects.all().delete()
        [job_id] = path(task, ("x" * MEGABYTE,), {})
        row = Job.objects.get(pk=job_id)
        assert (row.tenant, row.acting_user_id) == ("t" * 64, "ü" * 64)
        assert row.unique_key == (
            None
            if task is not keyed
            else "k☃" * 127 + "k"
            if path is not _single_with_unique_key
            else f"hostile-unique-{next(_keys) - 1}"
        )
        assert row.args == ["x" * MEGABYTE]


@pytest.mark.postgres
def test_libpq_refuses_text_with_a_nul_instead_of_cutting_it_short():
    # libpq passes parameters as C strings: without the check "acme\x00x" arrived as "acme".
    from django.db import DataError

    job = NewJob("tests.hostile.tasks.echo", "default", [], {}, tenant="acme\x00x")
    with override_settings(TASKENGINE={**settings.TASKENGINE, "LIBPQ_FAST_PATH": True}):
        assert libpq.usable(connection)
    with pytest.raises(DataError, match="NUL"):
        libpq.run(connection, "insert_job", json_columns(job_params(job)))
    assert not Job.objects.exists()
