"""The Task a running job hands over is the task as it was enqueued.

Django's backends put the task given to ``enqueue()`` — ``.using(...)`` options and all
— in the ``TaskResult`` of a ``takes_context`` task's ``TaskContext`` and of the
``task_started`` / ``task_finished`` signals. taskengine must do the same, and agree
with what ``get_result(id)`` reads back from the store at that moment: on a first
attempt and on a retry, for sync and async handlers, in a worker and in
``taskengine.testing.drain()``.

The one difference, documented in docs/tasks.md ("Differences from Django's
backends"; Django's backends never retry): once an attempt has been retried,
``task.run_after`` is when the retry became due — the engine reschedules a job by
moving it — so a retry's task equals the enqueued one but for ``run_after``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone

from taskengine.compat import TASKS_MODULE, Task, TaskResult, task_backends, task_finished, task_started
from taskengine.runtime.worker import Worker
from taskengine.testing import drain
from tests.django_tasks import tasks as test_tasks

pytestmark = pytest.mark.django_db(transaction=True)

ALIAS = "elsewhere"  # a second taskengine backend on the same database, so `backend` shows too


@pytest.fixture(autouse=True)
def _backends() -> Iterator[None]:
    tasks_setting = {
        **settings.TASKS,
        ALIAS: {**settings.TASKS["default"]},
        "immediate": {"BACKEND": f"{TASKS_MODULE}.backends.immediate.ImmediateBackend", "QUEUES": []},
    }
    with override_settings(TASKS=tasks_setting):
        yield


@pytest.fixture
def seen() -> Iterator[list[tuple[str, int, TaskResult, TaskResult | None]]]:
    """What the recording tasks' contexts and the signal receivers were handed:
    (where, attempt, the TaskResult, get_result(id) then — None where there is no store)."""

    def record(where: str):
        def receiver(sender, task_result, **kwargs) -> None:
            if task_result.task.func not in (
                test_tasks.records_its_context.func,
                test_tasks.records_its_context_async.func,
            ):
                return
            backend = task_backends[task_result.args[1]]
            stored = backend.get_result(task_result.id) if backend.supports_get_result else None
            test_tasks.SEEN.append((where, len(task_result.worker_ids), task_result, stored))

        return receiver

    on_started, on_finished = record("task_started"), record("task_finished")
    task_started.connect(on_started)
    task_finished.connect(on_finished)
    test_tasks.SEEN.clear()
    try:
        yield test_tasks.SEEN
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
        test_tasks.SEEN.clear()


def burst_worker(result: TaskResult) -> None:
    deadline = time.monotonic() + 20
    while True:
        Worker(queues=["demo"], burst=True, backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2).run()
        result.refresh()
        if result.is_finished or time.monotonic() > deadline:
            return


def drained(result: TaskResult) -> None:
    drain(queues=["demo"], advance=True)
    result.refresh()


def as_enqueued(t: Task, **options) -> Task:
    return t.using(
        priority=7,
        queue_name="demo",
        run_after=timezone.now() - timedelta(seconds=30),
        backend=ALIAS,
        unique_key="as-enqueued",
        tenant="acme",
        max_attempts=3,
        timeout=40.0,
        **options,
    )


@pytest.mark.parametrize("runner", [burst_worker, drained], ids=["worker", "drain"])
@pytest.mark.parametrize(
    "t", [test_tasks.records_its_context, test_tasks.records_its_context_async], ids=["sync", "async"]
)
@pytest.mark.parametrize("fail_first", [False, True], ids=["first-attempt", "retried"])
def test_context_and_signals_carry_the_task_as_enqueued(seen, runner: Callable, t: Task, fail_first: bool):
    enqueued = as_enqueued(t).enqueue(fail_first, ALIAS)
    runner(enqueued)
    assert enqueued.status == "SUCCESSFUL", enqueued.errors
    handed = [(where, attempt) for where, attempt, _, _ in seen]
    if fail_first:
        assert handed == [
            ("task_started", 1),
            ("context", 1),
            ("task_started", 2),
            ("context", 2),
            ("task_finished", 2),
        ]
    else:
        assert handed == [("task_started", 1), ("context", 1), ("task_finished", 1)]
    for where, attempt, result, stored in seen:
        assert (result.id, result.backend) == (enqueued.id, ALIAS), (where, attempt)
        # What get_result(id) read back at that moment.
        assert result.task == stored.task, (where, attempt)
        if attempt == 1:
            assert result.task == enqueued.task, (where, attempt)
        else:
            assert result.task.run_after > enqueued.task.run_after, (where, attempt)
            assert dataclasses.replace(result.task, run_after=enqueued.task.run_after) == enqueued.task, (
                where,
                attempt,
            )


@pytest.mark.parametrize("runner", [burst_worker, drained], ids=["worker", "drain"])
def test_a_task_enqueued_without_run_after_is_handed_over_without_one(seen, runner: Callable):
    enqueued = test_tasks.records_its_context.using(priority=-3, queue_name="demo", backend=ALIAS).enqueue(False, ALIAS)
    runner(enqueued)
    assert [(where, result.task.run_after) for where, _, result, _ in seen] == [
        ("task_started", None),
        ("context", None),
        ("task_finished", None),
    ]
    assert all(result.task == enqueued.task == stored.task for _, _, result, stored in seen)


def test_djangos_immediate_backend_hands_over_the_task_as_enqueued(seen):
    """The expectation held above, on Django's own backend (it has no run_after)."""
    enqueued = test_tasks.records_its_context.using(priority=7, queue_name="demo", backend="immediate").enqueue(
        False, "immediate"
    )
    assert [where for where, _, _, _ in seen] == ["task_started", "context", "task_finished"]
    for _, _, result, _ in seen:
        assert (result.task, result.backend) == (enqueued.task, "immediate")


@pytest.mark.parametrize("fail_first", [False, True], ids=["first-attempt", "retried"])
def test_a_job_whose_backend_alias_now_names_another_kind_of_backend_runs_on_the_engines_own(seen, fail_first):
    """The job's ``backend`` alias was a taskengine backend at enqueue; the settings now
    point it at Django's ImmediateBackend (a deploy renamed backends). The worker still
    runs the job, and a retry's context is read from the engine's store — through the
    task's own taskengine backend — not from a backend that has never seen the job."""
    enqueued = test_tasks.records_its_context.using(queue_name="demo", backend=ALIAS).enqueue(fail_first, "default")
    repointed = {**settings.TASKS, ALIAS: {"BACKEND": f"{TASKS_MODULE}.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=repointed):
        for _ in range(2):  # a retry is due at once (retry_backoff=0); a burst may end before it
            Worker(queues=["demo"], burst=True, backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2).run()
    enqueued.refresh()  # through ALIAS, a taskengine backend again
    assert enqueued.status == "SUCCESSFUL", enqueued.errors
    attempts = [(where, attempt) for where, attempt, _, _ in seen if where == "context"]
    assert attempts == ([("context", 1), ("context", 2)] if fail_first else [("context", 1)])
    for where, attempt, result, _ in seen:
        assert result.id == enqueued.id and result.backend == "default", (where, attempt)
