"""Periodic schedules' definitions: validation and reading TASKENGINE["SCHEDULES"].

A schedule has either a cron expression (evaluated in the schedule's IANA time zone) or a
fixed interval in seconds; which instants are its slots is schedule_slots.py's arithmetic.

Bad input — an invalid cron expression, an unknown time zone, a task path that is not
a @task, an unknown queue, arguments enqueue would refuse (values.py) — is rejected
with a ValidationError naming the field, when a Schedule is saved through a form
(``Schedule.clean``), and when settings are loaded (ImproperlyConfigured naming the
entry; ``manage.py check`` reports it as taskengine.E006).

This module does no I/O (it sits below the models, whose ``Schedule.clean`` uses it); the
leader's service in maintenance/schedules.py syncs the settings-defined schedules and
decides which slots to enqueue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.core.exceptions import ImproperlyConfigured, ValidationError

from .conf import dedicated_queue_problem, engine_settings
from .resolution import resolve_task
from .values import arguments_problem, priority_problem, ready_arguments, stored_text_problem


class ScheduleFields(Protocol):
    """What validation and slot arithmetic read of a schedule, read-only: a
    models.Schedule row has these fields (this module sits below the models and does
    not import them)."""

    @property
    def task_path(self) -> str: ...

    @property
    def cron(self) -> str | None: ...

    @property
    def interval_seconds(self) -> int | None: ...

    @property
    def timezone(self) -> str: ...

    @property
    def misfire_policy(self) -> str: ...

    @property
    def catch_up_limit(self) -> int: ...

    @property
    def queue(self) -> str: ...

    @property
    def priority(self) -> Any: ...

    @property
    def tenant(self) -> str | None: ...

    @property
    def args(self) -> Any: ...

    @property
    def kwargs(self) -> Any: ...


MISFIRE_POLICIES = ("skip", "run_once", "catch_up")
# The columns' lengths (models.Schedule; a job's queue and tenant are as long).
NAME_LENGTH, QUEUE_LENGTH, TENANT_LENGTH = 100, 64, 64
SETTINGS_KEYS = {
    "task",
    "cron",
    "interval",
    "timezone",
    "args",
    "kwargs",
    "queue",
    "priority",
    "tenant",
    "enabled",
    "misfire_policy",
    "catch_up_limit",
}
SYNCED_FIELDS = [
    "task_path",
    "cron",
    "interval_seconds",
    "timezone",
    "args",
    "kwargs",
    "queue",
    "priority",
    "tenant",
    "enabled",
    "misfire_policy",
    "catch_up_limit",
]


# --- validation ----------------------------------------------------------------------
# resolve_task (resolution.py) raises TaskNotFound, a ValueError, with a readable reason.


def schedule_errors(
    *,
    task_path: str,
    cron: str | None,
    interval_seconds: Any,
    timezone: str,
    misfire_policy: str = "run_once",
    catch_up_limit: Any = 10,
    queue: str | None = None,
    args: Any = (),
    kwargs: Any = None,
    priority: Any = 0,
    tenant: Any = None,
) -> dict[str, str]:
    """Field → message for everything wrong with a schedule definition ({} if valid)."""
    errors = _stored_option_errors(queue, tenant, priority)
    errors.update(_timing_errors(cron, interval_seconds, timezone, misfire_policy, catch_up_limit))
    errors.update(_task_errors(task_path, queue, tenant, errors))
    errors.update(_argument_errors(args, kwargs))
    return errors


def _stored_option_errors(queue: str | None, tenant: Any, priority: Any) -> dict[str, str]:
    """The options its slot jobs store, by enqueue's own limits (values.py; the backend's
    validate_task): a slot's job could not be stored otherwise."""
    errors: dict[str, str] = {}
    for field, value, limit in (("queue", queue, QUEUE_LENGTH), ("tenant", tenant, TENANT_LENGTH)):
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            errors[field] = f"{field} must be a non-empty string of at most {limit} characters."
        elif problem := stored_text_problem(value, limit):
            errors[field] = problem
    if problem := priority_problem(priority):
        errors["priority"] = problem
    return errors


def _timing_errors(
    cron: str | None, interval_seconds: Any, timezone: str, misfire_policy: str, catch_up_limit: Any
) -> dict[str, str]:
    errors: dict[str, str] = {}
    if bool(cron) == (interval_seconds is not None):
        errors["cron"] = "Give either a cron expression or an interval in seconds, not both or neither."
    elif cron and not croniter.is_valid(cron):
        errors["cron"] = f"{cron!r} is not a valid cron expression (e.g. '*/5 * * * *')."
    elif interval_seconds is not None and (
        not isinstance(interval_seconds, int) or isinstance(interval_seconds, bool) or interval_seconds < 1
    ):
        errors["interval_seconds"] = "The interval must be a whole number of seconds, at least 1."
    try:
        ZoneInfo(timezone or "")
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        errors["timezone"] = f"Unknown time zone {timezone!r} (use an IANA name such as 'Europe/Paris')."
    if misfire_policy not in MISFIRE_POLICIES:
        errors["misfire_policy"] = f"Misfire policy must be one of {', '.join(MISFIRE_POLICIES)}."
    if not isinstance(catch_up_limit, int) or catch_up_limit < 0:
        errors["catch_up_limit"] = "catch_up_limit must be a whole number ≥ 0."
    return errors


def _task_errors(task_path: str, queue: str | None, tenant: Any, found: dict[str, str]) -> dict[str, str]:
    """The task must be a @task; the queue one its backend serves and, if the settings
    dedicate it to a tenant, the schedule's tenant (``found``: errors already known)."""
    errors: dict[str, str] = {}
    try:
        task = resolve_task(task_path or "")
    except ValueError as exc:
        errors["task_path"] = str(exc)
    else:
        queues = getattr(task.get_backend(), "queues", None)
        if queue and "queue" not in found and queues and queue not in queues:
            errors["queue"] = f"Queue {queue!r} is not in the backend's QUEUES ({', '.join(sorted(queues))})."
    known = set(found) | set(errors)
    if queue and not {"queue", "tenant"} & known and (problem := dedicated_queue_problem(queue, tenant)):
        errors["queue"] = f"{problem[0].upper()}{problem[1:]}."
    return errors


def _argument_errors(args: Any, kwargs: Any) -> dict[str, str]:
    """The arguments by enqueue's own rule (values.py), in its words: a slot's job could
    not be stored otherwise."""
    errors: dict[str, str] = {}
    if not isinstance(args, (list, tuple)):
        errors["args"] = "args must be a list."
    elif problem := arguments_problem(args, {}):
        errors["args"] = problem
    if kwargs is not None and not isinstance(kwargs, Mapping):
        errors["kwargs"] = "kwargs must be a mapping."
    elif kwargs and not all(isinstance(key, str) for key in kwargs):
        errors["kwargs"] = "kwargs keys must be strings (they are the task's keyword arguments)."
    elif kwargs and (problem := arguments_problem((), kwargs)):
        errors["kwargs"] = problem
    return errors


def stored_fields_problem(fields: Mapping[str, Any]) -> str | None:
    """Why a settings schedule's field dict (as settings_schedules returns it) cannot be
    stored as a Schedule row, or None: its name, queue, tenant and priority, by the
    limits above. The leader's sync checks each definition with it, so one bad
    definition that reached it cannot stop the others."""
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        return f"the name must be a non-empty string, not {name!r}"
    if problem := stored_text_problem(name, NAME_LENGTH):
        return f"name: {problem}"
    for field, limit in (("queue", QUEUE_LENGTH), ("tenant", TENANT_LENGTH)):
        value = fields.get(field)
        if value is not None and not isinstance(value, str):
            return f"{field}: {value!r} is not a string"
        if value is not None and (problem := stored_text_problem(value, limit)):
            return f"{field}: {problem}"
    if problem := priority_problem(fields.get("priority", 0)):
        return f"priority: {problem}"
    return None


def validate_schedule(schedule: ScheduleFields) -> None:
    """Raise ValidationError for a bad Schedule instance (called by Schedule.clean)."""
    errors = schedule_errors(
        task_path=schedule.task_path,
        cron=schedule.cron or None,
        interval_seconds=schedule.interval_seconds,
        timezone=schedule.timezone,
        misfire_policy=schedule.misfire_policy,
        catch_up_limit=schedule.catch_up_limit,
        queue=schedule.queue,
        args=schedule.args,
        kwargs=schedule.kwargs,
        priority=schedule.priority,
        tenant=schedule.tenant,
    )
    if errors:
        raise ValidationError({field: [message] for field, message in errors.items()})


# --- settings ------------------------------------------------------------------------


def settings_schedules(raw: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """TASKENGINE["SCHEDULES"] as Schedule field dicts; ImproperlyConfigured on bad input."""
    raw = engine_settings.SCHEDULES if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured('TASKENGINE["SCHEDULES"] must be a dict of name -> definition.')
    out = []
    for name, entry in raw.items():
        where = f'TASKENGINE["SCHEDULES"][{name!r}]'
        fields = _entry_fields(name, entry, where)
        errors = schedule_errors(**{k: fields[k] for k in _CHECKED_FIELDS})
        if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
            errors["name"] = f"the name must be a non-empty string of at most {NAME_LENGTH} characters"
        elif problem := stored_text_problem(name, NAME_LENGTH):
            errors["name"] = problem
        if errors:
            details = "; ".join(f"{field}: {message}" for field, message in errors.items())
            raise ImproperlyConfigured(f"{where} is invalid: {details}")
        # Stored as its jobs will carry them (tuples as lists, UTF-8 bytes as text).
        fields["args"], fields["kwargs"] = ready_arguments(fields["args"], fields["kwargs"] or {})
        out.append(fields)
    return out


# The fields of a settings entry that schedule_errors checks (its keyword arguments).
_CHECKED_FIELDS = (
    "task_path",
    "cron",
    "interval_seconds",
    "timezone",
    "misfire_policy",
    "catch_up_limit",
    "queue",
    "args",
    "kwargs",
    "priority",
    "tenant",
)


def _entry_fields(name: Any, entry: Any, where: str) -> dict[str, Any]:
    """One TASKENGINE["SCHEDULES"] entry as Schedule fields, its defaults filled in."""
    if not isinstance(entry, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict.")
    unknown = set(entry) - SETTINGS_KEYS
    if unknown:
        raise ImproperlyConfigured(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SETTINGS_KEYS))}."
        )
    return {
        "name": name,
        "task_path": entry.get("task", ""),
        "cron": entry.get("cron"),
        "interval_seconds": entry.get("interval"),
        "timezone": entry.get("timezone", "UTC"),
        "args": entry.get("args", []),
        "kwargs": entry.get("kwargs", {}),
        "queue": entry.get("queue", "default"),
        "priority": entry.get("priority", 0),
        "tenant": entry.get("tenant"),
        "enabled": bool(entry.get("enabled", True)),
        "misfire_policy": entry.get("misfire_policy", "run_once"),
        "catch_up_limit": entry.get("catch_up_limit", 10),
    }
