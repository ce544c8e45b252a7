"""django-prometheus's database counters count the engine's own statements: the engine's
cursor (db/base.py) runs them through the cursor class django-prometheus's backend
counts with, on both databases. The one exception is documented in docs/observability.md:
with ``TASKENGINE["LIBPQ_FAST_PATH"]`` on, a single enqueue outside a transaction on
PostgreSQL goes through libpq itself, which no cursor counts (taskengine's own
``taskengine_jobs_submitted_total`` still does)."""

from __future__ import annotations

import pytest
from django.db import connection
from prometheus_client import REGISTRY

from taskengine import store
from taskengine.jobs import Outcome
from taskengine.states import AttemptOutcome
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def executed() -> float:
    labels = {"alias": connection.alias, "vendor": connection.vendor}
    return REGISTRY.get_sample_value("django_db_execute_total", labels) or 0.0


def submitted() -> float:
    labels = {"queue": "default", "task": tasks.noop.module_path}
    return REGISTRY.get_sample_value("taskengine_jobs_submitted_total", labels) or 0.0


def test_the_engine_statements_are_counted_like_djangos_own():
    tasks.noop.enqueue()  # connected, the engine's cursor made and its session set up
    seen: list[str] = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    before = executed()
    with connection.execute_wrapper(wrapper):
        tasks.noop.enqueue()
        tasks.noop.enqueue_many([((), {}), ((), {})])
        claimed = store.claim_jobs(connection, worker_id="w1", queues=["default"], limit=10, lease_seconds=30.0)
        won = store.finish_jobs(
            connection,
            worker_id="w1",
            outcomes=[Outcome(job.id, job.attempt, "succeeded", AttemptOutcome.SUCCEEDED) for job in claimed],
        )
    assert len(claimed) == len(won) == 4
    engine = [s for s in seen if "taskengine_job" in s]
    assert len(engine) >= 4, seen  # two inserts, the claim, the finish
    assert executed() - before == len(seen), "every statement Django's cursors would count, no more, no fewer"


@pytest.mark.postgres
def test_with_the_libpq_fast_path_a_single_enqueue_is_not_counted_by_django_prometheus(settings):
    tasks.noop.enqueue()  # the engine's cursor made and its session set up (counted)
    settings.TASKENGINE = {**settings.TASKENGINE, "LIBPQ_FAST_PATH": True}
    tasks.noop.enqueue()  # the fast path's statement prepared
    before, jobs_before = executed(), submitted()
    tasks.noop.enqueue()
    assert executed() == before, "libpq itself: no cursor counts the INSERT"
    assert submitted() == jobs_before + 1, "taskengine's own counter counts the job"

    settings.TASKENGINE = {**settings.TASKENGINE, "LIBPQ_FAST_PATH": False}
    tasks.noop.enqueue()
    assert executed() == before + 1, "off (the default), the engine's cursor counts it"


@pytest.mark.postgres
def test_a_failing_engine_statement_counts_as_an_execution_an_error_by_type_and_a_duration():
    """The engine cursor's own counting (db/postgresql/cursors.py) writes what
    django-prometheus's cursor class would: the execution, the error under the driver
    exception's class name, and the statement's duration even though it raised."""
    from django.db import DataError

    tasks.noop.enqueue()  # the engine's cursor made
    labels = {"alias": connection.alias, "vendor": connection.vendor}
    error_labels = {**labels, "type": "DivisionByZero"}

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (executed(), sample("django_db_errors_total", error_labels))
    durations = sample("django_db_query_duration_seconds_count", labels)
    with pytest.raises(DataError), store.engine_cursor(connection) as cursor:
        cursor.execute("SELECT 1 / %(zero)s", {"zero": 0})
    assert (executed(), sample("django_db_errors_total", error_labels)) == (before[0] + 1, before[1] + 1)
    assert sample("django_db_query_duration_seconds_count", labels) == durations + 1
    tasks.noop.enqueue()  # the kept cursor still works after the error
    assert executed() == before[0] + 2
