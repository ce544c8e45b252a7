"""Django's own expectations of a task backend (its tests/tasks/), held against taskengine.

Each case is our own version of a backend-agnostic case in Django's test_dummy_backend.py,
test_immediate_backend.py and test_tasks.py. Cases about what happens *before* a task
runs are parametrised over Django's DummyBackend and taskengine; cases about running a
task over Django's ImmediateBackend and taskengine, where taskengine's run is: enqueue,
drain with an in-process burst worker, then ``result.refresh()``. The same assertions
pass on Django's backend, so they are Django's expectations, not ours.

Cases of Django's suite that cannot apply, and why:

- test_dummy_backend ``test_clear`` and the ``default_task_backend.results`` checks:
  DummyBackend's in-memory list; taskengine's results are rows (``get_result`` is checked
  instead).
- test_dummy_backend ``test_refresh_result`` mutates the dummy's stored result in place;
  here a worker really runs the job before the refresh.
- test_immediate_backend ``test_cannot_get_result``, ``test_cannot_refresh_result``,
  ``test_cannot_pass_run_after``: ImmediateBackend lacks those features; taskengine has
  them (``supports_get_result``, ``supports_defer``).
- test_immediate_backend ``test_throws_keyboard_interrupt``: ImmediateBackend runs the
  task in the caller and lets Ctrl-C through. A worker runs handlers on its own threads;
  a handler raising KeyboardInterrupt fails its attempt and the worker carries on (a
  handler must not stop the worker).
- ``test_doesnt_wait_until_transaction_commit_by_default`` (both backends): the
  ImmediateBackend version runs the task inside the transaction. taskengine stores the
  job on the caller's connection, so inside ``atomic()`` the result exists (ported
  below) but no worker can see it until the commit.
- test_tasks cases with no backend in them (``call``/``acall``, ``name``,
  ``module_path``, ``test_no_backends``, ``test_using_missing_backend``) and
  test_custom_backend.py: they test django.tasks itself or custom backend classes.
- test_metadata.py: task metadata is not in the installed Django (6.1); there is
  nothing to store.
- test_utils.py: django.tasks' helper functions, no backend involved.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.test.utils import override_settings
from django.utils import timezone

from taskengine.backend import DatabaseBackend
from taskengine.compat import (
    DEFAULT_TASK_QUEUE_NAME,
    TASKS_LOGGER,
    TASKS_MODULE,
    InvalidTask,
    InvalidTaskBackend,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task,
    task_backends,
)
from taskengine.models import ExecutionLog, Job
from taskengine.runtime.worker import Worker
from tests.django_tasks import tasks as test_tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _django_backends_beside_taskengine():
    """Django's DummyBackend and ImmediateBackend under their own aliases, next to
    taskengine's "default" (QUEUES [] on Django's: any queue name is valid there)."""
    tasks_setting = {
        **settings.TASKS,
        "dummy": {"BACKEND": f"{TASKS_MODULE}.backends.dummy.DummyBackend", "QUEUES": []},
        "immediate": {"BACKEND": f"{TASKS_MODULE}.backends.immediate.ImmediateBackend", "QUEUES": []},
    }
    with override_settings(TASKS=tasks_setting):
        task_backends["dummy"].clear()
        yield


def drain() -> Worker:
    worker = Worker(queues=["default"], burst=True, backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2)
    worker.run()
    return worker


@dataclass
class Backend:
    """One backend under test: its alias and how its results come to be final."""

    alias: str
    runs_on_enqueue: bool = False

    def bind(self, t: Task) -> Task:
        return t if self.alias == "default" else t.using(backend=self.alias)

    def settle(self, result: TaskResult) -> TaskResult:
        """The result once the task has run (taskengine: a burst worker, then refresh)."""
        if not self.runs_on_enqueue:
            drain()
            result.refresh()
        return result

    def asettle(self, result: TaskResult) -> TaskResult:
        if not self.runs_on_enqueue:
            drain()
            async_to_sync(result.arefresh)()
        return result


TASKENGINE = Backend("default")


@pytest.fixture(params=[Backend("immediate", runs_on_enqueue=True), TASKENGINE], ids=["django-immediate", "taskengine"])
def running_backend(request) -> Backend:
    return request.param


@pytest.fixture(params=[Backend("dummy", runs_on_enqueue=False), TASKENGINE], ids=["django-dummy", "taskengine"])
def storing_backend(request) -> Backend:
    return request.param


@contextmanager
def django_task_logs(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """The records of the ``django.tasks`` logger at ``level`` and above, as unittest's
    assertLogs sees them (the project's LOGGING does not propagate that logger to root,
    where pytest's caplog listens)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger(TASKS_LOGGER)
    handler = Collect(level)
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(level)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def output(records: list[logging.LogRecord]) -> list[str]:
    """Each record formatted as assertLogs formats it (with the exception, if any)."""
    formatter = logging.Formatter("%(levelname)s:%(name)s:%(message)s")
    return [formatter.format(r) for r in records]


# --- before the task runs (Django: DummyBackend) ---------------------------------------


@pytest.mark.parametrize("t", [test_tasks.noop_task, test_tasks.noop_task_async], ids=["sync", "async"])
def test_an_enqueued_task_is_ready_and_not_started(storing_backend, t):
    t = storing_backend.bind(t)
    result = t.enqueue(1, two=3)
    assert result.status == TaskResultStatus.READY and result.is_finished is False
    assert (result.started_at, result.last_attempted_at, result.finished_at) == (None, None, None)
    with pytest.raises(ValueError, match="Task has not finished yet"):
        _ = result.return_value
    assert result.task == t and (result.args, result.kwargs) == ([1], {"two": 3})
    assert result.attempts == 0 and result.errors == [] and result.enqueued_at is not None


def test_an_aenqueued_task_is_ready_and_not_started(storing_backend):
    t = storing_backend.bind(test_tasks.noop_task_async)
    result = async_to_sync(t.aenqueue)()
    assert result.status == TaskResultStatus.READY and result.attempts == 0
    assert result.task == t and (result.args, result.kwargs) == ([], {})


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"priority": 10},
        {"queue_name": "demo"},
        {"run_after": "in an hour"},
        {"run_after": "an hour ago"},
    ],
    ids=["plain", "priority", "queue", "deferred", "due-in-the-past"],
)
def test_get_result_equals_the_result_enqueue_returned(storing_backend, options):
    when = {"in an hour": timezone.now() + timedelta(hours=1), "an hour ago": timezone.now() - timedelta(hours=1)}
    if "run_after" in options:
        options = {"run_after": when[options["run_after"]]}
    t = storing_backend.bind(test_tasks.noop_task).using(**options)
    result = t.enqueue()
    backend = task_backends[storing_backend.alias]
    assert backend.get_result(result.id) == result
    assert t.get_result(result.id) == result
    assert async_to_sync(backend.aget_result)(result.id) == result
    assert async_to_sync(t.aget_result)(result.id) == result


def test_get_result_keeps_taskengines_call_time_options():
    t = test_tasks.noop_task.using(
        max_attempts=5, timeout=7.5, retry_backoff=2.0, unique_key="fidelity-1", tenant="acme"
    )
    result = t.enqueue(1, x=[1, 2])
    assert task_backends["default"].get_result(result.id) == result


def test_get_result_equals_each_result_of_a_bulk_enqueue():
    when = timezone.now() + timedelta(minutes=5)
    results = test_tasks.noop_task.enqueue_many([(1,), ((2,), {"x": 1})])
    results += test_tasks.noop_task.using(run_after=when).enqueue_many([()] * 3)
    backend = task_backends["default"]
    assert [backend.get_result(r.id) for r in results] == results


def test_refresh_right_after_enqueue_changes_nothing(storing_backend):
    result = storing_backend.bind(test_tasks.noop_task).enqueue()
    before = dataclasses.asdict(result)
    result.refresh()
    assert dataclasses.asdict(result) == before
    async_to_sync(result.arefresh)()
    assert dataclasses.asdict(result) == before


def test_get_result_of_a_missing_id_raises_does_not_exist(storing_backend):
    backend = task_backends[storing_backend.alias]
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("123")
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(backend.aget_result)("123")
    with pytest.raises(TaskResultDoesNotExist):
        storing_backend.bind(test_tasks.noop_task).get_result("123")


def test_get_result_through_another_task_raises_mismatch(storing_backend):
    result = storing_backend.bind(test_tasks.noop_task_async).enqueue()
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        storing_backend.bind(test_tasks.noop_task).get_result(result.id)
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        async_to_sync(storing_backend.bind(test_tasks.noop_task).aget_result)(result.id)


def test_enqueue_logs_one_debug_line_with_the_id(storing_backend):
    with django_task_logs() as records:
        result = storing_backend.bind(test_tasks.noop_task).enqueue()
    [line] = output(records)
    assert "enqueued" in line and result.id in line and line.startswith(f"DEBUG:{TASKS_LOGGER}:")


def test_a_task_that_takes_context_enqueues_ready(storing_backend):
    result = storing_backend.bind(test_tasks.get_task_id).enqueue()
    assert result.status == TaskResultStatus.READY


def test_an_unknown_queue_is_invalid_at_enqueue(storing_backend):
    def with_queues(queues: list[str]):
        alias = storing_backend.alias
        return override_settings(TASKS={**settings.TASKS, alias: {**settings.TASKS[alias], "QUEUES": queues}})

    with with_queues([]):  # any queue is valid: the task can be made
        t = storing_backend.bind(test_tasks.noop_task).using(queue_name="unknown_queue")
    with with_queues(["queue-1"]):
        with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
            t.enqueue()
        with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
            async_to_sync(t.aenqueue)()


def test_inside_a_transaction_the_result_exists_at_once(storing_backend):
    with transaction.atomic():
        result = storing_backend.bind(test_tasks.noop_task).enqueue()
        assert result.enqueued_at is not None
        assert task_backends[storing_backend.alias].get_result(result.id) == result


def test_a_backend_without_async_support_rejects_async_tasks(storing_backend, monkeypatch):
    backend = task_backends[storing_backend.alias]
    monkeypatch.setattr(backend, "supports_async_task", False)
    with pytest.raises(InvalidTask, match=r"(?i)Backend does not support async tasks"):
        backend.validate_task(test_tasks.noop_task_async)


def test_check_finds_nothing_wrong_when_installed(storing_backend):
    assert list(task_backends[storing_backend.alias].check()) == []


def test_the_default_backend_is_taskengines():
    backend = task_backends["default"]
    assert isinstance(backend, DatabaseBackend) and backend.alias == "default"
    assert test_tasks.noop_task.get_backend() is backend


# --- Task.using on taskengine's task class (Django: test_tasks.py) ----------------------


def test_using_returns_a_new_task_and_leaves_the_original_alone():
    now = timezone.now()
    t = test_tasks.noop_task
    assert t.using() == t and t.using() is not t
    assert (t.using(priority=1).priority, t.priority) == (1, 0)
    assert (t.using(queue_name="demo").queue_name, t.queue_name) == ("demo", DEFAULT_TASK_QUEUE_NAME)
    assert (t.using(run_after=now).run_after, t.run_after) == (now, None)
    chained = t.using(run_after=now).using(priority=10)
    assert (chained.priority, chained.run_after) == (10, now)


def test_using_an_unknown_backend_raises():
    with pytest.raises(InvalidTaskBackend, match=re.escape("The connection 'unknown' doesn't exist.")):
        test_tasks.noop_task.using(backend="unknown")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": -101}, "priority must be a whole number between -100 and 100."),
        ({"priority": 101}, "priority must be a whole number between -100 and 100."),
        ({"priority": 3.1}, "priority must be a whole number between -100 and 100."),
        ({"run_after": datetime.now()}, "run_after must be an aware datetime."),
        ({"queue_name": "queue-2"}, "Queue 'queue-2' is not valid for backend."),
    ],
)
def test_using_validates_against_the_backend(options, message):
    with pytest.raises(InvalidTask, match=message.replace(".", r"\.")):
        test_tasks.noop_task.using(**options)
    for priority in (100, -100, 0):
        test_tasks.noop_task.using(priority=priority)


def test_a_function_that_is_not_module_level_is_no_task():
    def inner() -> None:
        pass

    for func in (any, inner):
        with pytest.raises(InvalidTask, match=re.escape("Task function must be defined at a module level.")):
            task()(func)


def test_takes_context_needs_a_context_argument():
    with pytest.raises(
        InvalidTask, match=re.escape("Task takes context but does not have a first argument of 'context'.")
    ):
        task(takes_context=True)(test_tasks.calculate_meaning_of_life.func)


def test_arguments_that_are_not_json_are_rejected_at_enqueue():
    with pytest.raises(TypeError, match="Unsupported type"):
        test_tasks.noop_task.enqueue(datetime.now())
    with pytest.raises(TypeError, match="Unsupported type"):
        async_to_sync(test_tasks.noop_task.aenqueue)(datetime.now())
    assert not Job.objects.exists()


# --- running the task (Django: ImmediateBackend) ---------------------------------------


@pytest.mark.parametrize("t", [test_tasks.noop_task, test_tasks.noop_task_async], ids=["sync", "async"])
def test_a_task_runs_to_success(running_backend, t):
    t = running_backend.bind(t)
    result = running_backend.settle(t.enqueue(1, two=3))
    assert result.status == TaskResultStatus.SUCCESSFUL and result.is_finished is True
    assert None not in (result.started_at, result.last_attempted_at, result.finished_at)
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.return_value is None and result.task == t
    assert (result.args, result.kwargs, result.attempts) == ([1], {"two": 3}, 1)
    assert len(result.worker_ids) == 1 and result.errors == []
    assert result.last_attempted_at == result.started_at


def test_an_aenqueued_task_runs_to_success(running_backend):
    t = running_backend.bind(test_tasks.noop_task_async)
    result = running_backend.asettle(async_to_sync(t.aenqueue)())
    assert result.status == TaskResultStatus.SUCCESSFUL and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at


def test_the_return_value_is_kept(running_backend):
    result = running_backend.settle(running_backend.bind(test_tasks.calculate_meaning_of_life).enqueue())
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)
    result = running_backend.asettle(
        async_to_sync(running_backend.bind(test_tasks.calculate_meaning_of_life).aenqueue)()
    )
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


@pytest.mark.parametrize(
    ("t", "exception", "message"),
    [
        (test_tasks.failing_task_value_error, ValueError, "This Task failed due to ValueError"),
        (test_tasks.failing_task_system_exit, SystemExit, "This Task failed due to SystemExit"),
    ],
    ids=["ValueError", "SystemExit"],
)
def test_a_raising_task_fails_with_its_exception_logged_at_error(running_backend, t, exception, message):
    t = running_backend.bind(t)
    with django_task_logs(logging.ERROR) as records:
        result = running_backend.settle(t.enqueue())
    [line] = output(records)
    assert message in line
    assert records[0].exc_info is not None and records[0].exc_info[0] is exception
    assert result.status == TaskResultStatus.FAILED and result.is_finished is True
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    assert None not in (result.started_at, result.last_attempted_at, result.finished_at)
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.errors[0].exception_class is exception
    assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert result.task == t and (result.args, result.kwargs) == ([], {})


def test_an_exception_wrapping_an_exception_is_recorded(running_backend):
    t = running_backend.bind(test_tasks.complex_exception)
    with django_task_logs(logging.ERROR) as records:
        result = running_backend.settle(t.enqueue())
    assert len(records) == 1
    assert result.status == TaskResultStatus.FAILED and result._return_value is None
    assert result.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in result.errors[0].traceback
    assert result.task == t


def test_a_return_value_that_is_not_json_fails_the_task(running_backend):
    with django_task_logs(logging.ERROR) as records:
        result = running_backend.settle(running_backend.bind(test_tasks.complex_return_value).enqueue())
    assert len(records) == 1
    assert result.status == TaskResultStatus.FAILED and result._return_value is None
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback
    assert result.enqueued_at <= result.started_at <= result.finished_at


def test_a_run_logs_enqueued_running_then_successful(running_backend):
    with django_task_logs() as records:
        result = running_backend.settle(running_backend.bind(test_tasks.noop_task).enqueue())
    lines = output(records)
    assert len(lines) == 3, lines
    assert "enqueued" in lines[0] and result.id in lines[0]
    assert lines[1] == f"INFO:{TASKS_LOGGER}:Task id={result.id} path={result.task.module_path} state=RUNNING"
    assert lines[2] == f"INFO:{TASKS_LOGGER}:Task id={result.id} path={result.task.module_path} state=SUCCESSFUL"
    assert not any("NoneType" in line for line in lines)
    assert records[1].args[2] is TaskResultStatus.RUNNING and records[2].exc_info is None


def test_a_failed_run_logs_running_then_failed(running_backend):
    with django_task_logs() as records:
        result = running_backend.settle(running_backend.bind(test_tasks.failing_task_value_error).enqueue())
    lines = output(records)
    assert len(lines) == 3, lines
    assert "state=RUNNING" in lines[1] and result.id in lines[1]
    assert lines[2].startswith(
        f"ERROR:{TASKS_LOGGER}:Task id={result.id} path={result.task.module_path} state=FAILED\nTraceback"
    )
    assert "ValueError: This Task failed due to ValueError" in lines[2]


def test_a_task_taking_context_sees_its_own_result(running_backend):
    result = running_backend.settle(running_backend.bind(test_tasks.get_task_id).enqueue())
    assert result.return_value == result.id
    result = running_backend.settle(running_backend.bind(test_tasks.context_attempt_is).enqueue(1))
    assert result.status == TaskResultStatus.SUCCESSFUL


def test_task_errors_name_their_exception_class(running_backend):
    with django_task_logs(logging.ERROR):
        result = running_backend.settle(running_backend.bind(test_tasks.failing_task_value_error).enqueue())
    [error] = result.errors
    object.__setattr__(error, "exception_class_path", "subprocess.run")
    with pytest.raises(ValueError, match=re.escape("'subprocess.run' does not reference a valid exception.")):
        _ = error.exception_class
    object.__setattr__(error, "exception_class_path", "does.not.exist")
    with pytest.raises(ImportError):
        _ = error.exception_class


# --- taskengine specifics a Django user can tell apart ----------------------------------


def test_a_retried_attempt_writes_no_finish_line_until_the_job_finishes():
    from tests.conftest import wait_for

    with override_settings(TASKENGINE={"RETRY_JITTER": 0.0}), django_task_logs() as records:
        result = test_tasks.fails_on_first_attempt.enqueue()
        wait_for(lambda: TASKENGINE.settle(result).is_finished, timeout=20, message="the retried job to finish")
    states = [r.getMessage().rsplit("=", 1)[1] for r in records if "state=" in r.getMessage()]
    assert states == ["RUNNING", "RUNNING", "SUCCESSFUL"]
    assert (result.status, result.return_value, result.attempts) == (TaskResultStatus.SUCCESSFUL, 2, 2)
    assert [e.exception_class for e in result.errors] == [RuntimeError]


def test_a_project_receiver_does_not_double_or_lose_djangos_lines():
    from taskengine.compat import task_finished, task_started

    seen: list[str] = []

    def receiver(sender, task_result, **kwargs) -> None:
        seen.append(str(task_result.status))

    task_started.connect(receiver)
    task_finished.connect(receiver)
    try:
        with django_task_logs() as records:
            ok = TASKENGINE.settle(test_tasks.noop_task.enqueue())
            bad = TASKENGINE.settle(test_tasks.failing_task_value_error.enqueue())
    finally:
        task_started.disconnect(receiver)
        task_finished.disconnect(receiver)
    assert seen == ["RUNNING", "SUCCESSFUL", "RUNNING", "FAILED"]
    finish = [r for r in records if r.getMessage().endswith(("SUCCESSFUL", "FAILED"))]
    assert [r.getMessage() for r in finish] == [
        f"Task id={ok.id} path={ok.task.module_path} state=SUCCESSFUL",
        f"Task id={bad.id} path={bad.task.module_path} state=FAILED",
    ]
    assert finish[1].levelno == logging.ERROR and finish[1].exc_info[0] is ValueError
    assert "This Task failed due to ValueError" in output(finish)[1]


def test_a_project_that_disconnects_djangos_log_receivers_gets_no_lines_from_workers():
    signals = import_module(f"{TASKS_MODULE}.signals")

    signals.task_started.disconnect(signals.log_task_started)
    signals.task_finished.disconnect(signals.log_task_finished)
    try:
        with django_task_logs() as records:
            TASKENGINE.settle(test_tasks.failing_task_value_error.enqueue())
    finally:
        signals.task_started.connect(signals.log_task_started)
        signals.task_finished.connect(signals.log_task_finished)
    assert [r.getMessage() for r in records if "state=" in r.getMessage()] == []


def test_a_running_worker_leaves_djangos_receivers_for_the_immediate_backend():
    TASKENGINE.settle(test_tasks.noop_task.enqueue())
    with django_task_logs() as records:
        test_tasks.noop_task.using(backend="immediate").enqueue()
    assert [r.getMessage().rsplit("=", 1)[1] for r in records[1:]] == ["RUNNING", "SUCCESSFUL"]


def test_a_task_path_that_no_longer_imports_fails_showing_the_import_error():
    result = test_tasks.noop_task.enqueue()
    Job.objects.filter(pk=result.id).update(
        task_path="tests.django_tasks.tasks_removed_long_ago.noop_task", max_attempts=1
    )
    with django_task_logs(logging.ERROR) as records:
        drain()
    log = ExecutionLog.objects.get(job_id=result.id)
    assert log.error_class == "taskengine.resolution.TaskNotFound"
    assert "ModuleNotFoundError: No module named 'tests.django_tasks.tasks_removed_long_ago'" in log.traceback
    assert "The above exception was the direct cause of the following exception" in log.traceback
    [line] = output(records)
    assert line.startswith(
        f"ERROR:{TASKS_LOGGER}:Task id={result.id} "
        "path=tests.django_tasks.tasks_removed_long_ago.noop_task state=FAILED"
    )
    assert "ModuleNotFoundError" in line


def test_resolve_task_chains_the_import_error():
    from taskengine.resolution import TaskNotFound, resolve_task

    with pytest.raises(TaskNotFound) as caught:
        resolve_task("tests.django_tasks.tasks.no_such_task")
    assert isinstance(caught.value.__cause__, ImportError)
    assert "no_such_task" in str(caught.value)


def test_backend_check_reports_taskengine_missing_from_installed_apps():
    backend = task_backends["default"]
    installed = [app for app in settings.INSTALLED_APPS if app != "taskengine"]
    with override_settings(INSTALLED_APPS=installed):
        assert not apps.is_installed("taskengine")
        [error] = backend.check()
    assert error.id == "taskengine.E101" and error.is_serious()
    assert "INSTALLED_APPS" in error.hint and "'default'" in error.msg


def test_the_default_backend_check_runs_through_djangos_task_checks():
    check_tasks = import_module(f"{TASKS_MODULE}.checks").check_tasks

    installed = [app for app in settings.INSTALLED_APPS if app != "taskengine"]
    with override_settings(INSTALLED_APPS=installed):
        ids = [message.id for message in check_tasks()]
    assert ids == ["taskengine.E101"]


@pytest.mark.acceptance
def test_runworker_writes_djangos_failure_line_under_the_projects_logging(worker_process):
    """project/settings.py keeps django.tasks at WARNING: a real runworker prints the
    ERROR line (with the traceback) and no INFO lines."""
    ok = test_tasks.noop_task.enqueue()
    bad = test_tasks.failing_task_value_error.enqueue()
    worker = worker_process("--burst", "--no-leader")
    assert worker.wait(60) == 0
    text = worker.log()
    assert f"ERROR {TASKS_LOGGER} Task id={bad.id} path={bad.task.module_path} state=FAILED" in text, text
    assert "ValueError: This Task failed due to ValueError" in text
    assert f"Task id={ok.id}" not in text
    assert Job.objects.get(pk=ok.id).state == "succeeded"
