"""Changes of a queue row, each inside its caller's transaction with the row locked: the
compare-and-set, the audit row in the same transaction, and the wake-up of the queue's
workers. ``queue_control`` (an operator's change) and ``queue_settings`` (the
deployment's ``TASKENGINE["QUEUES"]``) both change a queue through these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Q
from django.db.models.functions import Now

from taskengine import limits
from taskengine.db import store_for
from taskengine.db.base import JOBS_CHANNEL
from taskengine.models import OperatorAction, Queue
from taskengine.ops import audit
from taskengine.ops.operations import OperationRefused

SETTINGS_ACTOR = "settings"


KEEP: Any = object()  # set_limits: leave this limit as it is


@dataclass(frozen=True, slots=True)
class QueueResult:
    queue: Queue
    action: str
    audit_id: int
    message: str


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


def actor_repr(actor: Any) -> str:
    if isinstance(actor, str):
        return actor[:150]
    return str(actor.get_username())[:150]


def record_change(
    queue: Queue, *, action: str, before: dict[str, Any], actor: Any, reason: str, using: str
) -> OperatorAction:
    """The audit row of a change of ``queue`` (already reloaded), in the caller's
    transaction: ``before`` against the queue's snapshot now."""
    return audit.record(
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


def change_paused(
    queue: Queue, *, paused: bool, actor: Any, reason: str, using: str, settings_paused: bool | None = None
) -> QueueResult:
    """Inside a transaction, the row locked: the compare-and-set, its audit row and (for
    a resume) the wake-up."""
    before = snapshot(queue)
    changes: dict[str, Any] = {"paused": paused, "updated_at": Now()}
    if paused:
        changes.update(paused_at=Now(), paused_by=actor_repr(actor), pause_reason=reason)
    else:
        changes.update(paused_at=None, paused_by="", pause_reason="")
    if settings_paused is not None:
        changes["settings_paused"] = settings_paused
    if Queue.objects.using(using).filter(pk=queue.pk, paused=queue.paused).update(**changes) != 1:
        raise OperationRefused(f"queue {queue.pk!r} changed meanwhile; reload and try again")
    queue.refresh_from_db(using=using)
    action = "queue.pause" if paused else "queue.resume"
    row = record_change(queue, action=action, before=before, actor=actor, reason=reason, using=using)
    if not paused:
        notify_workers(queue.pk, using)
    message = f"Paused queue {queue.pk}." if paused else f"Resumed queue {queue.pk}."
    return QueueResult(queue=queue, action=action, audit_id=row.pk, message=message)


def notify_workers(name: str, using: str) -> None:
    """PostgreSQL: wake the LISTENing workers of ``name`` when the transaction commits."""
    connection = connections[using]
    store_for(connection).notify_queue(connection, JOBS_CHANNEL, name)


def limits_differ(queue: Queue, concurrency: Any, rate: Any) -> bool:
    if concurrency is not KEEP and concurrency != queue.concurrency_limit:
        return True
    return rate is not KEEP and rate != limits.format_rate(queue.rate_limit, queue.rate_period)


def change_limits(queue: Queue, *, concurrency: Any, rate: Any, actor: Any, reason: str, using: str) -> QueueResult:
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
    row = record_change(queue, action="queue.limit", before=before, actor=actor, reason=reason, using=using)
    notify_workers(queue.pk, using)
    rate_text = limits.format_rate(queue.rate_limit, queue.rate_period) or "none"
    message = f"Queue {queue.pk}: concurrency {queue.concurrency_limit or 'none'}, rate {rate_text}."
    return QueueResult(queue=queue, action="queue.limit", audit_id=row.pk, message=message)
