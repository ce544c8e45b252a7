"""taskengine's django.tasks backend: ``TASKS = {"default": {"BACKEND":
"taskengine.backend.DatabaseBackend"}}``.

Enqueue writes on the caller's database connection, so inside ``transaction.atomic()``
the job exists only if that transaction commits; ``task_enqueued`` fires on commit.
Workers are woken by a NOTIFY sent on commit (Postgres) or by polling (SQLite).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.core.checks import CheckMessage
from django.core.checks import Error as CheckError
from django.db import Error as DatabaseError
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine import limits, store, stored_results
from taskengine.observability import metrics
from taskengine.signals import send_robustly

from .compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    cyclic_gc_paused,
    enqueue_is_observed,
    ready_task_result,
    task_enqueued,
)
from .conf import dedicated_queue_problem, engine_settings
from .engine_task import EngineTask, InvalidTaskArguments
from .jobs import ClaimedJob, InsertedJob, NewJob
from .values import describe_refusal, ready_arguments, stored_text_problem

if TYPE_CHECKING:
    from .models import Job

__all__ = ["DatabaseBackend", "EngineTask", "InvalidTaskArguments", "user_key"]

logger = logging.getLogger("taskengine.backend")


def _refused_arguments(
    task: Task[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> InvalidTaskArguments:
    """The error for arguments the value rule refused, naming the argument and the place in it."""
    return InvalidTaskArguments(
        f"Arguments to task {task.module_path!r} must be JSON-serialisable and storable: "
        f"{describe_refusal(args, kwargs, exc)}. Nothing was enqueued."
    )


@contextmanager
def _enqueue_errors() -> Iterator[None]:
    """An insert's failures as enqueue reports them: database errors counted, a NaN or
    infinity the JSON encoder met named as the arguments' fault."""
    try:
        yield
    except DatabaseError:
        metrics.DB_ERRORS.labels("enqueue").inc()
        raise
    except ValueError as exc:
        raise InvalidTaskArguments(f"Task arguments must be JSON-serialisable: {exc}. Nothing was enqueued.") from exc


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
            templates = [self._template(task) for task, _, _ in calls]
            if any(template.unique_key is not None for template in templates):
                return self._enqueue(calls)
            return self._enqueue_streamed(calls, templates)

    def _enqueue(
        self, calls: list[tuple[Task[..., Any], Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult[..., Any]]:
        rows = [_with_arguments(self._template(task), task, args, kwargs) for task, args, kwargs in calls]
        connection = connections[self.database]
        inserted = self._insert(connection, rows)
        results: list[TaskResult[..., Any]] = []
        created: list[TaskResult[..., Any]] = []
        created_rows: list[NewJob] = []
        for (task, _, _), job, row in zip(calls, inserted, rows, strict=True):
            if not job.created:
                results.append(self.get_result(str(job.id)))
                continue
            result = ready_task_result(task, str(job.id), job.enqueued_at, row.args, row.kwargs, self.alias)
            results.append(result)
            created.append(result)
            created_rows.append(row)
        if created:
            self._announce_on_commit(connection, partial(self._announce, created, created_rows, None))
        return results

    def _enqueue_streamed(
        self, calls: list[tuple[Task[..., Any], Sequence[Any], Mapping[str, Any]]], templates: list[NewJob]
    ) -> list[TaskResult[..., Any]]:
        """Many calls, none with a unique key: each call's arguments are checked and its
        row made, and its TaskResult built, while the database takes the rows before it
        (store.insert_streamed; on PostgreSQL a COPY, which the server parses on its own
        core). A refused argument rolls the whole call back, as it would before. The rows
        are not kept past their chunk: fewer objects for the garbage collector's next
        pass, which would otherwise take ~0.5 µs a job once the call returns."""
        connection = connections[self.database]
        alias = self.alias
        results: list[TaskResult[..., Any]] = []
        submitted: Counter[tuple[str, str]] = Counter()

        def sent(rows: list[NewJob], inserted: list[InsertedJob]) -> None:
            start = len(results)
            for (task, _, _), row, job in zip(calls[start : start + len(rows)], rows, inserted, strict=True):
                results.append(ready_task_result(task, str(job.id), job.enqueued_at, row.args, row.kwargs, alias))
            metrics.tally_submitted(submitted, rows)

        rows = (
            _with_arguments(template, task, args, kwargs)
            for template, (task, args, kwargs) in zip(templates, calls, strict=True)
        )
        with _enqueue_errors():
            store.insert_streamed(connection, len(calls), rows, sent)
        self._announce_on_commit(connection, partial(self._announce, results, None, submitted))
        return results

    def _announce_on_commit(self, connection: BaseDatabaseWrapper, announce: Callable[[], None]) -> None:
        """Run ``announce`` once the enqueue's transaction has committed."""
        if connection.in_atomic_block or not connection.get_autocommit():
            transaction.on_commit(announce, using=self.database, robust=True)
        else:  # committed already: what on_commit() would do at once, minus its lookups
            try:
                announce()
            except Exception:
                logger.exception("announcing enqueued jobs failed")

    def _announce(
        self,
        created: list[TaskResult[..., Any]],
        rows: list[NewJob] | None,
        submitted: Counter[tuple[str, str]] | None,
    ) -> None:
        """After commit: count the new jobs — their ``rows``, or ``submitted``, their
        tally — and send task_enqueued for each."""
        if submitted is not None:
            metrics.submitted_counted(submitted)
        elif rows is not None:
            metrics.jobs_submitted(rows)
        if enqueue_is_observed():
            for result in created:
                send_robustly(
                    task_enqueued,
                    "task_enqueued",
                    type(self),
                    result,
                    logger,
                    {"job_id": int(result.id), "task_path": result.task.module_path, "queue": result.task.queue_name},
                )

    def _insert(self, connection: BaseDatabaseWrapper, rows: list[NewJob]) -> list[InsertedJob]:
        for _ in range(5):
            try:
                with _enqueue_errors():
                    return store.insert_jobs(connection, rows)
            except store.UniqueKeyRace:
                continue  # the key's holder finished meanwhile: insert again
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
        template = self.job_template(task)
        if len(self._templates) >= self._TEMPLATES_KEPT:
            self._templates.clear()
        self._templates[id(task)] = (task, template)
        return template

    def job_template(self, task: Task[..., Any]) -> NewJob:
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

    # --- results (stored_results.py) ------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        return stored_results.get_result(self, result_id)

    def result_from_job(self, job: Job, logs: list[tuple[str, str | None, str]]) -> TaskResult[..., Any]:
        return stored_results.result_from_job(self, job, logs)

    def stored_task(self, job: Job | ClaimedJob, task: Task[..., Any] | None = None) -> Task[..., Any]:
        """The Task ``job`` was enqueued with, rebuilt from its stored columns
        (stored_results.stored_task)."""
        return stored_results.stored_task(self, job, task)
