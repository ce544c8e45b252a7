"""The audit trail: one OperatorAction row per operator write.

``record()`` must be called inside the same transaction as the change it describes
(the caller's ``transaction.atomic()``): if the audit insert fails, the change rolls
back with it. Every row carries the tenant of its target. Rows are append-only; nothing in taskengine updates or deletes them.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Model, QuerySet

from taskengine.models import Job, OperatorAction, TenantMembership
from taskengine.ops.tenancy import RequestUser

#: Who made a change: a user, or the name of a system actor (``"system:backfill"``).
type Actor = RequestUser | str


def job_snapshot(job: Job) -> dict[str, Any]:
    """The fields of a job an audit row keeps as "before" / "after"."""
    return {
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_after": job.run_after.isoformat() if job.run_after else None,
        "locked_by": job.locked_by,
        "cancel_requested": job.cancel_requested_at is not None,
    }


def record(
    *,
    actor: Actor | None,
    action: str,
    target_type: str,
    target_id: Any,
    tenant: str | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
    using: str = "default",
) -> OperatorAction:
    """Append an audit row. Raises if called outside a transaction, so an audited
    change can never commit without its record.

    ``tenant`` is the tenant of the target (None only for a target without one): tenant
    staff see exactly the audit rows of their tenants, so it has no default."""
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record() must run inside the transaction that makes the change")
    # A system actor, an anonymous or an unsaved user is recorded by its name only.
    user = None if actor is None or isinstance(actor, (str, AnonymousUser)) or actor.pk is None else actor
    return OperatorAction.objects.using(using).create(
        actor=user,
        actor_repr=str(getattr(actor, "get_username", lambda: actor)() if actor is not None else "system")[:150],
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        tenant=tenant,
        state_before=before,
        state_after=after,
        reason=reason,
    )


def record_many(
    *, actor: Actor | None, action: str, target_type: str, rows: list[dict[str, Any]], using: str = "default"
) -> list[OperatorAction]:
    """Append one audit row per item of ``rows`` (keys ``target_id``, ``tenant``,
    ``before``, ``after``, ``reason``) in one INSERT; the rule of ``record()`` holds: it
    must run inside the transaction of the changes."""
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record_many() must run inside the transaction that makes the changes")
    user = None if actor is None or isinstance(actor, (str, AnonymousUser)) or actor.pk is None else actor
    actor_repr = str(getattr(actor, "get_username", lambda: actor)() if actor is not None else "system")[:150]
    return OperatorAction.objects.using(using).bulk_create(
        [
            OperatorAction(
                actor=user,
                actor_repr=actor_repr,
                action=action,
                target_type=target_type,
                target_id=str(row["target_id"]),
                tenant=row["tenant"],
                state_before=row.get("before"),
                state_after=row.get("after"),
                reason=row.get("reason", ""),
            )
            for row in rows
        ]
    )


def record_cascaded_membership_delete(
    sender: type[TenantMembership],
    instance: TenantMembership,
    using: str,
    origin: Model | QuerySet[Any] | None = None,
    **kwargs: Any,
) -> None:
    """``pre_delete`` receiver for TenantMembership: a membership deleted because its
    user was deleted (the auth admin, ``user.delete()``) is an operator write too, and
    gets its audit row inside the deletion's transaction (Django's delete collector
    sends pre_delete inside it, so a failed insert rolls the whole delete back).

    Deletes that start at the membership itself are audited by their own path (the
    membership admin writes its row with the acting user), so they are skipped here.
    The acting user of a cascade is not known to a signal: the row is the system's,
    and its reason names the deleted object."""
    if origin is None:
        return
    origin_model = origin.model if isinstance(origin, QuerySet) else type(origin)
    if issubclass(origin_model, sender):
        return
    record(
        actor=None,
        action="tenant_membership.delete",
        target_type="tenant_membership",
        target_id=instance.pk,
        tenant=instance.tenant,
        before={"user": instance.user_id, "tenant": instance.tenant},
        after=None,
        reason=f"deleted with {origin_model._meta.verbose_name} {origin}"[:500],
        using=using,
    )
