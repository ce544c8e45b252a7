"""Tasks for the django.tasks fidelity cases (own versions of the tasks Django's
tests/tasks/ uses). taskengine retries a failing task by default and Django's backends
never do, so the failing ones are declared with ``max_attempts=1``: one attempt, then
FAILED, as Django's ImmediateBackend reports it."""

from __future__ import annotations

from taskengine.compat import TaskContext, TaskResult, task, task_backends


@task
def noop_task(*args, **kwargs) -> None:
    return None


@task
async def noop_task_async(*args, **kwargs) -> None:
    return None


@task
def calculate_meaning_of_life() -> int:
    return 42


@task(max_attempts=1)
def failing_task_value_error() -> None:
    raise ValueError("This Task failed due to ValueError")


@task(max_attempts=1)
def failing_task_system_exit() -> None:
    raise SystemExit("This Task failed due to SystemExit")


@task(max_attempts=1)
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task(max_attempts=1)
def complex_return_value():
    return lambda: True  # neither JSON nor picklable


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def context_attempt_is(context: TaskContext, attempt: int) -> None:
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt


@task(max_attempts=2, retry_backoff=0.05, takes_context=True)
def fails_on_first_attempt(context: TaskContext) -> int:
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    return context.attempt


#: What the recording tasks below saw, one entry per attempt: ("context", attempt, the
#: TaskResult their TaskContext carried, get_result(id) through backend ``alias`` at that
#: moment — None on a backend that keeps no results).
SEEN: list[tuple[str, int, TaskResult, TaskResult | None]] = []


@task(takes_context=True, max_attempts=2, retry_backoff=0)
def records_its_context(context: TaskContext, fail_first: bool, alias: str) -> None:
    result = context.task_result
    backend = task_backends[alias]
    stored = backend.get_result(result.id) if backend.supports_get_result else None
    SEEN.append(("context", context.attempt, result, stored))
    if fail_first and context.attempt == 1:
        raise RuntimeError("the first attempt fails")


@task(takes_context=True, max_attempts=2, retry_backoff=0)
async def records_its_context_async(context: TaskContext, fail_first: bool, alias: str) -> None:
    result = context.task_result
    backend = task_backends[alias]
    stored = await backend.aget_result(result.id) if backend.supports_get_result else None
    SEEN.append(("context", context.attempt, result, stored))
    if fail_first and context.attempt == 1:
        raise RuntimeError("the first attempt fails")
