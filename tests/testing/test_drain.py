"""drain(): due jobs run inline through the engine's real claim and finish statements."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test.utils import override_settings

from taskengine import store
from taskengine.jobs import NewJob
from taskengine.models import ExecutionLog, Job
from taskengine.testing import (
    TEST_WORKER_ID,
    DrainLimitReached,
    advance_clock,
    advance_clock_to,
    drain,
    engine_now,
)
from tests import tasks as suite_tasks

from . import tasks

# Both ways a project's tests reach the database: inside the test's transaction
# (pytest-django's default) and in autocommit (transaction=True).
both_transaction_modes = pytest.mark.parametrize("db_mode", ["db", "transactional_db"], indirect=False)


@pytest.fixture
def database(request, db_mode):
    request.getfixturevalue(db_mode)
    return db_mode


@both_transaction_modes
def test_drain_runs_a_job_through_the_claim_and_finish_statements(database):
    result = suite_tasks.add.enqueue(2, 3)
    drained = drain()
    assert (drained.ran, drained.succeeded, drained.failed) == (1, 1, 0)
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.attempts, job.return_value, job.locked_by) == ("succeeded", 1, 5, None)
    [log] = ExecutionLog.objects.filter(job_id=job.pk)
    assert (log.attempt, log.worker_id, log.outcome) == (1, TEST_WORKER_ID, "succeeded")
    assert log.finished_at is not None
    [final] = drained.results
    assert (final.id, final.status, final.return_value) == (result.id, "SUCCESSFUL", 5)
    assert drain().ran == 0


@pytest.mark.django_db
def test_a_handler_writes_inside_the_tests_transaction():
    tasks.create_user.enqueue("ada")
    assert not User.objects.filter(username="ada").exists()
    drain()
    assert User.objects.filter(username="ada").exists()
    assert connection.in_atomic_block  # still the test's transaction, not closed by drain


@both_transaction_modes
@override_settings(TASKENGINE={"RETRY_JITTER": 0})
def test_a_retry_is_not_run_before_it_is_due_unless_drain_advances_the_clock(database):
    result = tasks.succeed_on_third_attempt.enqueue()
    first = drain()
    assert (first.ran, first.retried, first.queued) == (1, 1, 1)
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.attempts) == ("queued", 1)
    assert job.run_after - engine_now() > timedelta(seconds=25)  # backoff 30 s, attempt 1

    rest = drain(advance=True)
    assert (rest.ran, rest.retried, rest.succeeded) == (2, 1, 1)
    assert rest.clock_advanced >= 30 + 60  # backoff 30 s, then 60 s
    assert [(a.attempt, a.outcome, a.state) for a in rest.attempts] == [
        (2, "retry", "queued"),
        (3, "succeeded", "succeeded"),
    ]
    outcomes = list(ExecutionLog.objects.filter(job_id=result.id).order_by("attempt").values_list("attempt", "outcome"))
    assert outcomes == [(1, "retry"), (2, "retry"), (3, "succeeded")]


@pytest.mark.django_db
def test_a_takes_context_task_sees_its_attempt_number_and_earlier_errors():
    result = tasks.succeed_on_third_attempt.enqueue()
    drained = drain(advance=True)
    [final] = drained.results
    assert final.return_value == {
        "attempt": 3,
        "errors": ["builtins.RuntimeError", "builtins.RuntimeError"],
        "worker_ids": [TEST_WORKER_ID] * 3,
    }
    assert final.id == result.id


@pytest.mark.django_db
def test_a_job_that_exhausts_its_attempts_fails_with_the_handlers_error():
    result = tasks.always_fails.enqueue("nope")
    drained = drain(advance=True)
    assert (drained.ran, drained.failed, drained.retried) == (2, 1, 1)
    assert drained.attempts[-1].error_class == "builtins.ValueError"
    assert drained.attempts[-1].error_message == "nope"
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.attempts) == ("failed", 2)
    [final] = drained.results
    assert final.status == "FAILED"
    assert [e.exception_class_path for e in final.errors] == ["builtins.ValueError"] * 2


@both_transaction_modes
def test_a_handler_running_past_its_timeout_is_interrupted_and_recorded_as_timed_out(database):
    result = tasks.spins_past_its_timeout.enqueue(30)
    started = time.monotonic()
    drained = drain()
    assert time.monotonic() - started < 10  # interrupted at 0.2 s, not left to spin 30 s
    [attempt] = drained.attempts
    assert (attempt.outcome, attempt.state) == ("timed_out", "failed")
    assert attempt.error_class == "taskengine.runtime.execution.JobTimedOut"
    assert ExecutionLog.objects.get(job_id=result.id).outcome == "timed_out"


@pytest.mark.django_db
def test_a_handler_within_its_timeout_is_not_interrupted_later():
    tasks.quick_with_timeout.enqueue()
    assert drain().succeeded == 1
    # Past the handler's 0.2 s deadline, in Python bytecode: a timer left armed would
    # raise JobTimedOut into the test here.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pass


@pytest.mark.django_db
def test_a_delayed_job_is_not_run_until_the_clock_reaches_it():
    run_at = engine_now() + timedelta(minutes=10)
    result = suite_tasks.add.using(run_after=run_at).enqueue(1, 1)
    assert drain().ran == 0
    advance_clock(timedelta(minutes=9))
    assert drain().ran == 0
    advance_clock(60)
    drained = drain()
    assert [a.job_id for a in drained.attempts] == [int(result.id)]


@pytest.mark.django_db
def test_advance_clock_to_makes_a_job_due_at_a_time_computed_in_python():
    from django.utils import timezone

    result = suite_tasks.add.using(run_after=timezone.now() + timedelta(hours=2)).enqueue(1, 1)
    advance_clock_to(Job.objects.get(pk=result.id).run_after - timedelta(seconds=1))
    assert drain().ran == 0
    advance_clock_to(Job.objects.get(pk=result.id).run_after)
    assert drain().ran == 1


@pytest.mark.django_db
def test_jobs_enqueued_by_handlers_are_drained_too():
    tasks.enqueues_follow_up.enqueue(3)
    drained = drain()
    assert [r.return_value for r in drained.results] == [3, 2, 1, 0]


@pytest.mark.django_db
def test_drain_stops_a_task_that_keeps_enqueueing_itself():
    tasks.enqueues_itself.enqueue()
    with pytest.raises(DrainLimitReached, match="ran 5 attempts"):
        drain(max_jobs=5)
    assert not Job.objects.filter(state="running").exists()
    assert Job.objects.filter(state="queued").count() == 1


@pytest.mark.django_db
def test_drain_runs_only_the_queues_it_is_given():
    on_default = suite_tasks.add.enqueue(1, 2)
    on_demo = suite_tasks.add.using(queue_name="demo").enqueue(3, 4)
    drained = drain(queues=["demo"])
    assert [a.job_id for a in drained.attempts] == [int(on_demo.id)]
    assert Job.objects.get(pk=on_default.id).state == "queued"


@pytest.mark.django_db
def test_drain_runs_in_priority_order():
    low = suite_tasks.add.using(priority=-5).enqueue(0, 0)
    high = suite_tasks.add.using(priority=5).enqueue(0, 1)
    assert [a.job_id for a in drain().attempts] == [int(high.id), int(low.id)]


@both_transaction_modes
def test_an_async_handler_runs_through_run_async(database):
    result = tasks.async_double.enqueue(21)
    drained = drain()
    assert drained.results[0].return_value == 42
    assert Job.objects.get(pk=result.id).state == "succeeded"


@pytest.mark.django_db
def test_an_attempt_that_breaks_the_tests_transaction_is_still_recorded():
    User.objects.create(username="taken")
    result = tasks.creates_then_duplicates.enqueue("taken")
    [attempt] = drain().attempts
    assert (attempt.outcome, attempt.state) == ("failed", "failed")
    assert attempt.error_class == "django.db.utils.IntegrityError"
    assert Job.objects.get(pk=result.id).state == "failed"
    assert User.objects.filter(username="taken").exists()  # the test's own writes stay
    # The broken transaction was rolled back to where the attempt began.
    assert not User.objects.filter(username="taken-first").exists()
    assert not connection.needs_rollback


@pytest.mark.django_db
def test_a_job_whose_task_does_not_import_fails_its_attempt():
    [inserted] = store.insert_jobs(
        connection,
        [NewJob(task_path="tests.testing.tasks.no_such_task", queue="default", args=[], kwargs={}, max_attempts=1)],
    )
    [attempt] = drain().attempts
    assert (attempt.job_id, attempt.outcome, attempt.state) == (inserted.id, "failed", "failed")
    assert "cannot import task" in attempt.error_message


@pytest.mark.django_db(transaction=True)
def test_a_job_enqueued_in_a_rolled_back_transaction_is_never_drained():
    with pytest.raises(RuntimeError), transaction.atomic():
        suite_tasks.add.enqueue(1, 2)
        raise RuntimeError("roll back")
    assert drain().ran == 0


@pytest.mark.postgres
@override_settings(TASKENGINE={"USE_ADVISORY_LOCKS": True})
def test_drain_claims_through_the_advisory_lock_path_when_configured(db):
    result = suite_tasks.add.enqueue(20, 22)
    assert drain().results[0].return_value == 42
    assert ExecutionLog.objects.get(job_id=result.id).worker_id == TEST_WORKER_ID
    # The claim's transaction-scoped lock on the job stays until the test's transaction ends.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = %s",
            [store.ADVISORY_LOCK_NAMESPACE],
        )
        assert [row[0] for row in cursor.fetchall()] == [int(result.id)]
