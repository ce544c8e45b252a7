"""A claim's rows become ClaimedJobs by column name (taskengine/db/rows.py): the
positions are worked out once per statement, whatever order the columns come in."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from taskengine.db.rows import ClaimColumns, claimed_job, claimed_jobs

AT = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
ROW = {
    "id": 7,
    "task_path": "app.tasks.send",
    "backend": "default",
    "queue": "mail",
    "priority": 5,
    "args": '[1, "two"]',
    "kwargs": '{"to": "x@example.com"}',
    "attempts": 2,
    "max_attempts": 3,
    "timeout_seconds": 9.5,
    "retry_backoff_seconds": None,
    "enqueued_at": AT,
    "started_at": "2026-12-03 07:00:01",  # as a raw SQLite cursor returns it
    "last_attempted_at": AT,
    "run_after": AT,
    "tenant": "acme",
    "acting_user_id": "42",
    "on_lease_expired": "retry",
    "unique_key": None,
}


def description(names):
    return [(name, None, None, None, None, None, None) for name in names]


@pytest.mark.parametrize("seed", range(5))
def test_the_columns_are_read_by_name_in_any_order(seed):
    names = [*ROW, "finished_state"]
    random.Random(seed).shuffle(names)
    row = tuple({**ROW, "finished_state": None}[name] for name in names)
    columns = ClaimColumns.of(description(names))
    job = claimed_job(row, columns)
    assert (job.id, job.task_path, job.queue, job.priority, job.attempt, job.tenant) == (
        7,
        "app.tasks.send",
        "mail",
        5,
        2,
        "acme",
    )
    assert job.args == [1, "two"] and job.kwargs == {"to": "x@example.com"}
    assert job.started_at == datetime(2026, 12, 3, 7, 0, 1, tzinfo=UTC)
    assert job.timeout_seconds == 9.5 and job.retry_backoff_seconds is None and job.decode_error is None
    assert columns.others == {"finished_state": names.index("finished_state")}


def test_arguments_that_do_not_decode_fail_the_attempt_not_the_batch():
    bad = {**ROW, "args": "[1, "}
    jobs = claimed_jobs(description(list(bad)), [tuple(bad.values()), tuple({**ROW, "id": 8}.values())])
    assert [j.id for j in jobs] == [7, 8]  # claim order: same priority and due time, by id
    broken = next(j for j in jobs if j.id == 7)
    assert broken.args == [] and broken.kwargs == {} and "do not decode" in broken.decode_error


def test_a_claim_missing_a_field_is_refused():
    names = [name for name in ROW if name != "queue"]
    with pytest.raises(ValueError, match="queue"):
        ClaimColumns.of(description(names))
