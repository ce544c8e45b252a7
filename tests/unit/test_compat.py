"""What taskengine.compat assumes about the tasks framework it runs on (django.tasks on
Django 6.0 and 6.1, the django-tasks backport on Django 5.2), one test per assumption:
a Django release that breaks one fails here, by name. bin/test-matrix runs this file on
every supported Django."""

from __future__ import annotations

import gc
import logging
from dataclasses import fields, replace
from datetime import UTC, datetime

import django
import pytest
from django.dispatch import Signal

from taskengine import compat
from taskengine.backend import DatabaseBackend, EngineTask
from taskengine.compat import (
    TASK_RESULT_FIELDS,
    TASKS_LOGGER,
    TASKS_MODULE,
    InvalidTask,
    Task,
    TaskException,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    clone_task,
    cyclic_gc_paused,
    enqueue_is_observed,
    log_task_finished,
    log_task_started,
    normalize_json,
    ready_task_result,
    receiver_key,
    receiver_keys,
    set_return_value,
    set_task_result_fields,
    task,
    task_enqueued,
    task_finished,
    task_started,
)
from taskengine.states import JobState, to_task_result_status
from tests import tasks

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def sample(a: int, b: int) -> int:
    return a + b


def observer(**kwargs) -> None:
    pass


def result_of(task_: Task, status=TaskResultStatus.READY) -> TaskResult:
    return TaskResult(
        task=task_,
        id="7",
        status=status,
        enqueued_at=NOW,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=[1, 2],
        kwargs={"b": 3},
        backend="default",
        errors=[],
        worker_ids=[],
    )


# --- which framework -----------------------------------------------------------------


def test_the_framework_is_django_tasks_from_django_6_0_and_the_backport_before():
    expected = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    assert expected == TASKS_MODULE
    assert Task.__module__ == f"{expected}.base"
    assert compat.BaseTaskBackend.__module__ == f"{expected}.backends.base"
    assert expected == TASKS_LOGGER  # the logger of the framework's own receivers


def test_task_result_status_has_exactly_the_statuses_job_states_map_to():
    assert {status.name for status in TaskResultStatus} == {"READY", "RUNNING", "FAILED", "SUCCESSFUL"}
    assert {to_task_result_status(state) for state in JobState} == set(TaskResultStatus)


def test_invalid_task_is_what_the_framework_raises_for_a_bad_task():
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=1000)
    assert issubclass(InvalidTask, TaskException)
    assert issubclass(TaskResultDoesNotExist, TaskException)
    assert issubclass(TaskResultMismatch, TaskException)


# --- @task ---------------------------------------------------------------------------


def test_task_decorator_passes_engine_options_to_the_backends_task_class():
    made = task(priority=3, queue_name="demo", max_attempts=4, timeout=2.5, on_lease_expired="fail")(sample)
    assert type(made) is EngineTask
    assert (made.priority, made.queue_name, made.max_attempts, made.timeout, made.on_lease_expired) == (
        3,
        "demo",
        4,
        2.5,
        "fail",
    )
    assert made.call(1, 2) == 3


def test_task_decorator_works_bare_and_refuses_a_static_run_after():
    assert type(task(sample)) is EngineTask
    with pytest.raises(TypeError, match="run_after"):
        task(run_after=NOW)(sample)


def test_the_frameworks_own_decorator_is_used_where_it_passes_options_through():
    """Django 6.0's @task takes no options beyond its own; 6.1's and the backport's do."""
    assert compat.FRAMEWORK_TASK_TAKES_OPTIONS is (django.VERSION[:2] != (6, 0))
    assert (task is compat._framework_task) is compat.FRAMEWORK_TASK_TAKES_OPTIONS


# --- TaskResult ----------------------------------------------------------------------


def test_task_result_has_exactly_the_fields_ready_task_result_sets():
    assert {f.name for f in fields(TaskResult)} == TASK_RESULT_FIELDS


def test_ready_task_result_equals_a_task_result_built_by_the_framework():
    ours = ready_task_result(tasks.add, "7", NOW, [1, 2], {"b": 3}, "default")
    assert ours == result_of(tasks.add)
    with pytest.raises(ValueError):
        ours.return_value  # noqa: B018 - not finished yet, as for the framework's own


def test_the_framework_normalises_arguments_as_normalize_json_does():
    """What ready_task_result skips (values.json_ready does the same work once)."""
    built = TaskResult(
        task=tasks.add,
        id="7",
        status=TaskResultStatus.READY,
        enqueued_at=NOW,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=[(1, b"x")],
        kwargs={"k": (2,)},
        backend="default",
        errors=[],
        worker_ids=[],
    )
    assert built.args == normalize_json([(1, b"x")]) == [[1, "x"]]
    assert built.kwargs == normalize_json({"k": (2,)}) == {"k": [2]}


def test_set_return_value_is_what_return_value_reads_once_successful():
    result = result_of(tasks.add, status=TaskResultStatus.RUNNING)
    set_task_result_fields(result, status=TaskResultStatus.SUCCESSFUL, finished_at=NOW)
    set_return_value(result, {"sum": 3})
    assert (result.status, result.finished_at, result.return_value) == (TaskResultStatus.SUCCESSFUL, NOW, {"sum": 3})
    assert result.is_finished


def test_set_task_result_fields_refuses_a_field_task_result_does_not_have():
    with pytest.raises(TypeError, match="no field 'state'"):
        set_task_result_fields(result_of(tasks.add), state="done")


# --- Task ----------------------------------------------------------------------------


def test_a_task_is_a_frozen_slotted_dataclass_whose_fields_are_its_whole_state():
    assert not hasattr(tasks.add, "__dict__")
    with pytest.raises(AttributeError):
        tasks.add.priority = 5  # type: ignore[misc]  # the assignment a frozen dataclass refuses
    assert {"func", "priority", "backend", "queue_name", "run_after", "takes_context"} <= {f.name for f in fields(Task)}


def test_clone_task_equals_replace_where_the_framework_allows_the_values():
    assert clone_task(tasks.add, queue_name="demo", priority=5) == replace(tasks.add, queue_name="demo", priority=5)


def test_clone_task_keeps_a_queue_the_backend_no_longer_allows():
    with pytest.raises(InvalidTask):
        tasks.add.using(queue_name="removed-queue")
    clone = clone_task(tasks.add, queue_name="removed-queue")
    assert (type(clone), clone.queue_name, clone.func) == (EngineTask, "removed-queue", tasks.add.func)


def test_clone_task_of_a_class_takes_field_defaults_and_names_a_missing_field():
    clone = clone_task(EngineTask, func=sample, priority=0, backend="default", queue_name="gone", run_after=None)
    assert (clone.takes_context, clone.max_attempts, clone.on_lease_expired) == (False, None, "retry")
    with pytest.raises(TypeError, match="'func'"):
        clone_task(EngineTask, priority=0, backend="default", queue_name="gone", run_after=None)


# --- signals -------------------------------------------------------------------------


def test_signal_receivers_are_keyed_by_receiver_and_sender_ids():
    signal = Signal()
    signal.connect(observer, weak=False)
    signal.connect(observer, sender=DatabaseBackend, weak=False)
    assert receiver_keys(signal) == [receiver_key(observer), receiver_key(observer, DatabaseBackend)]
    signal.disconnect(observer)
    assert receiver_keys(signal) == [receiver_key(observer, DatabaseBackend)]


def test_the_framework_connects_its_logging_receiver_to_task_enqueued():
    assert receiver_key(compat._signals.log_task_enqueued) in receiver_keys(task_enqueued)


def test_enqueue_is_observed_only_by_a_receiver_or_the_frameworks_debug_log(caplog):
    caplog.set_level(logging.INFO, logger=TASKS_LOGGER)
    assert not enqueue_is_observed()
    caplog.set_level(logging.DEBUG, logger=TASKS_LOGGER)
    assert enqueue_is_observed()
    caplog.set_level(logging.INFO, logger=TASKS_LOGGER)
    task_enqueued.connect(observer, weak=False)
    try:
        assert enqueue_is_observed()
    finally:
        task_enqueued.disconnect(observer)
    assert not enqueue_is_observed()


@pytest.fixture
def framework_log_records():
    """What the framework's log receivers write on TASKS_LOGGER (which the project's
    LOGGING does not propagate to root, where caplog listens)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger(TASKS_LOGGER)
    handler, old_level = Collect(logging.DEBUG), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def test_the_frameworks_start_and_finish_log_receivers_are_connected():
    """taskengine.events writes their lines itself while they are the only receivers,
    recognising them by receiver_key."""
    assert receiver_key(log_task_started) in receiver_keys(task_started)
    assert receiver_key(log_task_finished) in receiver_keys(task_finished)


def test_the_frameworks_log_lines_are_the_format_taskengine_events_copies(framework_log_records):
    """taskengine.runtime.events.DJANGO_TASK_LINE, with (id, task path, status), at INFO, and a
    failure at ERROR with the exception being handled: what a worker writes in the
    framework's place must be what the framework itself would write."""
    from taskengine.runtime.events import DJANGO_TASK_LINE

    running = result_of(tasks.add, TaskResultStatus.RUNNING)
    log_task_started(sender=DatabaseBackend, task_result=running)
    log_task_finished(sender=DatabaseBackend, task_result=replace(running, status=TaskResultStatus.SUCCESSFUL))
    failed = replace(running, status=TaskResultStatus.FAILED)
    try:
        raise ValueError("the task failed")
    except ValueError:
        log_task_finished(sender=DatabaseBackend, task_result=failed)
    lines = [(r.levelno, r.msg, r.args) for r in framework_log_records]
    path = running.task.module_path
    assert lines == [
        (logging.INFO, DJANGO_TASK_LINE, ("7", path, TaskResultStatus.RUNNING)),
        (logging.INFO, DJANGO_TASK_LINE, ("7", path, TaskResultStatus.SUCCESSFUL)),
        (logging.ERROR, DJANGO_TASK_LINE, ("7", path, TaskResultStatus.FAILED)),
    ]
    assert framework_log_records[2].exc_info[0] is ValueError


# --- the garbage collector -----------------------------------------------------------


def test_cyclic_gc_paused_pauses_and_resumes_even_after_an_error():
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("enqueue failed")
    assert gc.isenabled()


def test_cyclic_gc_paused_leaves_a_collector_paused_by_someone_else_paused():
    gc.disable()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
