"""Asserting what was enqueued: read the job rows the backend wrote, compare them
field by field, and say what was there when nothing matches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

_UNSET: Any = object()
LISTED_AT_MOST = 20  # jobs shown in a failure message
RUN_AFTER_SLACK = timedelta(seconds=1)  # run_after=<timedelta>: due that long after enqueue, ±1s

# The job fields assert_enqueued compares, in the order failure messages show them.
FIELDS = ("args", "kwargs", "queue", "priority", "unique_key", "run_after", "tenant", "max_attempts")

if TYPE_CHECKING:
    from taskengine.models import Job


def task_path(task: Any) -> str:
    """The stored task path of a django.tasks Task (or a path given as text)."""
    from taskengine.compat import Task

    if isinstance(task, str):
        return task
    if isinstance(task, Task):
        return task.module_path
    raise TypeError(f"expected a @task or its import path, got {type(task).__name__}")


def _database(using: str | None) -> str:
    from taskengine.conf import engine_settings

    return using or engine_settings.DATABASE


def enqueued_jobs(
    task: Any = None,
    *,
    queue: str | None = None,
    state: str | None = "queued",
    using: str | None = None,
    **filters: Any,
) -> list[Job]:
    """The Job rows of ``task`` (a Task or its path; None: any) in ``queue`` (None: any),
    in ``state`` ("queued" by default; None: any state), oldest first. Extra keyword
    arguments are Django lookups on Job (``unique_key="order-7"``, ``priority__gt=0``)."""
    from taskengine.models import Job

    jobs = Job.objects.using(_database(using))
    if state is not None:
        jobs = jobs.filter(state=state)
    if task is not None:
        jobs = jobs.filter(task_path=task_path(task))
    if queue is not None:
        jobs = jobs.filter(queue=queue)
    if filters:
        jobs = jobs.filter(**filters)
    return list(jobs.order_by("id"))


def _expected(args: Any, kwargs: Any, **others: Any) -> dict[str, Any]:
    """The constrained fields only, arguments in the JSON form the job stores."""
    from taskengine.compat import normalize_json

    wanted = {name: value for name, value in others.items() if value is not _UNSET}
    if args is not _UNSET:
        wanted["args"] = args if callable(args) else normalize_json(list(args))
    if kwargs is not _UNSET:
        wanted["kwargs"] = kwargs if callable(kwargs) else normalize_json(dict(kwargs))
    return {name: wanted[name] for name in FIELDS if name in wanted}


def _matches(job: Job, name: str, expected: Any) -> bool:
    actual = getattr(job, name)
    if callable(expected):
        return bool(expected(actual))
    if name == "run_after" and isinstance(expected, timedelta):
        return bool(abs(actual - job.enqueued_at - expected) <= RUN_AFTER_SLACK)
    return bool(actual == expected)


def _differences(job: Job, wanted: Mapping[str, Any], path: str | None) -> list[str]:
    names = ["task"] if path is not None and job.task_path != path else []
    return names + [name for name, value in wanted.items() if not _matches(job, name, value)]


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"enqueued_at + {value}"
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return repr(value)


def describe_job(job: Job, *, with_state: bool = False) -> str:
    """One line per job, every compared field, for failure messages."""
    fields = " ".join(f"{name}={_show(getattr(job, name))}" for name in FIELDS)
    state = f" state={job.state}" if with_state else ""
    return f"#{job.pk} {job.task_path}{state} {fields}"


def _wanted_text(path: str | None, wanted: Mapping[str, Any], state: str | None) -> str:
    what = f"{state} job" if state else "job"
    task = f" of {path}" if path else ""
    fields = ", ".join(f"{name}={_show(value)}" for name, value in wanted.items())
    return f"{what}{task}" + (f" with {fields}" if fields else "")


def _listing(
    jobs: Sequence[Job], wanted: Mapping[str, Any], path: str | None, state: str | None, *, mark_differences: bool
) -> str:
    if not jobs:
        return f"No {state} job exists." if state else "No job exists."
    lines = [f"{len(jobs)} {state + ' ' if state else ''}job{'s' if len(jobs) != 1 else ''}:"]
    for job in jobs[:LISTED_AT_MOST]:
        line = "  " + describe_job(job, with_state=state is None)
        if mark_differences:
            line += f"   <- differs in: {', '.join(_differences(job, wanted, path))}"
        lines.append(line)
    if len(jobs) > LISTED_AT_MOST:
        lines.append(f"  … and {len(jobs) - LISTED_AT_MOST} more")
    return "\n".join(lines)


def _matching(
    task: Any, state: str | None, using: str | None, wanted: Mapping[str, Any]
) -> tuple[str | None, list[Job], list[Job]]:
    path = task_path(task) if task is not None else None
    everything = enqueued_jobs(None, state=state, using=using)
    matches = [
        job for job in everything if (path is None or job.task_path == path) and not _differences(job, wanted, None)
    ]
    return path, everything, matches


def assert_enqueued(
    task: Any = None,
    *,
    args: Any = _UNSET,
    kwargs: Any = _UNSET,
    queue: Any = _UNSET,
    priority: Any = _UNSET,
    unique_key: Any = _UNSET,
    run_after: Any = _UNSET,
    tenant: Any = _UNSET,
    max_attempts: Any = _UNSET,
    count: int | None = None,
    state: str | None = "queued",
    using: str | None = None,
) -> list[Job]:
    """Assert that a job of ``task`` with these fields is enqueued (``count``: exactly
    that many) and return the matching Job rows.

    Only the fields given are compared. ``args``/``kwargs`` compare in stored (JSON)
    form, so a tuple matches a list. ``run_after`` takes a datetime (exact) or a
    timedelta (due that long after it was enqueued, ±1 s). Any field also takes a
    predicate, e.g. ``run_after=lambda t: t > cutoff``. On failure the message lists
    the jobs there are and how each differs."""
    wanted = _expected(
        args,
        kwargs,
        queue=queue,
        priority=priority,
        unique_key=unique_key,
        run_after=run_after,
        tenant=tenant,
        max_attempts=max_attempts,
    )
    path, everything, matches = _matching(task, state, using, wanted)
    if matches and (count is None or len(matches) == count):
        return matches
    if not matches:
        raise AssertionError(
            f"Expected a {_wanted_text(path, wanted, state)}; none matches.\n"
            + _listing(everything, wanted, path, state, mark_differences=True)
        )
    raise AssertionError(
        f"Expected {count} × {_wanted_text(path, wanted, state)}; {len(matches)} match.\n"
        + _listing(matches, wanted, path, state, mark_differences=False)
    )


def assert_not_enqueued(
    task: Any = None,
    *,
    args: Any = _UNSET,
    kwargs: Any = _UNSET,
    queue: Any = _UNSET,
    priority: Any = _UNSET,
    unique_key: Any = _UNSET,
    run_after: Any = _UNSET,
    tenant: Any = _UNSET,
    max_attempts: Any = _UNSET,
    state: str | None = "queued",
    using: str | None = None,
) -> None:
    """Assert that no job of ``task`` with these fields is enqueued (same matching as
    assert_enqueued; with no fields, that no job of ``task`` is, or none at all)."""
    wanted = _expected(
        args,
        kwargs,
        queue=queue,
        priority=priority,
        unique_key=unique_key,
        run_after=run_after,
        tenant=tenant,
        max_attempts=max_attempts,
    )
    path, _, matches = _matching(task, state, using, wanted)
    if matches:
        raise AssertionError(
            f"Expected no {_wanted_text(path, wanted, state)}; found "
            + _listing(matches, wanted, path, state, mark_differences=False)
        )
