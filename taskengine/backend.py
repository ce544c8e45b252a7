"""taskengine's django.tasks backend: ``TASKS = {"default": {"BACKEND":
"taskengine.backend.DatabaseBackend"}}``.

Enqueue writes on the caller's database connection, so inside ``transaction.atomic()``
the job exists only if that transaction commits; ``task_enqueued`` fires on commit.
Workers are woken by a NOTIFY sent on commit (Postgres) or by polling (SQLite).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from django.apps import apps
from django.core.checks import CheckMessage
from django.core.checks import Error as CheckError
from django.db import Error as DatabaseError
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.module_loading import import_string

from . import limits, metrics, store
from .compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    clone_task,
    cyclic_gc_paused,
    enqueue_is_observed,
    ready_task_result,
    set_return_value,
    task_enqueued,
)
from .conf import dedicated_queue_problem, engine_settings
from .events import send_robustly
from .jobs import ClaimedJob, InsertedJob, NewJob
from .states import to_task_result_status
from .values import describe_refusal, ready_arguments, stored_text_problem

if TYPE_CHECKING:
    from .models import Job

logger = logging.getLogger("taskengine.backend")


class InvalidTaskArguments(InvalidTask, TypeError):
    """The arguments (or options) given at enqueue cannot be stored."""


_UNSET: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineTask(Task):  # type: ignore[type-arg]  # Task takes no type arguments at run time
    """A django.tasks Task with taskengine's per-task options.

    Declared with ``@task(max_attempts=5, timeout=30, retry_backoff=2,
    on_lease_expired="retry")``; call-time options through ``.using(unique_key=...,
    tenant=..., acting_user=...)``.
    """

    max_attempts: int | None = None
    timeout: float | None = None
    retry_backoff: float | None = None
    on_lease_expired: str = "retry"
    unique_key: str | None = None
    tenant: str | None = None
    acting_user: Any = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        unique_key: str | None = _UNSET,
        tenant: str | None = _UNSET,
        acting_user: Any = _UNSET,
        max_attempts: int | None = None,
        timeout: float | None = _UNSET,
        retry_backoff: float | None = None,
        concurrency_key: str | None = _UNSET,
        concurrency_limit: int | None = _UNSET,
    ) -> EngineTask:
        changes: dict[str, Any] = {}
        for name, value in (
            ("priority", priority),
            ("queue_name", queue_name),
            ("run_after", run_after),
            ("backend", backend),
            ("max_attempts", max_attempts),
            ("retry_backoff", retry_backoff),
        ):
            if value is not None:
                changes[name] = value
        for name, value in (
            ("unique_key", unique_key),
            ("tenant", tenant),
            ("acting_user", acting_user),
            ("timeout", timeout),
            ("concurrency_key", concurrency_key),
            ("concurrency_limit", concurrency_limit),
        ):
            if value is not _UNSET:
                changes[name] = value
        return replace(self, **changes)

    def enqueue_many(
        self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]] | Sequence[Any]]
    ) -> list[TaskResult[..., Any]]:
        """Enqueue one job per call in a single round trip. Each call is an args
        sequence or an ``(args, kwargs)`` pair."""
        pairs: list[tuple[Sequence[Any], Mapping[str, Any]]] = [c if _is_pair(c) else (c, {}) for c in calls]
        # An EngineTask is the task_class of a DatabaseBackend.
        return cast(DatabaseBackend, self.get_backend()).enqueue_many([(self, a, k) for a, k in pairs])


def _is_pair(call: object) -> TypeGuard[tuple[Sequence[Any], Mapping[str, Any]]]:
    return isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], Mapping)


def _refused_arguments(
    task: Task[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> InvalidTaskArguments:
    """The error for arguments the value rule refused, naming the argument and the place in it."""
    return InvalidTaskArguments(
        f"Arguments to task {task.module_path!r} must be JSON-serialisable and storable: "
        f"{describe_refusal(args, kwargs, exc)}. Nothing was enqueued."
    )


def _with_arguments(t: NewJob, task: Task[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> NewJob:
    """A copy of the task's job template carrying these (normalised, checked) arguments."""
    try:
        ready_args, ready_kwargs = ready_arguments(args, kwargs)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _refused_arguments(task, args, kwargs, exc) from exc
    return NewJob(
        t.task_path,
        t.queue,
        ready_args,
        ready_kwargs,
        t.backend,
        t.priority,
        t.run_after,
        t.max_attempts,
        t.timeout_seconds,
        t.retry_backoff_seconds,
        t.on_lease_expired,
        t.unique_key,
        t.tenant,
        t.acting_user_id,
        t.concurrency_key,
        t.concurrency_limit,
    )


def _missing_task(*args: Any, **kwargs: Any) -> None:
    """Stands in for a task whose import path no longer resolves (see get_result)."""
    raise ImportError("task no longer importable")


def user_key(user: Any) -> str | None:
    """The acting user's primary key as text (works for any user model's key type)."""
    if user is None:
        return None
    return str(getattr(user, "pk", user))


class DatabaseBackend(BaseTaskBackend):
    task_class = EngineTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database = self.options.get("database", "default")
        # Per task object: (the task, its validated job template), for the settings
        # generation in _templates_generation. Tasks are frozen, so a template stays
        # right for its task; the task is held so its id() cannot be reused meanwhile.
        self._templates: dict[int, tuple[Task[..., Any], NewJob]] = {}
        self._templates_generation = -1

    # --- validation ------------------------------------------------------------------

    def validate_task(self, task: Task[..., Any]) -> None:
        super().validate_task(task)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and (int(max_attempts) != max_attempts or max_attempts < 1):
            raise InvalidTask("max_attempts must be a whole number of at least 1.")
        timeout = getattr(task, "timeout", None)
        if timeout is not None and not timeout > 0:
            raise InvalidTask("timeout must be a positive number of seconds.")
        backoff = getattr(task, "retry_backoff", None)
        if backoff is not None and backoff < 0:
            raise InvalidTask("retry_backoff must not be negative.")
        if getattr(task, "on_lease_expired", "retry") not in ("retry", "fail"):
            raise InvalidTask("on_lease_expired must be 'retry' or 'fail'.")
        for name, limit in (("unique_key", 255), ("tenant", 64)):
            value = getattr(task, name, None)
            if value is not None and (not isinstance(value, str) or not value or len(value) > limit):
                raise InvalidTask(f"{name} must be a non-empty string of at most {limit} characters.")
        self._validate_stored_text(task)
        limits.check_concurrency_options(
            getattr(task, "concurrency_key", None), getattr(task, "concurrency_limit", None), InvalidTask
        )

    @staticmethod
    def _validate_stored_text(task: Task[..., Any]) -> None:
        """The text options a job stores, under the rule its arguments follow
        (text_problem) and within their columns, the same on both databases (SQLite
        would keep what PostgreSQL refuses or libpq would cut short)."""
        for name, value, limit in (
            ("task path", task.module_path, 300),
            ("queue_name", task.queue_name, 64),
            ("unique_key", getattr(task, "unique_key", None), 255),
            ("concurrency_key", getattr(task, "concurrency_key", None), 255),
            ("tenant", getattr(task, "tenant", None), 64),
            ("acting_user", user_key(getattr(task, "acting_user", None)), 64),
        ):
            if not isinstance(value, str):
                continue  # None, or not text: each option's own check names it (check_concurrency_options)
            if (problem := stored_text_problem(value, limit)) is not None:
                raise InvalidTaskArguments(
                    f"The {name} of task {task.module_path!r} cannot be stored: {problem}. Nothing was enqueued."
                )

    # --- enqueue ---------------------------------------------------------------------

    def enqueue[**P, R](self, task: Task[P, R], args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult[P, R]:
        # The result of the one call is of its task.
        return cast("TaskResult[P, R]", self.enqueue_many([(task, args, kwargs)])[0])

    def enqueue_many(
        self, calls: Iterable[tuple[Task[..., Any], Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult[..., Any]]:
        """Insert every call as a job in one statement on this backend's database.
        ``task_enqueued`` fires for each new job once the transaction commits; a call
        whose unique key a live job holds returns that job's result instead."""
        calls = list(calls)
        if len(calls) < store.BULK_INSERT_MIN:
            return self._enqueue(calls)
        with cyclic_gc_paused():
            return self._enqueue(calls)

    def _enqueue(
        self, calls: list[tuple[Task[..., Any], Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult[..., Any]]:
        rows = [_with_arguments(self._template(task), task, args, kwargs) for task, args, kwargs in calls]
        connection = connections[self.database]
        inserted = self._insert(connection, rows)
        results: list[TaskResult[..., Any]] = []
        created: list[tuple[NewJob, TaskResult[..., Any]]] = []
        for (task, _, _), job, row in zip(calls, inserted, rows, strict=True):
            if not job.created:
                results.append(self.get_result(str(job.id)))
                continue
            result = ready_task_result(task, str(job.id), job.enqueued_at, row.args, row.kwargs, self.alias)
            results.append(result)
            created.append((row, result))
        if created:
            if connection.in_atomic_block or not connection.get_autocommit():
                transaction.on_commit(partial(self._announce, created), using=self.database, robust=True)
            else:  # committed already: what on_commit() would do at once, minus its lookups
                try:
                    self._announce(created)
                except Exception:
                    logger.exception("announcing %d enqueued job(s) failed", len(created))
        return results

    def _announce(self, created: list[tuple[NewJob, TaskResult[..., Any]]]) -> None:
        """After commit: count the jobs and send task_enqueued for each."""
        metrics.jobs_submitted([row for row, _ in created])
        if enqueue_is_observed():
            for row, result in created:
                send_robustly(
                    task_enqueued,
                    "task_enqueued",
                    type(self),
                    result,
                    logger,
                    {"job_id": int(result.id), "task_path": row.task_path, "queue": row.queue},
                )

    def _insert(self, connection: BaseDatabaseWrapper, rows: list[NewJob]) -> list[InsertedJob]:
        for _ in range(5):
            try:
                return store.insert_jobs(connection, rows)
            except store.UniqueKeyRace:
                continue  # the key's holder finished meanwhile: insert again
            except DatabaseError:
                metrics.DB_ERRORS.labels("enqueue").inc()
                raise
            except ValueError as exc:  # NaN or infinity somewhere in the arguments
                raise InvalidTaskArguments(
                    f"Task arguments must be JSON-serialisable: {exc}. Nothing was enqueued."
                ) from exc
        raise RuntimeError("unique key kept changing hands during enqueue; giving up")

    def new_job(self, task: Task[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> NewJob:
        """The row ``task.enqueue(*args, **kwargs)`` would store (validated), for callers
        that insert jobs themselves — the scheduler's one-job-per-slot insert."""
        return _with_arguments(self._template(task), task, args, kwargs)

    _TEMPLATES_KEPT = 1024  # tasks made per call with .using(...) must not grow the cache without bound

    def _template(self, task: Task[..., Any]) -> NewJob:
        """``task``'s job template, validated: once per task object (and settings)."""
        if self._templates_generation != engine_settings.generation:
            self._templates.clear()
            self._templates_generation = engine_settings.generation
        entry = self._templates.get(id(task))
        if entry is not None and entry[0] is task:
            return entry[1]
        self.validate_task(task)
        template = self._job_template(task)
        if len(self._templates) >= self._TEMPLATES_KEPT:
            self._templates.clear()
        self._templates[id(task)] = (task, template)
        return template

    def _job_template(self, task: Task[..., Any]) -> NewJob:
        """The stored options of ``task``'s jobs (everything but the arguments)."""
        max_attempts = getattr(task, "max_attempts", None) or engine_settings.MAX_ATTEMPTS
        timeout = getattr(task, "timeout", None)
        if problem := dedicated_queue_problem(task.queue_name, getattr(task, "tenant", None)):
            raise InvalidTask(f"{problem}. Nothing was enqueued.")
        key = getattr(task, "concurrency_key", None)
        return NewJob(
            task_path=task.module_path,
            backend=self.alias,
            queue=task.queue_name,
            priority=task.priority,
            args=[],
            kwargs={},
            run_after=task.run_after,
            max_attempts=int(max_attempts),
            timeout_seconds=timeout if timeout is not None else engine_settings.TIMEOUT_SECONDS,
            retry_backoff_seconds=getattr(task, "retry_backoff", None),
            on_lease_expired=getattr(task, "on_lease_expired", "retry"),
            unique_key=getattr(task, "unique_key", None),
            tenant=getattr(task, "tenant", None),
            acting_user_id=user_key(getattr(task, "acting_user", None)),
            concurrency_key=key,
            concurrency_limit=limits.job_concurrency_limit(key, getattr(task, "concurrency_limit", None)),
        )

    # --- checks ----------------------------------------------------------------------

    # django-stubs says a list; Django extends its list of messages with any iterable.
    def check(self, **kwargs: Any) -> Iterator[CheckMessage]:  # type: ignore[override]  # an iterable
        """Run by django.tasks' own check for every configured backend. taskengine.E101
        starts the backend's range (E1xx): taskengine's app checks (checks.py) do not run
        at all when the app is missing, so this one must live here."""
        yield from super().check(**kwargs)
        if not apps.is_installed("taskengine"):
            yield CheckError(
                f"TASKS[{self.alias!r}] uses taskengine's DatabaseBackend, but 'taskengine' is not in "
                "INSTALLED_APPS: its job tables, migrations and the runworker command are missing.",
                hint='Add "taskengine" to INSTALLED_APPS and run `manage.py migrate`.',
                id="taskengine.E101",
            )

    # --- results ---------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        from .models import ExecutionLog, Job

        try:
            pk = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        job = Job.objects.using(self.database).filter(pk=pk).first()
        if job is None:
            raise TaskResultDoesNotExist(result_id)
        logs = list(
            ExecutionLog.objects.using(self.database)
            .filter(job_id=pk)
            .order_by("attempt")
            .values_list("worker_id", "error_class", "traceback")
        )
        return self.result_from_job(job, logs)

    def result_from_job(self, job: Job, logs: list[tuple[str, str | None, str]]) -> TaskResult[..., Any]:
        result = TaskResult(
            task=self.stored_task(job),
            id=str(job.pk),
            status=to_task_result_status(job.state),
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.last_attempted_at,
            args=job.args,
            kwargs=job.kwargs,
            backend=self.alias,
            errors=[TaskError(exception_class_path=cls, traceback=tb) for _, cls, tb in logs if cls],
            worker_ids=[worker for worker, _, _ in logs],
        )
        set_return_value(result, job.return_value)
        return result

    def stored_task(self, job: Job | ClaimedJob, task: Task[..., Any] | None = None) -> Task[..., Any]:
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
                backend=self.alias,
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
            backend=self.alias,
            **self._call_time_options(task, job),
        )

    def _call_time_options(self, task: Task[..., Any], job: Job | ClaimedJob) -> dict[str, Any]:
        """taskengine's options the job was enqueued with (``.using(...)``) where they
        differ from what the task declares, so the Task read back equals the one enqueued
        (except ``acting_user``: the user's key as text, not the user)."""
        if not isinstance(task, EngineTask):
            return {}
        declared = self._job_template(task)
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
