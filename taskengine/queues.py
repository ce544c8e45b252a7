"""Queues as records: first use, ``TASKENGINE["QUEUES"]``, pause and resume.

See docs/queues.md. The claim (db/<vendor>/jobs.sql) drops paused queues from the
wanted list inside its own statement, so a pause committed before a claim began is
always honoured and no worker keeps a copy of the paused set.

Every change of a queue is the same steps as a job operation (``operations``), in one
transaction:

1. **permission and tenant scope** — a user actor must be active and hold
   ``taskengine.pause_queue`` (otherwise :class:`~taskengine.operations.
   OperationForbidden`, 403, nothing read). A queue dedicated to a tenant
   (``TASKENGINE["QUEUES"][name]["tenant"]``) may be paused by that tenant's operators;
   to others it does not exist (:class:`~taskengine.operations.JobNotFound`'s 404, as
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
   refused (:class:`~taskengine.operations.OperationRefused`, 409);
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

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from . import audit, limits
from .conf import engine_settings
from .db import store_for
from .db.base import JOBS_CHANNEL
from .models import Job, Queue
from .operations import JobNotFound, OperationError, OperationForbidden, OperationRefused
from .states import JobState
from .tenancy import tenants_for
from .values import text_problem

PERMISSION = "taskengine.pause_queue"
LIMIT_PERMISSION = "taskengine.limit_queue"  # concurrency and rate limits (set_limits)
SETTINGS_ACTOR = "settings"
# the keys a TASKENGINE["QUEUES"] entry may have
SETTING_KEYS = frozenset({"paused", "tenant", "concurrency", "rate"})
KEEP: Any = object()  # set_limits: leave this limit as it is
MAX_NAME_LENGTH = 64  # Job.queue's length
PAUSED_POLL_SECONDS = 0.5  # a polling worker's longest idle wait while one of its queues is paused


@dataclass(frozen=True, slots=True)
class QueueResult:
    queue: Queue
    action: str
    audit_id: int
    message: str


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


# --- settings --------------------------------------------------------------------------


def declared_queues() -> dict[str, dict[str, Any]]:
    """``TASKENGINE["QUEUES"]``, checked: {name: {"paused": bool, "tenant": str | None}}. Raises
    ImproperlyConfigured naming the entry for anything else."""
    raw = engine_settings.QUEUES
    if not isinstance(raw, dict):
        raise ImproperlyConfigured('TASKENGINE["QUEUES"] must be a dict of queue name -> options')
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        where = f'TASKENGINE["QUEUES"][{name!r}]'
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise ImproperlyConfigured(f"{where}: a queue name is a non-empty string of at most 64 characters")
        if problem := text_problem(name):
            raise ImproperlyConfigured(f"{where}: the queue name cannot be stored: {problem}")
        if not isinstance(options, dict):
            raise ImproperlyConfigured(f"{where} must be a dict of options")
        unknown = set(options) - SETTING_KEYS
        if unknown:
            raise ImproperlyConfigured(
                f"{where}: unknown option(s) {', '.join(sorted(map(str, unknown)))}; "
                f"known: {', '.join(sorted(SETTING_KEYS))}"
            )
        paused = options.get("paused", False)
        if not isinstance(paused, bool):
            raise ImproperlyConfigured(f'{where}["paused"] must be True or False')
        tenant = options.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant or len(tenant) > 64):
            raise ImproperlyConfigured(f'{where}["tenant"] must be a tenant name (at most 64 characters) or None')
        if tenant is not None and (problem := text_problem(tenant)):
            raise ImproperlyConfigured(f'{where}["tenant"] cannot be stored: {problem}')
        concurrency = options.get("concurrency")
        try:
            concurrency = limits.parse_concurrency(concurrency)
        except ValueError as exc:
            raise ImproperlyConfigured(f'{where}["concurrency"]: {exc}') from None
        rate = options.get("rate")
        if rate is not None:
            try:
                rate = limits.format_rate(*limits.parse_rate(rate))
            except ValueError as exc:
                raise ImproperlyConfigured(f'{where}["rate"]: {exc}') from None
        out[name] = {"paused": paused, "tenant": tenant, "concurrency": concurrency, "rate": rate or ""}
    return out


def ensure(names: Iterable[str], using: str = "default") -> None:
    """Create the rows of queues that have none yet (unpaused); existing rows are kept.
    A name longer than a job's queue can be, or one no stored text may be, has no jobs,
    and gets no row."""
    rows = [
        Queue(name=name)
        for name in sorted(set(names))
        if 0 < len(name) <= MAX_NAME_LENGTH and text_problem(name) is None
    ]
    if rows:
        Queue.objects.using(using).bulk_create(rows, ignore_conflicts=True)


def sync_settings(using: str = "default", names: Iterable[str] = ()) -> list[str]:
    """Create the rows of the declared queues and of ``names``, and apply every declared
    ``paused`` that differs from the one last applied (``settings_paused``). Returns the
    queues whose paused state this changed. See docs/queues.md for how settings and
    operator changes combine."""
    declared = declared_queues()
    ensure(set(declared) | set(names), using)
    rows = Queue.objects.using(using).filter(
        Q(settings_paused=True) | Q(tenant__isnull=False) | Q(settings_concurrency__isnull=False) | ~Q(settings_rate="")
    )
    flagged = set(rows.values_list("name", flat=True))
    changed: list[str] = []
    for name in sorted(set(declared) | flagged):
        with transaction.atomic(using=using):
            paused = _apply_setting(name, declared, using)
            limited = _apply_limit_settings(name, declared, using)
            if paused or limited:
                changed.append(name)
    return changed


def _apply_limit_settings(name: str, declared: dict[str, dict[str, Any]], using: str) -> bool:
    """Inside a transaction: apply queue ``name``'s declared ``concurrency`` and ``rate``
    where they changed since last applied (``settings_concurrency``, ``settings_rate``),
    each on its own, as ``paused``. True when a limit changed."""
    entry = declared.get(name, {})
    concurrency, rate = entry.get("concurrency"), entry.get("rate", "")
    queue = Queue.objects.using(using).select_for_update().filter(pk=name).first()
    if queue is None or (queue.settings_concurrency == concurrency and queue.settings_rate == rate):
        return False
    new_concurrency = concurrency if queue.settings_concurrency != concurrency else KEEP
    new_rate = rate if queue.settings_rate != rate else KEEP
    Queue.objects.using(using).filter(pk=name).update(settings_concurrency=concurrency, settings_rate=rate)
    if not _limits_differ(queue, new_concurrency, new_rate):
        return False
    reason = f'TASKENGINE["QUEUES"][{name!r}]: concurrency {concurrency}, rate {rate or None}'
    _change_limits(queue, concurrency=new_concurrency, rate=new_rate, actor=SETTINGS_ACTOR, reason=reason, using=using)
    return True


def _limits_differ(queue: Queue, concurrency: Any, rate: Any) -> bool:
    if concurrency is not KEEP and concurrency != queue.concurrency_limit:
        return True
    return rate is not KEEP and rate != limits.format_rate(queue.rate_limit, queue.rate_period)


def _apply_setting(name: str, declared: dict[str, dict[str, Any]], using: str) -> bool:
    """Inside a transaction: apply queue ``name``'s declared ``paused`` if it changed
    since last applied. True when the queue's paused state changed."""
    wanted = bool(declared.get(name, {}).get("paused", False))
    tenant = declared.get(name, {}).get("tenant")
    queue = Queue.objects.using(using).select_for_update().filter(pk=name).first()
    if queue is None:
        return False
    if queue.tenant != tenant:  # the settings own a queue's tenant
        Queue.objects.using(using).filter(pk=name).update(tenant=tenant, updated_at=Now())
        queue.tenant = tenant
    if queue.settings_paused == wanted:
        return False
    rows = Queue.objects.using(using).filter(pk=name, settings_paused=queue.settings_paused)
    if queue.paused == wanted:
        rows.update(settings_paused=wanted, updated_at=Now())
        return False
    reason = f'TASKENGINE["QUEUES"][{name!r}]["paused"] = {wanted}'
    _change(queue, paused=wanted, actor=SETTINGS_ACTOR, reason=reason, using=using, settings_paused=wanted)
    return True


# --- pause and resume --------------------------------------------------------------------


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
    # give the queue (they own it: _apply_setting), so a refused change leaves nothing.
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
            _apply_setting(name, declared, using)
            _apply_limit_settings(name, declared, using)
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
        return _change(queue, paused=paused, actor=actor, reason=reason, using=using)


def _check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise OperationError(f"the reason must be text, not {type(reason).__name__}")
    if problem := text_problem(reason):
        raise OperationError(f"the reason cannot be stored: {problem}")
    return reason


def _actor_repr(actor: Any) -> str:
    if isinstance(actor, str):
        return actor[:150]
    return str(actor.get_username())[:150]


def _change(
    queue: Queue, *, paused: bool, actor: Any, reason: str, using: str, settings_paused: bool | None = None
) -> QueueResult:
    """Inside a transaction, the row locked: the compare-and-set, its audit row and (for
    a resume) the wake-up."""
    before = snapshot(queue)
    changes: dict[str, Any] = {"paused": paused, "updated_at": Now()}
    if paused:
        changes.update(paused_at=Now(), paused_by=_actor_repr(actor), pause_reason=reason)
    else:
        changes.update(paused_at=None, paused_by="", pause_reason="")
    if settings_paused is not None:
        changes["settings_paused"] = settings_paused
    if Queue.objects.using(using).filter(pk=queue.pk, paused=queue.paused).update(**changes) != 1:
        raise OperationRefused(f"queue {queue.pk!r} changed meanwhile; reload and try again")
    queue.refresh_from_db(using=using)
    action = "queue.pause" if paused else "queue.resume"
    row = audit.record(
        actor=actor,
        action=action,
        target_type="queue",
        target_id=queue.pk,
        tenant=queue.tenant,
        before=before,
        after=snapshot(queue),
        reason=reason,
        using=using,
    )
    if not paused:
        _notify(queue.pk, using)
    message = f"Paused queue {queue.pk}." if paused else f"Resumed queue {queue.pk}."
    return QueueResult(queue=queue, action=action, audit_id=row.pk, message=message)


def _notify(name: str, using: str) -> None:
    """PostgreSQL: wake the LISTENing workers of ``name`` when the transaction commits."""
    connection = connections[using]
    store_for(connection).notify_queue(connection, JOBS_CHANNEL, name)


def snapshot(queue: Queue) -> dict[str, Any]:
    """The fields of a queue an audit row keeps as "before" / "after"."""
    return {
        "paused": queue.paused,
        "paused_at": queue.paused_at.isoformat() if queue.paused_at else None,
        "paused_by": queue.paused_by,
        "pause_reason": queue.pause_reason,
        "concurrency_limit": queue.concurrency_limit,
        "rate": limits.format_rate(queue.rate_limit, queue.rate_period) or None,
    }


# --- limits ------------------------------------------------------------------------------


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
        if not _limits_differ(queue, concurrency, rate):
            raise OperationRefused(f"queue {name!r} already has these limits")
        return _change_limits(queue, concurrency=concurrency, rate=rate, actor=actor, reason=reason, using=using)


def _change_limits(queue: Queue, *, concurrency: Any, rate: Any, actor: Any, reason: str, using: str) -> QueueResult:
    """Inside a transaction, the row locked: the compare-and-set of the limits, the audit
    row and the wake-up."""
    before = snapshot(queue)
    changes: dict[str, Any] = {"updated_at": Now()}
    if concurrency is not KEEP:
        changes["concurrency_limit"] = concurrency
    if rate is not KEEP:
        count, period = limits.parse_rate(rate) if rate else (None, None)
        changes.update(rate_limit=count, rate_period=period)
        if period != queue.rate_period:  # windows of another length: the counter starts afresh
            changes.update(rate_window=0, rate_count=0)
    expected = Q(pk=queue.pk)
    for field in ("concurrency_limit", "rate_limit", "rate_period"):
        value = getattr(queue, field)
        expected &= Q(**{f"{field}__isnull": True}) if value is None else Q(**{field: value})
    if Queue.objects.using(using).filter(expected).update(**changes) != 1:
        raise OperationRefused(f"queue {queue.pk!r} changed meanwhile; reload and try again")
    queue.refresh_from_db(using=using)
    row = audit.record(
        actor=actor,
        action="queue.limit",
        target_type="queue",
        target_id=queue.pk,
        tenant=queue.tenant,
        before=before,
        after=snapshot(queue),
        reason=reason,
        using=using,
    )
    _notify(queue.pk, using)
    rate_text = limits.format_rate(queue.rate_limit, queue.rate_period) or "none"
    message = f"Queue {queue.pk}: concurrency {queue.concurrency_limit or 'none'}, rate {rate_text}."
    return QueueResult(queue=queue, action="queue.limit", audit_id=row.pk, message=message)


# --- reads -------------------------------------------------------------------------------


def held_among(names: Iterable[str], using: str = "default", paused: bool = True) -> set[str]:
    """Which of ``names`` are limited (concurrency or rate) now, or paused (with
    ``paused``): a worker serving one polls at least every PAUSED_POLL_SECONDS (a limit's
    room and a rate's next window wake no LISTENer; a resume wakes only LISTENers)."""
    wanted = list(names)
    if not wanted:
        return set()
    held = Q(concurrency_limit__isnull=False) | Q(rate_limit__isnull=False)
    if paused:
        held |= Q(paused=True)
    return set(Queue.objects.using(using).filter(held, pk__in=wanted).values_list("name", flat=True))


def paused_among(names: Iterable[str], using: str = "default") -> set[str]:
    """Which of ``names`` are paused now (one indexed read; polling workers use it to
    shorten their idle wait while a queue of theirs is paused)."""
    wanted = list(names)
    if not wanted:
        return set()
    return set(Queue.objects.using(using).filter(pk__in=wanted, paused=True).values_list("name", flat=True))


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
