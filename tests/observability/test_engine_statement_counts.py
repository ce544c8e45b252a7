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
