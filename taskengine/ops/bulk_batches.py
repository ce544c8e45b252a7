"""Running bulk operations (bulk.py has the record, its filter and its actor): each
batch is one transaction, as bulk.py's docstring lays out step by step; ``run()`` applies
batches until the operation is done, ``run_unfinished()`` is the leader's share.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.db.models.functions import Now

from taskengine.models import BulkOperation, BulkOperationState, Job
from taskengine.ops import audit, bulk, operations


def _resolve_actor(op: BulkOperation, using: str) -> tuple[bulk.BulkActor | None, str]:
    """The operation's actor as it is now, or (None, why it may no longer act)."""
    if op.actor_kind == "system":
        return op.actor_repr, ""
    user = get_user_model()._default_manager.using(using).filter(pk=op.actor_id).first() if op.actor_id else None
    if user is None:
        return None, "the operation's user no longer exists"
    if not operations.has_permission(user, op.action):
        return None, f"{op.actor_repr} no longer has permission to {op.action} jobs (or is not active)"
    return user, ""


def _group_key(job: Job) -> tuple[str, int, bool]:
    """Jobs whose single-job change (operations.UPDATES) is the same UPDATE."""
    return (job.state, job.attempts, job.cancel_requested_at is None)


def _apply_group(action: str, jobs: list[Job], using: str) -> tuple[list[Job], dict[int, str]]:
    """Change ``jobs`` (all alike: _group_key): one guarded UPDATE, or, if any of them
    moved, the single-job compare-and-set for each. Returns (changed, skipped: reason)."""
    guard, changes, _message = operations.UPDATES[action](jobs[0])
    ids = [job.pk for job in jobs]
    try:
        with transaction.atomic(using=using):
            rows = Job.objects.using(using).filter(guard, pk__in=ids, attempts=jobs[0].attempts)
            if rows.update(**changes) == len(ids):
                return jobs, {}
            raise _Moved
    except (_Moved, IntegrityError):
        pass
    changed, skipped = [], {}
    for job in jobs:
        guard, changes, _message = operations.UPDATES[action](job)
        try:
            if operations.compare_and_set(job, guard, changes, using):
                changed.append(job)
            else:
                skipped[job.pk] = f"job {job.pk} changed state meanwhile"
        except operations.OperationRefused as exc:
            skipped[job.pk] = exc.message
    return changed, skipped


class _Moved(Exception):
    """A group's UPDATE matched fewer rows than it had jobs: roll it back, go job by job."""


def run_batch(op_id: int, *, using: str = "default", runner: str = "") -> BulkOperation | None:
    """Apply the next batch of operation ``op_id`` in one transaction (module
    docstring); returns the operation as committed, or None if it is already finished.
    ``runner`` names who runs it (kept on the record)."""
    with transaction.atomic(using=using):
        op = bulk.take(op_id, using, runner)
        if op is None:
            return None
        actor, problem = _resolve_actor(op, using)
        if actor is None:
            bulk.finish(op, BulkOperationState.FAILED, using, problem)
            return BulkOperation.objects.using(using).get(pk=op_id)
        candidates = (
            bulk.matching(op.action, op.filter, actor, op.tenants, using)
            .filter(pk__gt=op.cursor, pk__lte=op.max_job_id)
            .only(*bulk.JOB_FIELDS)
            .order_by("pk")
        )
        if connections[using].features.has_select_for_update:
            candidates = candidates.select_for_update(of=("self",))
        batch = list(candidates[: op.batch_size])
        groups: dict[tuple[str, int, bool], list[Job]] = defaultdict(list)
        skipped: dict[int, str] = {}
        for job in batch:
            refusal = operations.refusal(job, op.action)
            if refusal:
                skipped[job.pk] = refusal
            else:
                groups[_group_key(job)].append(job)
        changed: list[Job] = []
        for jobs in groups.values():
            done, refused = _apply_group(op.action, jobs, using)
            changed.extend(done)
            skipped.update(refused)
        _audit_batch(op, actor, changed, using)
        last = batch[-1].pk if batch else op.cursor
        complete = len(batch) < op.batch_size or last >= op.max_job_id
        BulkOperation.objects.using(using).filter(pk=op.pk).update(
            cursor=last,
            changed=op.changed + len(changed),
            skipped=op.skipped + len(skipped),
            batches=op.batches + 1,
            error=(next(iter(skipped.values())) if skipped else op.error)[:2000],
            state=BulkOperationState.DONE if complete else BulkOperationState.RUNNING,
            finished_at=Now() if complete else None,
            updated_at=Now(),
        )
    return BulkOperation.objects.using(using).get(pk=op_id)


def _audit_batch(op: BulkOperation, actor: bulk.BulkActor, changed: list[Job], using: str) -> None:
    """One audit row per job changed, in the batch's transaction; metrics on commit."""
    if not changed:
        return
    befores = {job.pk: audit.job_snapshot(job) for job in changed}
    after = {job.pk: job for job in Job.objects.using(using).filter(pk__in=list(befores)).only(*bulk.JOB_FIELDS)}
    reason = f"bulk operation {op.pk}" + (f": {op.reason}" if op.reason else "")
    audit.record_many(
        actor=actor,
        action=op.action,
        target_type="job",
        rows=[
            {
                "target_id": pk,
                "tenant": after[pk].tenant,
                "before": before,
                "after": audit.job_snapshot(after[pk]),
                "reason": reason[:2000],
            }
            for pk, before in befores.items()
        ],
        using=using,
    )
    counted = [(befores[pk]["state"], after[pk]) for pk in befores]

    def count() -> None:
        for state_before, job in counted:
            operations.count(op.action, state_before, job)

    transaction.on_commit(count, using=using)


def run(
    op_id: int,
    *,
    using: str = "default",
    max_batches: int | None = None,
    pause: float = 0.0,
    progress: bulk.ProgressFn | None = None,
    runner: str = "console",
) -> BulkOperation:
    """Apply batches until the operation is finished (or ``max_batches`` ran); ``pause``
    seconds between batches throttle a big operation's load."""
    ran = 0
    while max_batches is None or ran < max_batches:
        op = run_batch(op_id, using=using, runner=runner)
        if op is None:
            break
        ran += 1
        if progress is not None:
            progress(op)
        if op.finished:
            break
        if pause > 0:
            time.sleep(pause)
    return BulkOperation.objects.using(using).get(pk=op_id)


def run_unfinished(using: str = "default", *, max_batches: int = 20, idle_for: float = bulk.IDLE_SECONDS) -> int:
    """The leader's ``bulk`` maintenance service: up to ``max_batches`` batches of the
    oldest unfinished operations started by the console or the API (or last run by a
    leader), and of any other no runner has moved for ``idle_for`` seconds: a running
    ``manage.py jobs`` keeps its own pace (``--pause`` included); one killed is taken
    over. Returns the batches run."""
    ours = Q(runner__in=["", "console", bulk.LEADER_RUNNER])
    idle = Q(updated_at__lte=Now() - timedelta(seconds=idle_for))
    unfinished = BulkOperation.objects.using(using).filter(ours | idle, state__in=bulk.UNFINISHED)
    ran = 0
    for op_id in unfinished.order_by("pk").values_list("pk", flat=True)[:10]:
        while ran < max_batches:
            op = run_batch(op_id, using=using, runner=bulk.LEADER_RUNNER)
            if op is None:
                break
            ran += 1
            if op.finished:
                break
    return ran
