"""Execution-log user ids: the batched, resumable ``user_id`` → ``user_id_str`` backfill
and the backfill report.

``task_execution_logs`` carries the acting user twice: the legacy integer ``user_id``
and the canonical text ``user_id_str`` (migration 0002 added it to an existing table;
0003 fills it). New attempt rows get both from the claim SQL (only the string when the
key is not an integer). This module fills old rows on big tables and reports progress.

Invariants:
- Bounded batches in primary-key order, one short transaction per batch (the batch's
  audit rows, one per tenant of the rows written, commit with it). Nothing holds a lock across batches.
- Every write is compare-and-set on ``user_id_str IS NULL``: a row is written at most
  once however many backfills run at once or how often one is interrupted and rerun.
  The counts returned are the rows *this* run wrote (the UPDATE's RETURNING rows).
- Failure: an error or a kill loses at most the batch in flight (rolled back); a rerun
  starts from the first row still missing and finishes the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db import store_for
from taskengine.db.queries import sql
from taskengine.ops import audit

TABLE = "task_execution_logs"
SYSTEM_ACTOR = "system:backfill"
DEFAULT_BATCH_SIZE = 1000

# progress(done, total): called after every batch.
ProgressFn = Callable[[int, int], None]


@dataclass(slots=True)
class BackfillResult:
    pending_at_start: int
    updated: int = 0  # rows this run wrote (0 on a dry run)
    would_update: int = 0  # dry run: rows a real run would write now
    batches: int = 0
    complete: bool = False  # no row is left missing (False when stopped by max_batches)
    updated_ids: list[int] = field(default_factory=list, repr=False)


@dataclass(slots=True)
class TableReport:
    table: str
    total: int
    filled: int
    missing: int
    mismatched: int
    without_user: int
    sample_missing_ids: list[int]
    sample_mismatched_ids: list[int]

    @property
    def clean(self) -> bool:
        return self.missing == 0 and self.mismatched == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


def _fetch(connection: BaseDatabaseWrapper, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, name), params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def count_pending(database: str = "default", *, tenants: list[str] | None = None) -> int:
    connection = connections[database]
    pending: int = _fetch(connection, "backfill_count_pending", {"tenants": store_for(connection).array(tenants)})[0][0]
    return pending


def fill_batch(database: str, ids: list[int], *, actor: Any = SYSTEM_ACTOR) -> list[int]:
    """Write user_id_str for those of ``ids`` still missing it, in one transaction with
    one audit row per tenant of the rows written (an audit row carries its target's
    tenant, so tenant staff see the fixes of their jobs). Returns the ids written."""
    connection = connections[database]
    by_tenant: dict[str | None, list[int]] = {}
    with transaction.atomic(using=database):
        for log_id, tenant in _fetch(connection, "backfill_fill_batch", {"ids": store_for(connection).array(ids)}):
            by_tenant.setdefault(tenant, []).append(log_id)
        # Tenants in order of their first row, so the trail reads in id order.
        for tenant, written in sorted(by_tenant.items(), key=lambda item: min(item[1])):
            audit.record(
                actor=actor,
                action="backfill.user_id_str",
                target_type=TABLE,
                target_id=f"{min(written)}-{max(written)}",
                tenant=tenant,
                after={"updated": len(written)},
                reason="user_id_str := user_id::text where missing",
                using=database,
            )
    return sorted(log_id for written in by_tenant.values() for log_id in written)


def run(
    database: str = "default",
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    max_batches: int | None = None,
    pause: float = 0.0,
    tenants: list[str] | None = None,
    actor: Any = SYSTEM_ACTOR,
    progress: ProgressFn | None = None,
) -> BackfillResult:
    """Fill ``user_id_str`` in batches of ``batch_size`` rows by primary key.

    ``dry_run`` walks the same batches and counts without writing. ``max_batches``
    stops early (the next run resumes); ``pause`` sleeps between batches to spare a
    busy primary.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    connection = connections[database]
    result = BackfillResult(pending_at_start=count_pending(database, tenants=tenants))
    after_id = 0
    while max_batches is None or result.batches < max_batches:
        ids = [
            row[0]
            for row in _fetch(
                connection,
                "backfill_next_batch",
                {"after_id": after_id, "limit": batch_size, "tenants": store_for(connection).array(tenants)},
            )
        ]
        if not ids:
            result.complete = True
            break
        if dry_run:
            result.would_update += len(ids)
        else:
            written = fill_batch(database, ids, actor=actor)
            result.updated += len(written)
            result.updated_ids.extend(written)
        result.batches += 1
        after_id = ids[-1]
        if progress is not None:
            progress(result.would_update if dry_run else result.updated, result.pending_at_start)
        if pause:
            time.sleep(pause)
    return result


def report(database: str = "default", *, tenants: list[str] | None = None, sample_size: int = 10) -> list[TableReport]:
    """Per table: total rows, filled, missing, mismatched (user_id_str differs from
    user_id as text), rows with no user at all, and samples of offending ids."""
    connection = connections[database]
    params = {"tenants": store_for(connection).array(tenants), "limit": sample_size}
    total, filled, missing, mismatched, without_user = _fetch(connection, "backfill_report_counts", params)[0]
    return [
        TableReport(
            table=TABLE,
            total=total,
            filled=filled or 0,
            missing=missing or 0,
            mismatched=mismatched or 0,
            without_user=without_user or 0,
            sample_missing_ids=[r[0] for r in _fetch(connection, "backfill_sample_missing", params)],
            sample_mismatched_ids=[r[0] for r in _fetch(connection, "backfill_sample_mismatched", params)],
        )
    ]


CSV_COLUMNS = [
    "table",
    "total",
    "filled",
    "missing",
    "mismatched",
    "without_user",
    "sample_missing_ids",
    "sample_mismatched_ids",
]


def csv_rows(reports: list[TableReport]) -> list[list[Any]]:
    """The report as CSV rows (header first); id samples are space-separated."""
    rows: list[list[Any]] = [CSV_COLUMNS]
    for r in reports:
        rows.append(
            [
                r.table,
                r.total,
                r.filled,
                r.missing,
                r.mismatched,
                r.without_user,
                " ".join(map(str, r.sample_missing_ids)),
                " ".join(map(str, r.sample_mismatched_ids)),
            ]
        )
    return rows
