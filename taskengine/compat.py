"""The one module that knows which ``django.tasks`` taskengine runs on, and every place
where taskengine leans on something the tasks framework does not promise.

Django 6.0 and 6.1 ship ``django.tasks``; on Django 5.2 LTS the django-tasks backport
provides the same API as the ``django_tasks`` module (``pip install taskengine
django-tasks``). The rest of taskengine (and its tests) imports the framework from here,
never from either module directly.

The internals, each behind a named function and each with a test of what it assumes
(tests/unit/test_compat.py), so a Django release that changes one fails there, by name,
rather than somewhere in the worker:

- ``ready_task_result`` builds a ``TaskResult`` without ``__post_init__`` (its fields
  are checked at import);
- ``set_task_result_fields`` / ``set_return_value`` write fields of the frozen
  ``TaskResult`` (the public ``return_value`` reads ``_return_value``);
- ``clone_task`` builds a ``Task`` without ``__init__`` (no validation);
- ``receiver_key`` / ``receiver_keys`` / ``enqueue_is_observed`` read ``Signal.receivers``
  keys; ``log_task_started`` / ``log_task_finished`` are the framework's own log
  receivers, logging to ``TASKS_LOGGER`` (the worker writes their lines itself while
  they are the only receivers: taskengine.events);
- ``cyclic_gc_paused`` pauses Python's process-wide garbage collector;
- ``task`` passes taskengine's options (``max_attempts=`` ...) through the decorator,
  which Django 6.0's own ``@task`` does not.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Any, overload

import django
from django.dispatch import Signal

#: Django ships django.tasks from 6.0 on; before that the django-tasks backport does.
BUILTIN_TASKS = django.VERSION >= (6, 0)

if BUILTIN_TASKS:
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task_backends,
    )
    from django.tasks import signals as _signals
    from django.tasks import task as _framework_task
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import DEFAULT_TASK_PRIORITY, TaskError
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskException,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:
        import django_tasks  # noqa: F401 - imported only to say clearly when the backport is missing
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        raise ImportError(
            f"taskengine on Django {django.get_version()} needs the django-tasks backport "
            "(Django 6.0+ ships django.tasks itself): pip install taskengine django-tasks"
        ) from exc
    from django_tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task_backends,
    )
    from django_tasks import signals as _signals
    from django_tasks import task as _framework_task
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import DEFAULT_TASK_PRIORITY, Task, TaskError
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskException, TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

#: The framework's module (``django.tasks`` or ``django_tasks``): the prefix of its
#: backends' paths, e.g. ``f"{TASKS_MODULE}.backends.immediate.ImmediateBackend"``.
TASKS_MODULE: str = Task.__module__.rsplit(".", 1)[0]
#: The logger the framework's own signal receivers log to.
TASKS_LOGGER: str = _signals.logger.name
#: The framework's own receivers of task_started / task_finished, which log each task's
#: start and finish on TASKS_LOGGER.
log_task_started: Callable[..., None] = _signals.log_task_started
log_task_finished: Callable[..., None] = _signals.log_task_finished

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_TASK_BACKEND_ALIAS",
    "DEFAULT_TASK_PRIORITY",
    "DEFAULT_TASK_QUEUE_NAME",
    "FRAMEWORK_TASK_TAKES_OPTIONS",
    "TASKS_LOGGER",
    "TASKS_MODULE",
    "TASK_RESULT_FIELDS",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskException",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "clone_task",
    "cyclic_gc_paused",
    "default_task_backend",
    "enqueue_is_observed",
    "log_task_finished",
    "log_task_started",
    "normalize_json",
    "ready_task_result",
    "receiver_key",
    "receiver_keys",
    "set_return_value",
    "set_task_result_fields",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]


# --- the @task decorator -------------------------------------------------------------

#: Does the framework's @task pass unknown keywords on to the backend's task_class?
#: Django 6.1 and the backport do; Django 6.0 does not.
FRAMEWORK_TASK_TAKES_OPTIONS = any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(_framework_task).parameters.values()
)


@overload
def _task_with_options[**P, R](
    function: Callable[P, R],
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: bool = ...,
    **options: Any,
) -> Task[P, R]: ...
@overload
def _task_with_options[**P, R](
    function: None = None,
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: bool = ...,
    **options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def _task_with_options(
    function: Callable[..., Any] | None = None,
    *,
    priority: int = DEFAULT_TASK_PRIORITY,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    **options: Any,
) -> Any:
    """Django 6.1's ``@task``: the backend's ``task_class`` with every option given."""
    if "run_after" in options:
        raise TypeError(
            "run_after cannot be defined statically with the @task decorator. "
            "Use .using(run_after=...) to set it dynamically."
        )

    def wrapper(func: Callable[..., Any]) -> Task[..., Any]:
        return task_backends[backend].task_class(
            priority=priority,
            func=func,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            run_after=None,
            **options,
        )

    return wrapper(function) if function else wrapper


#: ``@task(max_attempts=5, timeout=30)`` on every supported Django: the framework's own
#: decorator where it passes options through, the same decorator otherwise (Django 6.0).
#: Typed as _task_with_options, the signature both have (the stubs' @task takes no options).
if TYPE_CHECKING or not FRAMEWORK_TASK_TAKES_OPTIONS:
    task = _task_with_options
else:
    task = _framework_task


# --- TaskResult ----------------------------------------------------------------------

TASK_RESULT_FIELDS = frozenset(
    {
        "task",
        "id",
        "status",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_attempted_at",
        "args",
        "kwargs",
        "backend",
        "errors",
        "worker_ids",
        "_return_value",
    }
)
if {f.name for f in fields(TaskResult)} != TASK_RESULT_FIELDS:  # a TaskResult of another shape
    raise ImportError(
        f"{TASKS_MODULE}.TaskResult has fields {sorted(f.name for f in fields(TaskResult))}, "
        f"not {sorted(TASK_RESULT_FIELDS)}; update taskengine.compat.ready_task_result"
    )


def _field_setter(name: str) -> Callable[[Any, Any], None]:
    """A setter of one TaskResult field that bypasses the frozen check: the slot's own
    descriptor where TaskResult has slots (one C call), object.__setattr__ otherwise."""
    slot = TaskResult.__dict__.get(name)
    if isinstance(slot, MemberDescriptorType):
        return slot.__set__
    return lambda result, value: object.__setattr__(result, name, value)


(
    _set_task,
    _set_id,
    _set_status,
    _set_enqueued_at,
    _set_started_at,
    _set_finished_at,
    _set_last_attempted_at,
    _set_args,
    _set_kwargs,
    _set_backend,
    _set_errors,
    _set_worker_ids,
    _set_return_value,
) = (
    _field_setter(name)
    for name in (
        "task",
        "id",
        "status",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_attempted_at",
        "args",
        "kwargs",
        "backend",
        "errors",
        "worker_ids",
        "_return_value",
    )
)


def ready_task_result(
    task: Task[..., Any],
    result_id: str,
    enqueued_at: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    backend: str,
) -> TaskResult[..., Any]:
    """The TaskResult of a job just enqueued, its arguments already JSON-ready: equal to
    ``TaskResult(status=READY, ...)`` but without ``__post_init__``, which would
    normalise the arguments a second time (a bulk enqueue makes thousands; each field is
    set through its slot, not object.__setattr__, which measured 1.0 against 1.65 µs a
    result)."""
    result = object.__new__(TaskResult)
    _set_task(result, task)
    _set_id(result, result_id)
    _set_status(result, TaskResultStatus.READY)
    _set_enqueued_at(result, enqueued_at)
    _set_started_at(result, None)
    _set_finished_at(result, None)
    _set_last_attempted_at(result, None)
    _set_args(result, args)
    _set_kwargs(result, kwargs)
    _set_backend(result, backend)
    _set_errors(result, [])
    _set_worker_ids(result, [])
    _set_return_value(result, None)
    return result


def set_task_result_fields(result: TaskResult[..., Any], **values: Any) -> None:
    """Write fields of a (frozen) TaskResult that taskengine built itself and has not
    handed out yet: a worker's result of an attempt that just finished."""
    for name, value in values.items():
        if name not in TASK_RESULT_FIELDS:
            raise TypeError(f"TaskResult has no field {name!r}")
        object.__setattr__(result, name, value)


def set_return_value(result: TaskResult[..., Any], value: Any) -> None:
    """What ``result.return_value`` returns once the result is SUCCESSFUL (the
    framework keeps it in the private ``_return_value``, set only by backends)."""
    object.__setattr__(result, "_return_value", value)


# --- Task ----------------------------------------------------------------------------


def clone_task(source: Task[..., Any] | type[Task[..., Any]], **values: Any) -> Task[..., Any]:
    """A Task carrying a stored job's queue and priority. Built without ``__init__`` (so
    without ``validate_task``), so a job stored under a queue since removed from QUEUES
    can still be read. ``source`` is a Task to copy, or a Task class whose fields
    ``values`` gives (fields with a default may be left out)."""
    cls = source if isinstance(source, type) else type(source)
    task = object.__new__(cls)
    for f in fields(cls):
        if f.name in values:
            value = values[f.name]
        elif isinstance(source, Task):
            value = getattr(source, f.name)
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"clone_task({cls.__name__}) needs a value for {f.name!r}")
        object.__setattr__(task, f.name, value)
    return task


# --- signals -------------------------------------------------------------------------


def receiver_key(receiver: Callable[..., Any], sender: Any = None) -> tuple[int, int]:
    """The key ``Signal.connect`` files a plain-function receiver under (no dispatch_uid)."""
    return (id(receiver), id(sender))


def receiver_keys(signal: Signal) -> list[Any]:
    """The keys of a signal's connected receivers (each entry of ``Signal.receivers``
    starts with its key; what follows differs between Django versions)."""
    return [key for key, *_ in signal.receivers]


def enqueue_is_observed() -> bool:
    """Would sending ``task_enqueued`` do anything? The one receiver the framework
    connects itself only logs, at DEBUG; with that logger quiet and no other receiver, a
    signal per job (thousands in a bulk enqueue) would be work for nothing."""
    keys = receiver_keys(task_enqueued)
    framework_logs = receiver_key(_signals.log_task_enqueued)
    if any(key != framework_logs for key in keys):
        return True
    return bool(keys) and _signals.logger.isEnabledFor(logging.DEBUG)


# --- the garbage collector -----------------------------------------------------------


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one bulk enqueue. It allocates about
    ten small containers per job, none of them in a reference cycle, and the collector
    would otherwise run about a hundred times per 10,000 jobs (sometimes a full
    collection of the whole process) to find nothing; that was a third of the call's
    time, at random. Reference counting still frees everything as usual. The collector
    is process-wide, so other threads' cycles wait those milliseconds too; a collector
    already paused by someone else is left paused."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
