"""Execution-log user-id reconcile checks.

``user_id`` (legacy integer) is the column ``user_id_str`` was derived from; whenever
``user_id`` is set, ``user_id_str`` must equal ``user_id`` as text. (For a user model
with non-integer keys ``user_id`` is NULL and only the string is kept, which is not a
finding.)

- **user_id_str_mismatch**: both set and different. Fix: ``user_id_str := user_id::text``,
  compare-and-set on the exact wrong value read, one audit row per log row (with the
  tenant of the log's job).
- **user_id_str_missing**: ``user_id`` set, ``user_id_str`` NULL (rows from before
  migration 0002 that 0003 / ``backfill_user_ids`` have not reached). Fix: the backfill's
  batched compare-and-set on ``user_id_str IS NULL``, one audit row per batch and tenant.
"""

from __future__ import annotations

from django.db import transaction

from taskengine.db.queries import sql
from taskengine.ops import audit, backfill
from taskengine.ops.reconcile.base import Applied, Check, Context, Finding, first_page, page


def _inspect_mismatch(ctx: Context, check: Check) -> Finding:
    total, rows = first_page(ctx, "reconcile_user_id_mismatch", count_column=3)
    return check.finding(total, [row[0] for row in rows])


def _fix_mismatch(ctx: Context) -> Applied:
    applied = Applied("user_id_str_mismatch")
    for rows in page(ctx, "reconcile_user_id_mismatch"):
        with transaction.atomic(using=ctx.database):
            for log_id, user_id, old, _ in rows:
                won = ctx.fetch("reconcile_fix_user_id_mismatch", id=log_id, old=old)
                if not won:
                    continue
                _, fixed, tenant = won[0]
                audit.record(
                    actor=ctx.actor,
                    action="reconcile.user_id_str_mismatch",
                    target_type=backfill.TABLE,
                    target_id=log_id,
                    tenant=tenant,
                    before={"user_id": user_id, "user_id_str": old},
                    after={"user_id": user_id, "user_id_str": fixed},
                    reason="user_id_str must equal user_id as text",
                    using=ctx.database,
                )
                applied.add(log_id)
        ctx.progress(f"user_id_str_mismatch: {applied.fixed} fixed")
    return applied


def _inspect_missing(ctx: Context, check: Check) -> Finding:
    connection = ctx.connection
    params = {"tenants": ctx.store.array(ctx.tenants), "limit": ctx.sample_size}
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "backfill_count_pending"), params)
        total = cursor.fetchone()[0]
        cursor.execute(sql(connection, "backfill_sample_missing"), params)
        sample = [row[0] for row in cursor.fetchall()]
    return check.finding(total, sample)


def _fix_missing(ctx: Context) -> Applied:
    applied = Applied("user_id_str_missing")
    result = backfill.run(
        ctx.database,
        batch_size=ctx.batch_size,
        tenants=ctx.tenants,
        actor=ctx.actor,
        progress=lambda done, total: ctx.progress(f"user_id_str_missing: {done}/{total} filled"),
    )
    for log_id in result.updated_ids:
        applied.add(log_id)
    return applied


CHECKS = [
    Check(
        name="user_id_str_mismatch",
        description="Execution logs whose user_id_str disagrees with user_id.",
        action="set user_id_str to user_id as text (the integer is the source the string was derived from)",
        inspect=_inspect_mismatch,
        fix=_fix_mismatch,
    ),
    Check(
        name="user_id_str_missing",
        description="Execution logs with a user_id but no user_id_str (not yet backfilled).",
        action="backfill user_id_str from user_id in batches (same as manage.py backfill_user_ids)",
        inspect=_inspect_missing,
        fix=_fix_missing,
    ),
]
