"""An operator's changes of a queue: pause, resume, concurrency and rate limits; and
the queue list an operator sees (``statuses``). See docs/queues.md.

The claim (db/<vendor>/jobs.sql) drops paused queues from the wanted list inside its own
statement, so a pause committed before a claim began is always honoured. Every change of
a queue is the same steps as a job operation (``operations``), in one transaction:

1. **permission and tenant scope** — a user actor must be active and hold
   ``taskengine.pause_queue`` (otherwise :class:`~taskengine.ops.operations.
   OperationForbidden`, 403, nothing read). A queue dedicated to a tenant
   (``TASKENGINE["QUEUES"][name]["tenant"]``) may be paused by that tenant's operators;
   to others it does not exist (:class:`~taskengine.ops.operations.JobNotFound`'s 404, as
   for a job of another tenant). A shared queue (no tenant) carries every tenant's
   jobs: only a user who sees every tenant may pause it (403 for the others). A string
   actor (``cli:<os user>`` for ``manage.py queues``, ``settings``) is the deployment
   itself and needs no permission. The name and the reason are checked (values.text_problem)
   and the scope is checked against the tenant the settings give the queue before
   anything is written;
2. **settings first** — a change of the queue's declared ``paused`` not yet applied is
   applied before the operator's change, so the operator's change is the later one
   (a declared queue's row and this step are their own transaction); a new queue's row
   is created in the transaction of the change, so a refused change leaves no row;
3. **compare-and-set** — ``UPDATE … WHERE name = … AND paused = <expected>`` under the
   row's lock, times from the database clock; a queue already in the wanted state is
   refused (:class:`~taskengine.ops.operations.OperationRefused`, 409);
4. **audit** — ``audit.record()`` in the same transaction (target ``queue``, tenant
   the queue's tenant);
5. **wake-up** — a resume sends ``NOTIFY taskengine_jobs, '<queue>'`` on PostgreSQL,
   delivered on commit, so LISTENing workers claim at once; polling workers see it at
   their next poll (at most ``PAUSED_POLL_SECONDS`` while one of their queues is paused).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from taskengine import limits
from taskengine.models import Job, Queue
from taskengine.ops.operations import JobNotFound, OperationError, OperationForbidden, OperationRefused
from taskengine.ops.queue_changes import KEEP, QueueResult, change_limits, change_paused, limits_differ
from taskengine.ops.queue_settings import apply_limit_settings, apply_paused_setting
from taskengine.ops.tenancy import tenants_for
from taskengine.queues import MAX_NAME_LENGTH, declared_queues, ensure
from taskengine.states import JobState
from taskengine.values import text_problem

PERMISSION = "taskengine.pause_queue"


LIMIT_PERMISSION = "taskengine.limit_queue"  # concurrency and rate limits (set_limits)


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue as ``manage.py queues list``, the console and the API show it."""

    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str
    pause_reason: str
    declared: bool  # named in TASKENGINE["QUEUES"]
    tenant: str | None
    queued: Any  # whatever the caller's count returns (an int, or the console's BoundedCount)
    running: Any
    concurrency_limit: int | None = None
    rate: str = ""  # "100/m", "" without a rate limit

    @property
    def state(self) -> str:
        return "paused" if self.paused else "active"


def cli_actor() -> str:
    """The actor of ``manage.py queues``: the operating-system user who ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"cli:{user}"


def has_permission(user: Any, queue_tenant: str | None = None) -> bool:
    """Whether ``user`` may pause and resume a queue of ``queue_tenant`` (None: shared)."""
    try:
        _check_actor(user, queue_tenant)
    except OperationError:
        return False
    return True


def may_limit(user: Any, queue_tenant: str | None = None) -> bool:
    """Whether ``user`` may set the limits of a queue of ``queue_tenant``
    (``taskengine.limit_queue``, the same tenant scope as a pause)."""
    try:
        _check_actor(user, queue_tenant, permission=LIMIT_PERMISSION)
    except OperationError:
        return False
    return True


def holds_limit_permission(user: Any) -> bool:
    """Whether ``user`` holds ``taskengine.limit_queue`` at all."""
    try:
        _check_permission(user, LIMIT_PERMISSION)
    except OperationError:
        return False
    return True


def holds_permission(user: Any) -> bool:
    """Whether ``user`` holds ``taskengine.pause_queue`` at all (which queues it may act on
    is ``has_permission``)."""
    try:
        _check_permission(user)
    except OperationError:
        return False
    return True


def visible_to(user: Any, queue_tenant: str | None) -> bool:
    """Shared queues are visible to every staff user; a tenant's queue to its operators."""
    if user is None:
        return True
    scope = tenants_for(user)
    return scope is None or queue_tenant is None or queue_tenant in scope


def _check_permission(actor: Any, permission: str = PERMISSION) -> None:
    if isinstance(actor, str):
        return  # the deployment: manage.py queues, settings
    if actor is None or not getattr(actor, "is_active", False) or not actor.has_perm(permission):
        what = "pause or resume queues" if permission == PERMISSION else "set queue limits"
        raise OperationForbidden(f"you do not have permission to {what}")


def _check_actor(actor: Any, queue_tenant: str | None, name: str = "", permission: str = PERMISSION) -> None:
    _check_permission(actor, permission)
    if isinstance(actor, str):
        return
    scope = tenants_for(actor)
    if scope is None:
        return
    if queue_tenant is None:
        raise OperationForbidden(
            "this queue is shared by every tenant: only a user who sees every tenant may pause or resume it"
        )
    if queue_tenant not in scope:
        raise JobNotFound(f"no queue {name!r}")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise OperationError(f"not a queue name: {name!r} (a non-empty name of at most 64 characters)")
    if problem := text_problem(name):
        raise OperationError(f"not a queue name: {problem}")
    return name


def pause(name: str, *, actor: Any, reason: str = "", using: str = "default") -> QueueResult:
    """Pause queue ``name`` (created if it has no row yet): no worker claims from it
    once this commits; its running jobs finish, enqueue goes on."""
    return _operate(name, paused=True, actor=actor, reason=reason, using=using)


def resume(name: str, *, actor: Any, reason: str = "", using: str = "default") -> QueueResult:
    """Resume queue ``name`` and wake the workers that serve it."""
    return _operate(name, paused=False, actor=actor, reason=reason, using=using)


def _prepare(name: Any, reason: Any, actor: Any, using: str, permission: str) -> tuple[str, str]:
    """The checks and the settings step of an operator's change (pause, resume, limits)."""
    # Everything is checked before anything is written: the permission, the name and the
    # reason (the stored-text rule), and the actor's scope against the tenant the settings
    # give the queue (they own it: apply_paused_setting), so a refused change leaves nothing.
    _check_permission(actor, permission)
    name = _check_name(name)
    reason = _check_reason(reason)
    declared = declared_queues()
    if name in declared:
        _check_actor(actor, declared[name]["tenant"], name, permission)
    elif not isinstance(actor, str) and tenants_for(actor) is not None:
        # An undeclared queue is shared; a tenant's operator may not act on it, and may
        # not create one: to them a new queue does not exist.
        if not Queue.objects.using(using).filter(pk=name).exists():
            raise JobNotFound(f"no queue {name!r}")
        _check_actor(actor, None, name, permission)
    if name in declared:
        # The deployment's own queue: its row and a pending settings change (rule 3) stand
        # even if this change is refused, as when a worker starts.
        with transaction.atomic(using=using):
            ensure([name], using)
            apply_paused_setting(name, declared, using)
            apply_limit_settings(name, declared, using)
    return name, reason


def _operate(name: str, *, paused: bool, actor: Any, reason: str, using: str) -> QueueResult:
    name, reason = _prepare(name, reason, actor, using, PERMISSION)
    with transaction.atomic(using=using):  # the row (if new), the change and its audit row
        ensure([name], using)
        queue = Queue.objects.using(using).select_for_update().get(pk=name)
        _check_actor(actor, queue.tenant, name)
        if queue.paused == paused:
            state = "paused" if paused else "not paused"
            detail = f" (by {queue.paused_by} at {queue.paused_at:%Y-%m-%d %H:%M:%S} UTC)" if queue.paused_at else ""
            raise OperationRefused(f"queue {name!r} is already {state}{detail}")
        return change_paused(queue, paused=paused, actor=actor, reason=reason, using=using)


def _check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise OperationError(f"the reason must be text, not {type(reason).__name__}")
    if problem := text_problem(reason):
        raise OperationError(f"the reason cannot be stored: {problem}")
    return reason


def set_limits(
    name: str, *, concurrency: Any = KEEP, rate: Any = KEEP, actor: Any, reason: str = "", using: str = "default"
) -> QueueResult:
    """Set or lift queue ``name``'s concurrency limit (a whole number >= 1; None or
    "none" lifts it) and rate ("100/m"; None, "" or "none" lifts it); KEEP leaves one as
    it is. The steps of a pause (permission ``taskengine.limit_queue``, tenant scope,
    settings first, compare-and-set under the row's lock, audit row ``queue.limit`` in
    the same transaction); a change that changes nothing is refused (409). Raising or
    lifting a limit wakes the queue's workers."""
    try:
        concurrency = concurrency if concurrency is KEEP else limits.parse_concurrency(concurrency)
        if rate is not KEEP:
            lifted = rate is None or (isinstance(rate, str) and rate.strip().lower() in ("", "none"))
            rate = "" if lifted else limits.format_rate(*limits.parse_rate(rate))
    except ValueError as exc:
        raise OperationError(str(exc)) from None
    if concurrency is KEEP and rate is KEEP:
        raise OperationError("give a concurrency limit, a rate, or both")
    name, reason = _prepare(name, reason, actor, using, LIMIT_PERMISSION)
    with transaction.atomic(using=using):
        ensure([name], using)
        queue = Queue.objects.using(using).select_for_update().get(pk=name)
        _check_actor(actor, queue.tenant, name, LIMIT_PERMISSION)
        if not limits_differ(queue, concurrency, rate):
            raise OperationRefused(f"queue {name!r} already has these limits")
        return change_limits(queue, concurrency=concurrency, rate=rate, actor=actor, reason=reason, using=using)


def statuses(
    using: str = "default",
    *,
    user: Any = None,
    extra: Iterable[str] = (),
    count: Callable[[QuerySet[Job]], Any] | None = None,
) -> list[QueueStatus]:
    """Every queue with a row, declared in settings or named in ``extra``, with its queued
    and running jobs (those ``user`` may see; every job when ``user`` is None) counted by
    ``count`` (default: an exact ``count()``). Reads only."""
    declared = declared_queues()
    counter = count or (lambda queryset: int(queryset.count()))
    rows = {q.name: q for q in Queue.objects.using(using).all() if visible_to(user, q.tenant)}
    jobs = Job.objects.using(using).all()
    scope = tenants_for(user) if user is not None else None
    if scope is not None:  # as tenancy.scope_jobs: None is every tenant
        jobs = jobs.filter(tenant__in=scope)
    out: list[QueueStatus] = []
    names = set(rows) | {n for n, d in declared.items() if visible_to(user, d["tenant"])} | set(extra)
    for name in sorted(names):
        row = rows.get(name)
        if row is None and name in declared:
            tenant = declared[name]["tenant"]
        else:
            tenant = row.tenant if row else None
        if not visible_to(user, tenant):
            continue
        out.append(
            QueueStatus(
                name=name,
                paused=bool(row and row.paused),
                paused_at=row.paused_at if row else None,
                paused_by=row.paused_by if row else "",
                pause_reason=row.pause_reason if row else "",
                declared=name in declared,
                tenant=tenant,
                queued=counter(jobs.filter(queue=name, state=JobState.QUEUED)),
                running=counter(jobs.filter(queue=name, state=JobState.RUNNING)),
                concurrency_limit=row.concurrency_limit if row else None,
                rate=limits.format_rate(row.rate_limit, row.rate_period) if row else "",
            )
        )
    return out
