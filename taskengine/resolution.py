"""Task resolution: a stored task path back to the django.tasks Task it names.

The worker resolves each claimed job's path before running it; schedule validation
resolves a schedule's path to reject one that names no task. No I/O beyond importing
the task's module: the bottom layer (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from .compat import Task


class TaskNotFound(ImportError, ValueError):
    """A task path does not import to a django.tasks Task. An ImportError (a job's
    attempt fails with it) and a ValueError (a schedule naming it is invalid input)."""


def resolve_task(task_path: str) -> Task[..., Any]:
    """The @task at ``task_path``, or TaskNotFound with a readable reason."""
    try:
        task = import_string(task_path)
    except ImportError as exc:
        raise TaskNotFound(f"cannot import task {task_path!r}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskNotFound(f"{task_path!r} is not a task (decorate it with @task; got {type(task).__name__})")
    return task
