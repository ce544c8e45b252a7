"""EngineTask: a django.tasks Task with taskengine's per-task options, and the error a
refused enqueue raises. DatabaseBackend (backend.py) makes it the ``task_class`` of
``@task``; both names are importable from ``taskengine.backend`` as before."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeGuard, cast

from .compat import InvalidTask, Task, TaskResult


class _EnqueuesMany(Protocol):
    def enqueue_many(
        self, calls: Iterable[tuple[Task[..., Any], Sequence[Any], Mapping[str, Any]]]
    ) -> list[TaskResult[..., Any]]: ...


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
        return cast(_EnqueuesMany, self.get_backend()).enqueue_many([(self, a, k) for a, k in pairs])


def _is_pair(call: object) -> TypeGuard[tuple[Sequence[Any], Mapping[str, Any]]]:
    return isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], Mapping)
