"""The audit trail: one OperatorAction row per operator write.

``record()`` must be called inside the same transaction as the change it describes
(the caller's ``transaction.atomic()``): if the audit insert fails, the change rolls
back with it. Every row carries the tenant of its target. Rows are append-only; nothing in taskengine updates or deletes them.
"""
from __future__ import annotations

from typing import Any

from django.db import transaction

from .models import OperatorAction


def job_snapshot(job) -> dict[str, Any]:
    """The fields of a job an audit row keeps as "before" / "after"."""
    return {
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_after": job.run_after.isoformat() if job.run_after else None,
        "locked_by": job.locked_by,
        "cancel_requested": job.cancel_requested_at is not None,
    }


def record(*, actor, action: str, target_type: str, target_id: Any, tenant: str | None,
           before: dict | None = None, after: dict | None = None, reason: str = "",
           using: str = "default") -> OperatorAction:
    """Append an audit row. Raises if called outside a transaction, so an audited
    change can never commit without its record.

    ``tenant`` is the tenant of the target (None only for a target without one): tenant
    staff see exactly the audit rows of their tenants, so it has no default."""
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record() must run inside the transaction that makes the change")
    user = actor if getattr(actor, "pk", None) is not None else None
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
