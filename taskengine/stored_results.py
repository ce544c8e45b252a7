"""What a job's TaskResult reads back: ``get_result``, and the Task a job was enqueued
with rebuilt from its stored columns (``stored_task``) — what every TaskResult of the job
carries, get_result's and a running attempt's (its TaskContext, task_started,
task_finished: execution.task_result_for). DatabaseBackend's methods of those names call
these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from django.utils.module_loading import import_string

from .compat import Task, TaskError, TaskResult, TaskResultDoesNotExist, clone_task, set_return_value
from .engine_task import EngineTask
from .jobs import ClaimedJob, NewJob
from .states import to_task_result_status

if TYPE_CHECKING:
    from .models import Job


class _Backend(Protocol):
    alias: str
    database: str

    def job_template(self, task: Task[..., Any]) -> NewJob: ...


def _missing_task(*args: Any, **kwargs: Any) -> None:
    """Stands in for a task whose import path no longer resolves (see get_result)."""
    raise ImportError("task no longer importable")


def get_result(backend: _Backend, result_id: str) -> TaskResult[..., Any]:
    from .models import ExecutionLog, Job  # at call time: the backend loads before the app registry

    try:
        pk = int(result_id)
    except (TypeError, ValueError):
        raise TaskResultDoesNotExist(result_id) from None
    job = Job.objects.using(backend.database).filter(pk=pk).first()
    if job is None:
        raise TaskResultDoesNotExist(result_id)
    logs = list(
        ExecutionLog.objects.using(backend.database)
        .filter(job_id=pk)
        .order_by("attempt")
        .values_list("worker_id", "error_class", "traceback")
    )
    return result_from_job(backend, job, logs)


def result_from_job(backend: _Backend, job: Job, logs: list[tuple[str, str | None, str]]) -> TaskResult[..., Any]:
    result = TaskResult(
        task=stored_task(backend, job),
        id=str(job.pk),
        status=to_task_result_status(job.state),
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.last_attempted_at,
        args=job.args,
        kwargs=job.kwargs,
        backend=backend.alias,
        errors=[TaskError(exception_class_path=cls, traceback=tb) for _, cls, tb in logs if cls],
        worker_ids=[worker for worker, _, _ in logs],
    )
    set_return_value(result, job.return_value)
    return result


def stored_task(backend: _Backend, job: Job | ClaimedJob, task: Task[..., Any] | None = None) -> Task[..., Any]:
    """The Task ``job`` was enqueued with, rebuilt from its stored columns: what
    every TaskResult of the job carries — get_result's, and a running attempt's
    (its TaskContext, task_started, task_finished: execution.task_result_for).
    ``job`` is a Job row or a claimed job (jobs.ClaimedJob, same column names);
    ``task`` the task already imported from ``job.task_path``, if any."""
    if task is None:
        try:
            task = import_string(job.task_path)
        except Exception:
            task = None
    # The store sets run_after to the enqueue time when none was given (the claim
    # orders by it); the task itself had none.
    run_after = None if job.run_after == job.enqueued_at else job.run_after
    if not isinstance(task, Task):
        # The job outlived its code: describe it without pretending it can run.
        return clone_task(
            EngineTask,
            func=_missing_task,
            priority=job.priority,
            backend=backend.alias,
            queue_name=job.queue,
            run_after=run_after,
            takes_context=False,
            max_attempts=job.max_attempts,
            timeout=job.timeout_seconds,
            on_lease_expired=job.on_lease_expired,
            unique_key=job.unique_key,
            tenant=job.tenant,
            acting_user=job.acting_user_id,
        )
    return clone_task(
        task,
        queue_name=job.queue,
        priority=job.priority,
        run_after=run_after,
        backend=backend.alias,
        **_call_time_options(backend, task, job),
    )


def _call_time_options(backend: _Backend, task: Task[..., Any], job: Job | ClaimedJob) -> dict[str, Any]:
    """taskengine's options the job was enqueued with (``.using(...)``) where they
    differ from what the task declares, so the Task read back equals the one enqueued
    (except ``acting_user``: the user's key as text, not the user)."""
    if not isinstance(task, EngineTask):
        return {}
    declared = backend.job_template(task)
    stored = {
        "max_attempts": (job.max_attempts, declared.max_attempts),
        "timeout": (job.timeout_seconds, declared.timeout_seconds),
        "retry_backoff": (job.retry_backoff_seconds, declared.retry_backoff_seconds),
        "on_lease_expired": (job.on_lease_expired, declared.on_lease_expired),
        "unique_key": (job.unique_key, declared.unique_key),
        "tenant": (job.tenant, declared.tenant),
        "acting_user": (job.acting_user_id, declared.acting_user_id),
    }
    if not isinstance(job, ClaimedJob):  # a Job row (a claimed job does not carry them)
        stored["concurrency_key"] = (job.concurrency_key, declared.concurrency_key)
        stored["concurrency_limit"] = (job.concurrency_limit, declared.concurrency_limit)
    return {name: value for name, (value, default) in stored.items() if value != default}
