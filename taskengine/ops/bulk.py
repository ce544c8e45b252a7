"""Bulk actions on a filter: requeue, retry now or cancel every job the job list's
filter matches, as a resumable operation with its own record (docs/bulk.md).

``preview()`` only reads: the exact number of jobs the action applies to (the filter,
the actor's tenants, and the action's states — ``operations.applicable``). ``create()``
stores a ``BulkOperation`` (action, filter, actor, tenants, the exact count, the highest
job id at that moment) with its own audit row, in one transaction. ``run()`` applies it
in bounded batches; each batch is one transaction that:

1. takes the operation's row (a guarded UPDATE: on PostgreSQL its row lock, on SQLite the
   write lock), so two runners of one operation take turns and never apply a batch twice;
2. checks the actor again — a user must still be active and hold the action's permission
   (``operations.has_permission``), and only jobs of their tenants *now* and of the
   tenants at creation are selected (``tenancy.scope_jobs``);
3. selects the next ``batch_size`` matching jobs with an id above ``cursor`` (and at most
   ``max_job_id``) in id order, locked ``FOR UPDATE`` on PostgreSQL;
4. checks each job with the single-job rule (``operations.refusal``) and applies the
   single-job change (``operations.UPDATES``) as a compare-and-set guarded by the state
   and the attempt number as read — one UPDATE per group of alike jobs, falling back to
   one compare-and-set per job if any of the group had moved (or holds a unique key
   another live job now has); a job that moved is skipped and counted, never overwritten;
5. writes one audit row per job changed, and advances ``cursor``, ``changed``,
   ``skipped`` and ``batches``.

A kill (even ``kill -9``) loses only the batch in flight: it rolls back whole, and the
next ``run()`` (``manage.py jobs resume ID``, the same ``manage.py jobs requeue|…``
command again, or the leader's ``bulk`` maintenance service) starts after the cursor.
Nothing is ever applied twice to a job by one operation: the cursor only moves forward,
in the transaction that changed the jobs below it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.db.models.functions import Now

from taskengine.models import BulkOperation, BulkOperationState, Job, JobQuerySet
from taskengine.ops import audit, operations
from taskengine.ops.job_filters import JobFilterForm
from taskengine.ops.tenancy import RequestUser, scope_jobs, tenants_for
from taskengine.values import text_problem

ACTIONS = ("requeue", "retry", "cancel")
FILTER_FIELDS = ("state", "queue", "task", "tenant", "since", "until")
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 5000
# The console's POST applies at most this many batches before it answers; the rest is
# run by the leader's maintenance service (or ``manage.py jobs resume ID``).
IN_REQUEST_BATCHES = 4
UNFINISHED = (BulkOperationState.PENDING, BulkOperationState.RUNNING)
# The leader takes over an operation a command runs once no batch has moved it for this
# long (seconds).
IDLE_SECONDS = 10.0
LEADER_RUNNER = "leader"
# The fields a batch reads: the single-job rules, the audit snapshot and the metrics.
JOB_FIELDS = (
    "id",
    "state",
    "attempts",
    "max_attempts",
    "run_after",
    "locked_by",
    "cancel_requested_at",
    "tenant",
    "queue",
    "task_path",
    "unique_key",
)

#: A system actor (``manage.py jobs`` without ``--as-user``): a name, every tenant.
type BulkActor = RequestUser | str
#: progress(operation) after every batch.
type ProgressFn = Callable[[BulkOperation], None]


class BulkFilterError(operations.OperationError):
    """The filter (or another argument) is not valid: HTTP 400, CommandError."""


@dataclass(frozen=True, slots=True)
class Preview:
    action: str
    filter: dict[str, str]
    count: int
    tenants: list[str] | None


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise BulkFilterError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")


def _check_actor(actor: BulkActor, action: str) -> None:
    if isinstance(actor, str):
        return
    if not operations.has_permission(actor, action):
        raise operations.OperationForbidden(f"you do not have permission to {action} jobs")


def clean_filter(data: Any) -> dict[str, str]:
    """The filter as stored: the job list's filter fields (other keys, such as a page
    cursor, are left out), validated by JobFilterForm; BulkFilterError if invalid."""
    if not hasattr(data, "get"):
        raise BulkFilterError("the filter must be an object of job list filter fields")
    unknown = sorted(
        set(data) - set(FILTER_FIELDS) - {"after", "before", "limit", "expected", "reason", "csrfmiddlewaretoken"}
    )
    if unknown:
        raise BulkFilterError(f"unknown filter field(s): {', '.join(unknown)} (known: {', '.join(FILTER_FIELDS)})")
    raw = {}
    for name in FILTER_FIELDS:
        value = data.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise BulkFilterError(f"invalid filter: {name}: must be text, not {type(value).__name__}")
        raw[name] = value
    form = JobFilterForm(raw)
    if not form.is_valid():
        raise BulkFilterError(f"invalid filter: {form.error_text()}")
    params = form.filter_params()
    params.pop("limit", None)
    return params


def _filtered(filter_params: dict[str, str], using: str) -> JobQuerySet:
    form = JobFilterForm(filter_params)
    if not form.is_valid():  # stored filters were valid when stored
        raise BulkFilterError(f"invalid filter: {form.error_text()}")
    return form.filter(Job.objects.using(using).all())


def _scope(queryset: JobQuerySet, actor: BulkActor, tenants: list[str] | None) -> JobQuerySet:
    queryset = queryset.for_tenants(tenants)
    return queryset if isinstance(actor, str) else scope_jobs(queryset, actor)


def matching(
    action: str, filter_params: dict[str, str], actor: BulkActor, tenants: list[str] | None, using: str
) -> JobQuerySet:
    return _scope(_filtered(filter_params, using), actor, tenants).filter(operations.applicable(action))


def _actor_tenants(actor: BulkActor) -> list[str] | None:
    return None if isinstance(actor, str) else tenants_for(actor)


def preview(action: str, filter_data: Any, *, actor: BulkActor, using: str = "default") -> Preview:
    """Read only: how many jobs ``action`` would change for ``actor`` now (exact)."""
    _check_action(action)
    _check_actor(actor, action)
    params = clean_filter(filter_data)
    tenants = _actor_tenants(actor)
    count = matching(action, params, actor, tenants, using).count()
    return Preview(action, params, count, tenants)


def _actor_fields(actor: BulkActor) -> dict[str, Any]:
    if isinstance(actor, str):
        return {"actor": None, "actor_kind": "system", "actor_repr": actor[:150]}
    return {"actor": actor, "actor_kind": "user", "actor_repr": actor.get_username()[:150]}


def _audit_tenant(params: dict[str, str], tenants: list[str] | None) -> str | None:
    """The tenant of the operation's own audit row: the filter's, or the actor's only one."""
    if params.get("tenant"):
        return params["tenant"]
    if tenants is not None and len(tenants) == 1:
        return tenants[0]
    return None


def _check_request(action: str, actor: BulkActor, reason: str, batch_size: int) -> None:
    _check_action(action)
    _check_actor(actor, action)
    if problem := text_problem(reason):
        raise BulkFilterError(f"invalid reason: {problem}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BulkFilterError(f"the batch size must be 1..{MAX_BATCH_SIZE}, not {batch_size}")


def create(
    action: str,
    filter_data: Any,
    *,
    actor: BulkActor,
    reason: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    using: str = "default",
    runner: str = "console",
) -> BulkOperation:
    """Store the operation (pending) and its audit row in one transaction; nothing else
    changes until ``run()``. ``runner``: who will run it (a command names itself, so the
    leader leaves the operation to it while it runs)."""
    _check_request(action, actor, reason, batch_size)
    params = clean_filter(filter_data)
    tenants = _actor_tenants(actor)
    with transaction.atomic(using=using):
        max_job_id = Job.objects.using(using).aggregate(m=Max("pk"))["m"] or 0
        matched = matching(action, params, actor, tenants, using).filter(pk__lte=max_job_id).count()
        op = BulkOperation.objects.using(using).create(
            action=action,
            filter=params,
            tenants=tenants,
            reason=reason[:2000],
            matched=matched,
            max_job_id=max_job_id,
            batch_size=batch_size,
            runner=runner[:150],
            state=BulkOperationState.DONE if matched == 0 else BulkOperationState.PENDING,
            finished_at=Now() if matched == 0 else None,
            **_actor_fields(actor),
        )
        audit.record(
            actor=actor,
            action=f"bulk.{action}",
            target_type="bulk_operation",
            target_id=op.pk,
            tenant=_audit_tenant(params, tenants),
            before=None,
            after={"filter": params, "matched": matched, "tenants": tenants, "max_job_id": max_job_id},
            reason=reason[:2000],
            using=using,
        )
    op.refresh_from_db(using=using)
    return op


def find_unfinished(action: str, filter_data: Any, *, actor: BulkActor, using: str = "default") -> BulkOperation | None:
    """The newest unfinished operation of the same action, filter and actor, if any
    (``manage.py jobs requeue …`` run again after a kill resumes it)."""
    params = clean_filter(filter_data)
    fields = _actor_fields(actor)
    candidates = BulkOperation.objects.using(using).filter(
        action=action, state__in=UNFINISHED, actor_kind=fields["actor_kind"], actor_repr=fields["actor_repr"]
    )
    for op in candidates.order_by("-pk"):
        if op.filter == params:
            return op
    return None


def take(op_id: int, using: str, runner: str = "") -> BulkOperation | None:
    """Take the operation's row for this transaction (row lock / write lock) and read it."""
    changes: dict[str, Any] = {"state": BulkOperationState.RUNNING, "updated_at": Now()}
    if runner:
        changes["runner"] = runner[:150]
    taken = BulkOperation.objects.using(using).filter(pk=op_id, state__in=UNFINISHED).update(**changes)
    if not taken:
        return None
    return BulkOperation.objects.using(using).get(pk=op_id)


def finish(op: BulkOperation, state: str, using: str, error: str = "") -> None:
    BulkOperation.objects.using(using).filter(pk=op.pk).update(
        state=state, error=error[:2000], finished_at=Now(), updated_at=Now()
    )


def cancel(op_id: int, *, actor: BulkActor, using: str = "default") -> BulkOperation:
    """Stop an unfinished operation (the jobs changed so far stay changed)."""
    with transaction.atomic(using=using):
        # Read under the row's lock (a runner's batch holds it): the refusal and the audit
        # row's "before" are the operation as the last batch left it.
        op = BulkOperation.objects.using(using).select_for_update().filter(pk=op_id).first()
        if op is None or not visible(op, actor):
            raise operations.JobNotFound(f"no bulk operation {op_id}")
        _check_actor(actor, op.action)
        if not take(op_id, using):
            raise operations.OperationRefused(f"bulk operation {op_id} is already {op.state}")
        finish(op, BulkOperationState.CANCELLED, using)
        audit.record(
            actor=actor,
            action=f"bulk.{op.action}.cancel",
            target_type="bulk_operation",
            target_id=op.pk,
            tenant=_audit_tenant(op.filter, op.tenants),
            before={"state": op.state, "changed": op.changed},
            after={"state": BulkOperationState.CANCELLED},
            using=using,
        )
    return BulkOperation.objects.using(using).get(pk=op_id)


def visible(op: BulkOperation, user: BulkActor) -> bool:
    """Whether ``user`` may see operation ``op``: superusers and system actors every one;
    others the operations whose tenants (at creation) are all theirs."""
    if isinstance(user, str):
        return True
    mine = tenants_for(user)
    if mine is None:
        return True
    if op.tenants is None:
        return False
    return set(op.tenants) <= set(mine)


def as_dict(op: BulkOperation) -> dict[str, Any]:
    return {
        "id": op.pk,
        "action": op.action,
        "filter": op.filter,
        "actor": op.actor_repr,
        "tenants": op.tenants,
        "reason": op.reason,
        "state": op.state,
        "matched": op.matched,
        "changed": op.changed,
        "skipped": op.skipped,
        "cursor": op.cursor,
        "max_job_id": op.max_job_id,
        "batch_size": op.batch_size,
        "batches": op.batches,
        "error": op.error,
        "created_at": op.created_at.isoformat() if op.created_at else None,
        "updated_at": op.updated_at.isoformat() if op.updated_at else None,
        "finished_at": op.finished_at.isoformat() if op.finished_at else None,
    }
