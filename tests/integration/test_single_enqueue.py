"""A single enqueue on PostgreSQL, in both modes of ``TASKENGINE["LIBPQ_FAST_PATH"]``
(the ``fast_path`` fixture runs each test with it off, the default, and on). Off, every
enqueue takes the engine's cursor. On, an enqueue outside a transaction runs its INSERT
through libpq itself (taskengine/db/postgresql/libpq.py); inside a transaction, with an
execute wrapper installed, with POLL_ONLY or with a unique key it takes the engine's
cursor. Both must store the same row, report errors as Django's database errors and
lose nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, OperationalError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from taskengine import store
from taskengine.db.postgresql import libpq
from taskengine.models import Job
from tests import tasks
from tests.integration.test_bulk_enqueue import stored_columns

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=[False, True], ids=["cursor", "libpq"])
def fast_path(request, settings) -> bool:
    """TASKENGINE["LIBPQ_FAST_PATH"] off (the default), then on."""
    settings.TASKENGINE = {**settings.TASKENGINE, "LIBPQ_FAST_PATH": request.param}
    return bool(request.param)


@pytest.fixture
def libpq_calls(monkeypatch, fast_path):
    """Names of the statements run through libpq during the test."""
    calls: list[str] = []
    real = libpq.run

    def counting(conn, name, params):
        calls.append(name)
        return real(conn, name, params)

    monkeypatch.setattr(store.libpq, "run", counting)
    return calls


def test_outside_a_transaction_one_enqueue_stores_the_same_row_as_inside_one(libpq_calls, fast_path, django_user_model):
    user = django_user_model.objects.create(username="single-user")
    task = tasks.add.using(
        priority=-7,
        queue_name="demo",
        tenant="acme",
        acting_user=user,
        max_attempts=4,
        timeout=12.5,
        retry_backoff=0.25,
        run_after=timezone.now() + timedelta(hours=1),
    )
    args, kwargs = (1, ("nested", [1.5, None, True])), {"b": {"ü": "snow ☃ 'quoted' %s", "n": 3}}

    direct = task.enqueue(*args, **kwargs)
    assert libpq_calls == (["insert_job"] if fast_path else []), "libpq only with the fast path on"
    with transaction.atomic():
        through_cursor = task.enqueue(*args, **kwargs)
    assert libpq_calls == (["insert_job"] if fast_path else []), "inside a transaction the engine cursor is used"

    assert stored_columns(int(direct.id)) == stored_columns(int(through_cursor.id))
    row = Job.objects.get(pk=direct.id)
    assert row.run_after == task.run_after
    assert row.enqueued_at == direct.enqueued_at and direct.enqueued_at.tzinfo is not None
    assert direct.args == through_cursor.args and direct.kwargs == through_cursor.kwargs


def test_a_direct_enqueue_is_due_at_its_database_time(fast_path):
    result = tasks.noop.enqueue()
    row = Job.objects.get(pk=result.id)
    assert row.run_after == row.enqueued_at == result.enqueued_at
    assert abs(store.db_now() - row.enqueued_at) < timedelta(seconds=5)


def test_a_rolled_back_transaction_keeps_no_job(fast_path):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.noop.enqueue()
        raise RuntimeError("roll back")
    assert not Job.objects.filter(pk=result.id).exists()


def test_with_an_execute_wrapper_the_statement_goes_through_a_cursor_the_wrapper_sees(libpq_calls):
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        result = tasks.noop.enqueue()
    assert libpq_calls == []
    assert any("INSERT INTO taskengine_job" in s for s in seen)
    assert Job.objects.filter(pk=result.id).exists()


def test_without_prepared_statements_the_cursor_is_used(libpq_calls, settings):
    with override_settings(TASKENGINE={**settings.TASKENGINE, "POLL_ONLY": True}):
        result = tasks.noop.enqueue()
    assert libpq_calls == []
    assert Job.objects.filter(pk=result.id).exists()


def test_a_unique_key_enqueue_takes_the_conflict_aware_cursor_statement(libpq_calls):
    first = tasks.noop.using(unique_key="only-one").enqueue()
    second = tasks.noop.using(unique_key="only-one").enqueue()
    assert libpq_calls == []
    assert first.id == second.id
    assert Job.objects.filter(unique_key="only-one").count() == 1


def test_a_statement_deallocated_behind_the_engine_is_prepared_again(libpq_calls, fast_path):
    first = tasks.noop.enqueue()
    with connection.cursor() as cursor:
        cursor.execute("DISCARD ALL")
    second = tasks.noop.enqueue()
    assert libpq_calls == (["insert_job", "insert_job"] if fast_path else [])
    assert Job.objects.filter(pk__in=[first.id, second.id]).count() == 2


def test_a_server_error_is_djangos_error_and_stores_nothing_and_the_connection_goes_on(libpq_calls, fast_path):
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION taskengine_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.kwargs ? 'refuse' THEN
                    RAISE EXCEPTION 'refused by test' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER taskengine_test_refuse BEFORE INSERT ON taskengine_job
                FOR EACH ROW EXECUTE FUNCTION taskengine_test_refuse();""")
    try:
        with pytest.raises(IntegrityError, match="refused by test"):
            tasks.noop.enqueue(refuse=True)
        assert not Job.objects.filter(kwargs__has_key="refuse").exists()
        after = tasks.noop.enqueue()
        assert Job.objects.filter(pk=after.id).exists()
        assert libpq_calls == (["insert_job", "insert_job"] if fast_path else [])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER taskengine_test_refuse ON taskengine_job;DROP FUNCTION taskengine_test_refuse();"
            )


def test_a_lost_connection_is_an_operational_error_and_the_next_connection_works(libpq_calls, fast_path):
    tasks.noop.enqueue()  # connected and prepared
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    import psycopg

    with psycopg.connect(
        **{
            k: v
            for k, v in connection.get_connection_params().items()
            if k in ("dbname", "user", "password", "host", "port")
        },
        autocommit=True,
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(OperationalError):
        tasks.noop.enqueue()
    connection.close()  # what Django does at the end of a request whose connection broke
    after = tasks.noop.enqueue()
    assert Job.objects.filter(pk=after.id).exists()
    assert len(libpq_calls) == (3 if fast_path else 0)


@pytest.mark.parametrize(
    "value, text",
    [
        (None, None),
        ("snow ☃", "snow ☃".encode()),
        (True, b"t"),
        (False, b"f"),
        (7, b"7"),
        (-2.5, b"-2.5"),
        (0.1, b"0.1"),
    ],
)
def test_parameters_are_sent_in_postgres_text_form(value, text):
    assert libpq._text(value, "utf-8") == text


def test_an_int_enum_parameter_is_sent_as_its_number():
    from http import HTTPStatus

    assert libpq._text(HTTPStatus.OK, "utf-8") == b"200"


def test_statement_text_numbers_each_named_parameter_once_and_keeps_literal_percent():
    name, text, order = libpq._statement("insert_job")
    assert name == b"taskengine_insert_job"
    assert b"%(" not in text and b"$1" in text
    assert len(order) == len(set(order)) and "task_path" in order
    assert text.count(b"$") == len(order)
