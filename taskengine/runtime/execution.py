"""Running one attempt of a job and turning what happened into an Outcome.

Handlers run outside any transaction the engine opened. A sync handler runs on one of
the worker's threads; an async handler on the worker's event loop. Whatever the
handler does — return, raise, time out, get cancelled, fail to import — becomes exactly
one Outcome; the worker writes it with a fenced UPDATE (store.finish_jobs).
"""

from __future__ import annotations

import asyncio
import ctypes
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, TypedDict

from django.db import connections

from taskengine.compat import InvalidTaskBackend, Task, TaskContext, TaskResult, TaskResultStatus, task_backends
from taskengine.conf import engine_settings
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.states import AttemptOutcome, JobState
from taskengine.values import ascii_text, return_value_json, storable_text


class JobInterrupted(BaseException):
    """Raised inside a running sync handler by the worker (BaseException, so a
    handler's ``except Exception`` does not swallow it)."""

    outcome = AttemptOutcome.FAILED


class JobTimedOut(JobInterrupted):
    outcome = AttemptOutcome.TIMED_OUT


class JobCancelled(JobInterrupted):
    outcome = AttemptOutcome.CANCELLED


class LeaseLost(JobInterrupted):
    outcome = AttemptOutcome.LOST


@dataclass(eq=False)
class RunningJob:
    """A claimed job from claim to finish, as the worker tracks it."""

    job: ClaimedJob
    task: Task[..., Any] | None = None
    is_async: bool = False
    monotonic_start: float = field(default_factory=time.monotonic)  # claimed; reset when its handler starts
    ran_for: float | None = None  # seconds its handler ran, once it returned
    deadline: float | None = None  # monotonic; None: no timeout
    thread_id: int | None = None  # set while a sync handler runs
    coroutine_task: asyncio.Task[Any] | None = None  # an async handler's task on its event loop, once it began
    interrupt_sent: type[JobInterrupted] | None = None
    abandoned: bool = False  # released at shutdown: its outcome is no longer this worker's to write
    lease_lost: bool = False
    stuck: bool = False  # a handler (thread or coroutine) that ignored an interrupt past the grace and still runs
    guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def held(self) -> tuple[int, int]:
        return (self.job.id, self.job.attempt)


def job_backend(running: RunningJob) -> Any:
    """The taskengine backend the job was enqueued through (its ``backend`` column), or
    the task's own when that alias is no longer configured or now names another kind of
    backend (a deploy that repointed an alias at Django's ImmediateBackend must not send a
    retry's result read to a backend that has never seen the job), or else the first
    taskengine backend configured. A taskengine backend is one that rebuilds stored tasks
    (``stored_task``): ``backend`` imports this module, so no isinstance check here."""
    aliases = [running.job.backend, _task(running).backend]
    aliases += [backend.alias for backend in task_backends.all()]
    for alias in aliases:
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend:
            continue
        if callable(getattr(backend, "stored_task", None)):
            return backend
    return task_backends[_task(running).backend]


def _task(running: RunningJob) -> Task[..., Any]:
    """The job's task, which the worker resolves before the job starts (slots.Slots.start)."""
    assert running.task is not None
    return running.task


def enqueued_task(running: RunningJob, backend: Any) -> Task[..., Any]:
    """The Task as the job was enqueued (``.using(...)`` options and all), rebuilt from
    the claimed row as ``get_result`` rebuilds it from the stored one, so a running
    attempt's TaskResult carries the same task as the result read back. No query: this
    runs on the event loop for an async handler's TaskContext."""
    rebuild = getattr(backend, "stored_task", None)
    return _task(running) if rebuild is None else rebuild(running.job, running.task)


def task_result_for(running: RunningJob, worker_ids: list[str]) -> TaskResult[..., Any]:
    """A running first attempt's TaskResult, from what the worker knows (a retry's is
    read from the store: earlier attempts' errors and workers)."""
    job = running.job
    backend = job_backend(running)
    return TaskResult(
        task=enqueued_task(running, backend),
        id=str(job.id),
        status=TaskResultStatus.RUNNING,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        finished_at=None,
        last_attempted_at=job.last_attempted_at,
        args=job.args,
        kwargs=job.kwargs,
        backend=backend.alias,
        errors=[],
        worker_ids=worker_ids,
    )


def call_arguments(running: RunningJob, worker_id: str) -> tuple[list[Any], dict[str, Any]]:
    """The handler's arguments: its TaskContext first when it takes one. On a retry the
    context's result is read from the store (earlier attempts' errors and workers), on
    the calling thread's connection — never call this on the event loop."""
    if not _task(running).takes_context:
        return list(running.job.args), running.job.kwargs
    if running.job.attempt > 1:
        result = _stored_task_result(running)
    else:
        result = task_result_for(running, [worker_id])
    return _with_context(result, running)


async def async_call_arguments(running: RunningJob, worker_id: str) -> tuple[list[Any], dict[str, Any]]:
    """call_arguments for an async handler: a retry's stored result is read off the
    event loop (a sync query on it raises SynchronousOnlyOperation), on asgiref's one
    thread for thread-sensitive calls, so the worker keeps one connection for these
    reads however many async jobs retry."""
    if _task(running).takes_context and running.job.attempt > 1:
        from asgiref.sync import sync_to_async

        result = await sync_to_async(_stored_task_result_tidily, thread_sensitive=True)(running)
        return _with_context(result, running)
    return call_arguments(running, worker_id)


def _with_context(result: TaskResult[..., Any], running: RunningJob) -> tuple[list[Any], dict[str, Any]]:
    return [TaskContext(task_result=result), *running.job.args], running.job.kwargs


def _stored_task_result(running: RunningJob) -> TaskResult[..., Any]:
    result: TaskResult[..., Any] = job_backend(running).get_result(str(running.job.id))
    return result


def _stored_task_result_tidily(running: RunningJob) -> TaskResult[..., Any]:
    """_stored_task_result on a long-lived helper thread: a connection broken by a
    database outage is closed, so the next read reconnects instead of failing too."""
    try:
        return _stored_task_result(running)
    finally:
        _tidy_thread_connections()


def run_sync(running: RunningJob, worker_id: str) -> Outcome:
    """Run a sync handler on the current thread. The worker may inject a
    JobInterrupted into this thread while ``thread_id`` is set."""
    try:
        args, kwargs = call_arguments(running, worker_id)
        with running.guard:
            running.thread_id = threading.get_ident()
        try:
            value = _task(running).func(*args, **kwargs)
            error: BaseException | None = None
        except BaseException as exc:
            value, error = None, exc
        finally:
            with running.guard:
                running.thread_id = None
    except JobInterrupted as late:
        value, error = None, late  # injected just as the handler returned
    finally:
        _tidy_thread_connections()
    return outcome_for(running, value, error)


async def run_async(running: RunningJob, worker_id: str) -> Outcome:
    """Run an async handler as the current task of an event loop. The worker (or
    drain()) interrupts it with interrupt_async — for a timeout too, so that one that
    ignores its cancellation is handled like a sync handler ignoring its interrupt. The
    outcome is made here, once the coroutine has finished, never before."""
    with running.guard:
        running.coroutine_task = asyncio.current_task()
        interrupted_before_it_began = running.interrupt_sent is not None
    if interrupted_before_it_began:
        return async_outcome(running, None, None)
    try:
        args, kwargs = await async_call_arguments(running, worker_id)
        value = await _task(running).func(*args, **kwargs)
        error: BaseException | None = None
    except BaseException as exc:
        value, error = None, exc
    return async_outcome(running, value, error)


def async_outcome(running: RunningJob, value: Any, error: BaseException | None) -> Outcome:
    """The outcome of an async handler that has finished. Once interrupted, the attempt
    ends as the interrupt says (timed_out, cancelled, lost) however the coroutine ended:
    by letting the CancelledError through, by swallowing it and returning a value, or by
    raising something else on its way out (kept as the interrupt's context)."""
    if running.interrupt_sent is None and not isinstance(error, asyncio.CancelledError):
        return outcome_for(running, value, error)
    interrupt = async_interrupt(running)
    if error is not None and not isinstance(error, asyncio.CancelledError):
        interrupt.__context__ = error
    return failure_outcome(running.job, interrupt)


def async_interrupt(running: RunningJob) -> JobInterrupted:
    """What cancelled an async handler: the interrupt the worker sent (a timeout, an
    operator's cancel, a lost lease); a cancellation it did not send counts as a cancel."""
    reason = running.interrupt_sent or JobCancelled
    return reason(_interrupt_message(reason, running))


def interrupt_async(running: RunningJob, reason: type[JobInterrupted]) -> bool:
    """Cancel ``running``'s async handler with ``reason``, from any thread. The
    cancellation reaches the coroutine at its next ``await``; one blocked in a sync call
    notices when that call returns, and one that swallows the CancelledError goes on
    until it returns. False when an interrupt was sent already."""
    with running.guard:
        if running.interrupt_sent is not None:
            return False
        running.interrupt_sent = reason
        task = running.coroutine_task
    if task is not None and not task.done():  # with no task yet, run_async sees the interrupt as it begins
        try:
            task.get_loop().call_soon_threadsafe(task.cancel)
        except RuntimeError:  # its loop is closed: the coroutine has finished
            pass
    return True


def _interrupt_message(reason: type[JobInterrupted], running: RunningJob) -> str:
    return _interrupt_text(reason, running.job)


def _interrupt_text(reason: type[JobInterrupted], job: ClaimedJob) -> str:
    if issubclass(reason, JobTimedOut):
        return f"timed out after {job.timeout_seconds}s"
    if issubclass(reason, LeaseLost):
        return "lease lost: the job was recovered or its lease expired"
    return "cancelled by an operator"


def outcome_for(running: RunningJob, value: Any, error: BaseException | None) -> Outcome:
    job = running.job
    if error is None:
        try:
            return_json = return_value_json(value)
        except (TypeError, ValueError) as exc:
            error = TypeError(f"Return value of {job.task_path} is not JSON-serialisable: {exc}")
        except RecursionError:
            error = TypeError(
                f"Return value of {job.task_path} is not JSON-serialisable: it is nested too "
                "deeply (maximum recursion depth exceeded while encoding it)"
            )
        else:
            return Outcome(job.id, job.attempt, JobState.SUCCEEDED, AttemptOutcome.SUCCEEDED, return_value=return_json)
    return failure_outcome(job, error)


class OutcomeNotStorable(ValueError):
    """The database rejected an attempt's outcome; the attempt fails with this instead."""


class _FailureDetails(TypedDict):
    error_class: str
    error_message: str
    traceback: str
    exception: BaseException


def failure_outcome(job: ClaimedJob, error: BaseException) -> Outcome:
    cls = type(error)
    details: _FailureDetails = dict(
        error_class=storable_text(f"{cls.__module__}.{cls.__qualname__}"),
        # An interrupt is injected as its bare class: say what it was.
        error_message=storable_text(
            _describe(error) or (_interrupt_text(type(error), job) if isinstance(error, JobInterrupted) else "")
        )[:2000],
        traceback=storable_text(_format_traceback(error))[-20000:],
        exception=error,
    )
    if isinstance(error, JobCancelled):
        return Outcome(job.id, job.attempt, JobState.CANCELLED, AttemptOutcome.CANCELLED, **details)
    kind = error.outcome if isinstance(error, JobInterrupted) else None
    if job.attempt < job.max_attempts:
        return Outcome(
            job.id, job.attempt, JobState.QUEUED, kind or AttemptOutcome.RETRY, retry_delay=retry_delay(job), **details
        )
    return Outcome(job.id, job.attempt, JobState.FAILED, kind or AttemptOutcome.FAILED, **details)


def unstorable_outcome(job: ClaimedJob, rejected: Outcome, reason: BaseException) -> Outcome:
    """What a worker writes instead of ``rejected`` when the database refused it: a
    failure of the attempt naming the refusal, in plain ASCII (so it cannot be refused
    for the same reason). The rejected outcome's own error, if any, is kept as text."""
    message = (
        f"the attempt's outcome ({rejected.outcome}) could not be stored: {type(reason).__name__}: {_describe(reason)}"
    )
    outcome = failure_outcome(job, OutcomeNotStorable(ascii_text(message)))
    own = (
        f"{rejected.error_class}: {rejected.error_message}\n{rejected.traceback}"
        if rejected.error_class
        else "(the attempt's return value was rejected)"
    )
    outcome.traceback = ascii_text(f"{outcome.traceback}\nThe rejected outcome:\n{own}")[-20000:]
    return outcome


def _describe(error: BaseException) -> str:
    try:
        return str(error)
    except Exception as exc:
        return f"<unprintable {type(error).__name__}: str() raised {type(exc).__name__}>"


def _format_traceback(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(error))
    except Exception as exc:
        return f"<traceback unavailable: {type(exc).__name__}>"


def retry_delay(job: ClaimedJob) -> float:
    """Exponential backoff with jitter: base · 2^(attempt−1), capped, ± RETRY_JITTER."""
    base = job.retry_backoff_seconds
    if base is None:
        base = engine_settings.RETRY_BACKOFF_SECONDS
    delay: float = min(float(engine_settings.RETRY_BACKOFF_MAX_SECONDS), base * 2 ** (job.attempt - 1))
    jitter = float(engine_settings.RETRY_JITTER)
    return max(0.0, delay * random.uniform(1 - jitter, 1 + jitter))


def interrupt_thread(running: RunningJob, reason: type[JobInterrupted]) -> bool:
    """Raise ``reason`` inside the thread running ``running``'s sync handler. Takes
    effect at the handler's next Python bytecode; a handler blocked in C code (a long
    ``time.sleep``, a socket read) notices only when that call returns."""
    with running.guard:
        if running.thread_id is None or running.interrupt_sent is not None:
            return False
        running.interrupt_sent = reason
        done: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(running.thread_id), ctypes.py_object(reason)
        )
        return done == 1


def _tidy_thread_connections() -> None:
    """A handler must not leave its thread's connection inside a transaction or broken."""
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            conn.close()
        elif conn.errors_occurred:
            conn.close_if_unusable_or_obsolete()
