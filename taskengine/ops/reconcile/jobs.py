"""Job-level reconcile checks: expired leases, jobs of dead workers, stale queued jobs
and unique keys blocked by a stuck live job.

Fixes run the engine's one recovery path (maintenance.recovery.run_once, restricted
to the jobs found): back to ``queued`` now, or ``failed`` when attempts are spent /
``on_lease_expired="fail"``, compare-and-set on (state, attempt, locked_by) with the
lease expired or the worker dead re-checked, and the audit row in the same transaction.
Two reconciles (or reconcile and the recovery sweep) at once recover each job once:
the loser's UPDATE matches no row and it writes no audit row.

Terminal jobs never block a unique key: the live-key index
(taskengine_job_unique_live_key) covers queued and running jobs only. A key is
*blocked* when its live holder cannot make progress — running with an expired lease or
a dead worker, or queued more than STALE_QUEUED_SECONDS past run_after — because
enqueue() with that key returns the stuck holder instead of creating new work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import transaction

from taskengine.leader import recovery
from taskengine.ops import audit
from taskengine.ops.reconcile.base import Applied, Check, Context, Finding, first_page, page


def _inspect_rows(query: str) -> Callable[[Context, Check], Finding]:
    def inspect(ctx: Context, check: Check) -> Finding:
        total, rows = first_page(ctx, query, count_column=4)
        return check.finding(total, [row[0] for row in rows])

    return inspect


def _recover(ctx: Context, category: str, rows: list[tuple[Any, ...]], reason: str) -> list[int]:
    """Recover a page of running jobs in one statement of the engine's one recovery
    path (maintenance.recovery), with one audit row per recovered job in the same
    transaction. Jobs that finished, were recovered or were re-claimed meanwhile are
    left alone (and not audited). Returns the recovered ids."""
    found = {row[0]: row for row in rows}
    with transaction.atomic(using=ctx.database):
        won = recovery.run_once(ctx.database, job_ids=list(found), limit=len(found))
        for job in won:
            # The attempt and holder the statement recovered, not the page's: the job
            # may have been recovered, re-claimed and lost again since the page was read.
            tenant = found[job.id][3]
            audit.record(
                actor=ctx.actor,
                action=f"reconcile.{category}",
                target_type="job",
                target_id=job.id,
                tenant=tenant,
                before={"state": "running", "attempts": job.attempt, "locked_by": job.worker_id},
                after={"state": job.state, "attempts": job.attempt, "locked_by": None},
                reason=reason,
                using=ctx.database,
            )
    return [job.id for job in won]


def _fix_running(query: str, category: str, reason: str) -> Callable[[Context], Applied]:
    def fix(ctx: Context) -> Applied:
        applied = Applied(category)
        for rows in page(ctx, query):
            # blocked_unique_keys also lists queued holders: those are report-only.
            running = [row for row in rows if len(row) <= 6 or row[6] == "running"]
            for job_id in _recover(ctx, category, running, reason) if running else ():
                applied.add(job_id)
            ctx.progress(f"{category}: {applied.fixed} recovered")
        return applied

    return fix


def _served_queues(ctx: Context) -> set[str]:
    served: set[str] = set()
    for (queues,) in ctx.fetch("reconcile_live_worker_queues"):
        served.update(json.loads(queues) if isinstance(queues, str) else queues or [])
    return served


def _inspect_stale(ctx: Context, check: Check) -> Finding:
    total, rows = first_page(ctx, "reconcile_stale_queued", count_column=4)
    if not total:
        return check.finding(0, [], queues={}, unserved_queues=[])
    by_queue = dict(ctx.fetch("reconcile_stale_queued_by_queue"))
    served = _served_queues(ctx)
    return check.finding(
        total, [row[0] for row in rows], queues=by_queue, unserved_queues=sorted(q for q in by_queue if q not in served)
    )


def _inspect_blocked(ctx: Context, check: Check) -> Finding:
    total, rows = first_page(ctx, "reconcile_blocked_unique_keys", count_column=4)
    return check.finding(total, [row[0] for row in rows], keys={row[5]: row[6] for row in rows})


CHECKS = [
    Check(
        name="expired_leases",
        description="Running jobs whose lease has expired (their worker stopped heartbeating).",
        action="recover: back to queued now (failed when attempts are spent or "
        "on_lease_expired='fail'); the attempt is logged as lost",
        inspect=_inspect_rows("reconcile_expired_leases"),
        fix=_fix_running("reconcile_expired_leases", "expired_leases", "lease expired"),
    ),
    Check(
        name="dead_worker_jobs",
        description="Running jobs with a live lease whose worker is dead "
        "(marked dead/stopped, or no heartbeat for WORKER_DEAD_AFTER_SECONDS).",
        action="recover now without waiting for the lease: back to queued (failed when "
        "attempts are spent); the attempt is logged as lost",
        inspect=_inspect_rows("reconcile_dead_worker_jobs"),
        fix=_fix_running("reconcile_dead_worker_jobs", "dead_worker_jobs", "worker dead"),
    ),
    Check(
        name="stale_queued_jobs",
        description="Queued jobs more than STALE_QUEUED_SECONDS past their run_after.",
        action="none (report only): start or scale workers for the queues in detail "
        "(unserved_queues: no live worker serves them); reconcile never fails or "
        "deletes waiting work",
        inspect=_inspect_stale,
    ),
    Check(
        name="blocked_unique_keys",
        description="Unique keys held by a live job that cannot make progress (running with an "
        "expired lease or dead worker, or stale queued): enqueue() with the key "
        "returns the stuck job instead of new work. Terminal jobs never hold a key.",
        action="recover the running holders (as expired_leases / dead_worker_jobs), which "
        "frees or unblocks the key; stale queued holders are report only",
        inspect=_inspect_blocked,
        fix=_fix_running("reconcile_blocked_unique_keys", "blocked_unique_keys", "unique key blocked"),
    ),
]
