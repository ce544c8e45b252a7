"""The store contract (taskengine/db/base.py's Store), against the store of whichever
database the run uses: CI runs the suite on SQLite and on PostgreSQL, so every test
here runs against both stores. Every operation the interface names, every guard
(stale attempt, other worker, lost lease, paused queue, unique key, not yet due) and
every fenced write (finish, release, extend, recover under a leader lease) is called
through ``store_for(connection)`` and checked in the rows it left."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from taskengine.db import store_for
from taskengine.db.base import RELEASED_CANCEL_ERROR_CLASS, Store
from taskengine.db.rows import PrunedBatch, fetch_as, rows_as, to_datetime
from taskengine.jobs import ClaimedJob, NewJob, Outcome
from taskengine.leader.election import LeaderLease, lease_params
from taskengine.models import ExecutionLog, Job, Queue
from taskengine.states import AttemptOutcome
from taskengine.testing.clock import TIMESTAMP_COLUMNS
from tests.conftest import database_vendor

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 30.0


@pytest.fixture
def store() -> Store:
    return store_for(connection)


def new_job(queue: str = "default", **fields) -> NewJob:
    return NewJob(task_path="tests.tasks.add", queue=queue, args=[1, 2], kwargs={"k": "v"}, **fields)


def insert(store: Store, *jobs: NewJob) -> list[int]:
    rows = store.insert_rows(connection, list(jobs) or [new_job()])
    return [row.id for row in rows if row is not None]


def claim(store: Store, worker: str = "w1", queues=("default",), limit: int = 10, advisory: bool = False):
    return store.claim_jobs(
        connection, worker_id=worker, queues=list(queues), limit=limit, lease_seconds=LEASE, advisory=advisory
    )


def outcome(job: ClaimedJob, state: str = "succeeded", attempt: int | None = None, **extra) -> Outcome:
    kind = {"succeeded": AttemptOutcome.SUCCEEDED, "failed": AttemptOutcome.FAILED}.get(state, AttemptOutcome.FAILED)
    return Outcome(job.id, job.attempt if attempt is None else attempt, state, kind, **extra)


def log_of(job_id: int, attempt: int = 1) -> ExecutionLog:
    return ExecutionLog.objects.get(job_id=job_id, attempt=attempt)


# --- the interface and its shared adapters --------------------------------------------


def test_the_connection_gets_its_vendors_store_once_and_it_implements_every_operation(store):
    assert store.vendor == connection.vendor == database_vendor()
    assert store_for(connection) is store
    abstract = {name for name, member in inspect.getmembers(Store) if getattr(member, "__isabstractmethod__", False)}
    assert {"insert_rows", "claim_jobs", "extend_leases", "finish_jobs", "finish_and_claim", "release_jobs"} <= abstract
    assert not type(store).__abstractmethods__


def test_the_array_adapter_binds_a_list_the_statements_read_and_none_as_no_filter(store):
    assert store.array(None) is None
    first, second, third = insert(store, new_job(), new_job(), new_job())
    params = {"job_ids": store.array([first, third]), "limit": 10, "dead_after": 60.0, **lease_params(None)}
    Job.objects.update(state="running", locked_by="w-gone", attempts=1, lease_expires_at=Now() - timedelta(seconds=5))
    recovered = store.recover(connection, params)
    assert sorted(row.id for row in recovered) == [first, third]
    assert Job.objects.get(pk=second).state == "running"


def test_the_datetime_adapter_binds_a_value_equal_to_what_the_orm_stored(store):
    when = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)  # whole seconds: the format's edge case
    [job_id] = insert(store)
    Job.objects.filter(pk=job_id).update(run_after=when)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM taskengine_job WHERE run_after = %s", [store.datetime_param(connection, when)])
        assert cursor.fetchall() == [(job_id,)]
    assert store.datetime_param(connection, None) is None


def test_fetched_datetimes_become_aware_utc():
    assert to_datetime("2030-01-02 03:04:05.678") == datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert to_datetime(None) is None
    with pytest.raises(ValueError, match="not a datetime"):
        to_datetime("soon")


@dataclass
class Pair:
    a: int
    b: str


def test_rows_map_to_dataclasses_by_column_name_and_an_unknown_column_is_an_error():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'x' AS b, 1 AS a")
        assert fetch_as(Pair, cursor) == [Pair(a=1, b="x")]
        cursor.execute("SELECT 1 AS a, 'x' AS b, 2 AS c")
        with pytest.raises(TypeError, match=r"Pair has no field for the columns \['c'\]"):
            rows_as(Pair, cursor.description, cursor.fetchall())


def test_db_now_is_the_database_clock_aware_utc(store):
    now = store.db_now(connection)
    assert now.tzinfo is not None
    assert abs((now - timezone.now()).total_seconds()) < 60


# --- enqueue ---------------------------------------------------------------------------


def test_insert_returns_each_job_in_order_with_its_enqueued_at(store):
    for count in (1, 3):
        rows = store.insert_rows(connection, [new_job(priority=n) for n in range(count)])
        assert [row.created for row in rows] == [True] * count
        stored = {j.pk: j for j in Job.objects.filter(pk__in=[r.id for r in rows])}
        assert [stored[r.id].priority for r in rows] == list(range(count))
        assert all(r.enqueued_at == stored[r.id].enqueued_at for r in rows)


def test_a_large_batch_without_unique_keys_is_inserted_whole(store):
    from taskengine.db.postgresql.store import BULK_INSERT_MIN  # the COPY path's threshold

    rows = store.insert_rows(connection, [new_job() for _ in range(BULK_INSERT_MIN)])
    assert len({row.id for row in rows}) == BULK_INSERT_MIN == Job.objects.count()
    assert Job.objects.filter(state="queued", args=[1, 2], kwargs={"k": "v"}).count() == BULK_INSERT_MIN


def test_a_unique_key_held_by_a_live_job_inserts_nothing(store):
    [held] = insert(store, new_job(unique_key="k1"))
    assert store.insert_rows(connection, [new_job(unique_key="k1")]) == [None]
    first, second, other = store.insert_rows(
        connection, [new_job(unique_key="k2"), new_job(unique_key="k2"), new_job(unique_key="k3")]
    )
    assert first is not None and second is None and other is not None
    assert Job.objects.filter(unique_key="k1").values_list("pk", flat=True).get() == held
    assert Job.objects.count() == 3


def test_a_finished_jobs_unique_key_is_free_again(store):
    [done] = insert(store, new_job(unique_key="k"))
    Job.objects.filter(pk=done).update(state="succeeded", finished_at=Now())
    [again] = store.insert_rows(connection, [new_job(unique_key="k")])
    assert again is not None and again.id != done


# --- claim -----------------------------------------------------------------------------


@pytest.mark.parametrize("advisory", [False, True])
def test_a_claim_leases_due_jobs_in_priority_order_and_maps_every_column(store, advisory):
    low, high, mid = insert(store, new_job(priority=-1), new_job(priority=5, tenant="t1"), new_job())
    before = store.db_now(connection)
    jobs = claim(store, worker="w-a", limit=2, advisory=advisory)
    assert [j.id for j in jobs] == [high, mid]
    job = jobs[0]
    assert (job.task_path, job.queue, job.priority, job.args, job.kwargs) == (
        "tests.tasks.add",
        "default",
        5,
        [1, 2],
        {"k": "v"},
    )
    assert (job.attempt, job.max_attempts, job.tenant, job.on_lease_expired, job.decode_error) == (
        1,
        3,
        "t1",
        "retry",
        None,
    )
    for instant in (job.enqueued_at, job.started_at, job.last_attempted_at, job.run_after):
        assert instant.tzinfo is not None
    assert job.started_at >= before - timedelta(seconds=1)
    row = Job.objects.get(pk=high)
    assert (row.state, row.locked_by, row.attempts) == ("running", "w-a", 1)
    assert (row.lease_expires_at - before).total_seconds() == pytest.approx(LEASE, abs=3)
    assert (log_of(high).worker_id, log_of(high).outcome) == ("w-a", None)
    assert Job.objects.get(pk=low).state == "queued"


def test_a_claim_never_takes_a_running_a_not_yet_due_or_another_queues_job(store):
    insert(store, new_job())
    assert len(claim(store, worker="a")) == 1
    insert(store, new_job(run_after=timezone.now() + timedelta(hours=1)), new_job(queue="other"))
    assert claim(store, worker="b") == []
    assert [j.queue for j in claim(store, worker="b", queues=("other",))] == ["other"]


@pytest.mark.parametrize("advisory", [False, True])
def test_a_claim_never_returns_a_paused_queues_job(store, advisory):
    insert(store, new_job(queue="held"), new_job(queue="open"))
    Queue.objects.create(name="held", paused=True, paused_at=timezone.now())
    assert [j.queue for j in claim(store, queues=("held", "open"), advisory=advisory)] == ["open"]
    Queue.objects.filter(name="held").update(paused=False, paused_at=None)
    assert [j.queue for j in claim(store, queues=("held",), advisory=advisory)] == ["held"]


def test_a_claimed_row_whose_arguments_do_not_decode_still_comes_back(store):
    [job_id] = insert(store)
    big = "[" + "9" * 5000 + "]"  # past Python's integer digit limit
    cast = "::jsonb" if database_vendor() == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE taskengine_job SET args = %s{cast} WHERE id = %s", [big, job_id])
    [job] = claim(store)
    assert job.id == job_id and (job.args, job.kwargs) == ([], {})
    assert job.decode_error and "do not decode" in job.decode_error


# --- heartbeat -------------------------------------------------------------------------


def test_extend_leases_keeps_held_leases_and_reports_cancel_requests(store):
    first, second = insert(store, new_job(), new_job())
    jobs = {j.id: j for j in claim(store)}
    Job.objects.filter(pk=second).update(cancel_requested_at=Now())
    kept = store.extend_leases(connection, worker_id="w1", held=[(first, 1), (second, 1)], lease_seconds=LEASE * 10)
    assert kept == {first: False, second: True}
    assert (Job.objects.get(pk=second).lease_expires_at - store.db_now(connection)).total_seconds() > LEASE * 5
    assert set(jobs) == {first, second}


def test_the_heartbeat_of_a_lost_lease_returns_it_lost_and_writes_nothing(store):
    [job_id] = insert(store)
    claim(store)
    lease = Job.objects.get(pk=job_id).lease_expires_at
    assert store.extend_leases(connection, worker_id="w1", held=[(job_id, 2)], lease_seconds=LEASE * 10) == {}
    assert store.extend_leases(connection, worker_id="w2", held=[(job_id, 1)], lease_seconds=LEASE * 10) == {}
    assert Job.objects.get(pk=job_id).lease_expires_at == lease
    # Recovered meanwhile: the job is queued again, nobody holds it.
    Job.objects.filter(pk=job_id).update(state="queued", locked_by=None, lease_expires_at=None)
    assert store.extend_leases(connection, worker_id="w1", held=[(job_id, 1)], lease_seconds=LEASE * 10) == {}
    assert Job.objects.get(pk=job_id).lease_expires_at is None


# --- finish ----------------------------------------------------------------------------


def test_finish_writes_the_outcome_and_closes_the_attempt(store):
    [job_id] = insert(store)
    [job] = claim(store)
    won = store.finish_jobs(connection, worker_id="w1", outcomes=[outcome(job, return_value="3")])
    row = Job.objects.get(pk=job_id)
    assert won == {job_id: ("succeeded", row.finished_at)}
    assert (row.state, row.return_value, row.locked_by) == ("succeeded", 3, None)
    assert (log_of(job_id).outcome, log_of(job_id).finished_at is not None) == ("succeeded", True)


def test_finish_with_a_stale_attempt_token_or_another_workers_id_writes_nothing(store):
    [job_id] = insert(store)
    [job] = claim(store)
    stale = outcome(job, attempt=job.attempt + 1)
    assert store.finish_jobs(connection, worker_id="w1", outcomes=[stale]) == {}
    assert store.finish_jobs(connection, worker_id="w2", outcomes=[outcome(job)]) == {}
    row = Job.objects.get(pk=job_id)
    assert (row.state, row.locked_by, row.finished_at) == ("running", "w1", None)
    assert (log_of(job_id).outcome, log_of(job_id).finished_at) == (None, None)


def test_a_retry_requeues_later_and_a_requested_cancel_wins_over_it(store):
    first, second = insert(store, new_job(), new_job())
    jobs = {j.id: j for j in claim(store)}
    Job.objects.filter(pk=second).update(cancel_requested_at=Now())
    retries = [outcome(jobs[i], "queued", retry_delay=60.0, error_class="E") for i in (first, second)]
    won = store.finish_jobs(connection, worker_id="w1", outcomes=retries)
    assert {k: v[0] for k, v in won.items()} == {first: "queued", second: "cancelled"}
    assert (Job.objects.get(pk=first).run_after - store.db_now(connection)).total_seconds() > 30
    assert (log_of(first).outcome, log_of(second).outcome) == ("failed", "cancelled")


@pytest.mark.parametrize("advisory", [False, True])
def test_finish_and_claim_commits_the_finishes_that_won_and_the_new_claims(store, advisory):
    first, second = insert(store, new_job(priority=1), new_job(priority=1))
    jobs = claim(store, limit=2)
    [third] = insert(store)
    stale = outcome(jobs[1], attempt=9)
    won, claimed = store.finish_and_claim(
        connection,
        worker_id="w1",
        outcomes=[outcome(jobs[0]), stale],
        queues=["default"],
        limit=5,
        lease_seconds=LEASE,
        advisory=advisory,
    )
    assert set(won) == {jobs[0].id} and won[jobs[0].id][0] == "succeeded"
    assert won[jobs[0].id][1] is not None
    assert [j.id for j in claimed] == [third] and claimed[0].attempt == 1
    assert Job.objects.get(pk=jobs[1].id).state == "running"
    assert {first, second} == {j.id for j in jobs}


def test_finish_and_claim_with_nothing_to_claim_or_nothing_finished(store):
    [job_id] = insert(store)
    [job] = claim(store)
    won, claimed = store.finish_and_claim(
        connection,
        worker_id="w1",
        outcomes=[outcome(job)],
        queues=["default"],
        limit=0,
        lease_seconds=LEASE,
        advisory=False,
    )
    assert set(won) == {job_id} and claimed == []
    [other] = insert(store)
    won, claimed = store.finish_and_claim(
        connection, worker_id="w1", outcomes=[], queues=["default"], limit=3, lease_seconds=LEASE, advisory=False
    )
    assert won == {} and [j.id for j in claimed] == [other]


def test_finish_and_claim_writes_neither_part_when_it_fails(store):
    [job_id] = insert(store)
    [job] = claim(store)
    insert(store)
    with pytest.raises(RuntimeError, match="fails after the call"):
        with transaction.atomic():
            store.finish_and_claim(
                connection,
                worker_id="w1",
                outcomes=[outcome(job)],
                queues=["default"],
                limit=1,
                lease_seconds=LEASE,
                advisory=False,
            )
            raise RuntimeError("the caller's transaction fails after the call")
    assert Job.objects.get(pk=job_id).state == "running"
    assert Job.objects.filter(state="queued").count() == 1


# --- release ---------------------------------------------------------------------------


def test_release_hands_running_jobs_back_and_a_requested_cancel_ends_cancelled(store):
    first, second = insert(store, new_job(), new_job())
    claim(store)
    Job.objects.filter(pk=second).update(cancel_requested_at=Now())
    written = store.release_jobs(connection, worker_id="w1", held=[(first, 1), (second, 1)])
    assert {k: v[0] for k, v in written.items()} == {first: "queued", second: "cancelled"}
    assert written[first][1] is None and written[second][1] is not None
    assert (Job.objects.get(pk=first).state, Job.objects.get(pk=first).locked_by) == ("queued", None)
    assert log_of(first).outcome == "released"
    assert (log_of(second).outcome, log_of(second).error_class) == ("cancelled", RELEASED_CANCEL_ERROR_CLASS)


def test_release_of_a_lost_lease_writes_nothing(store):
    [job_id] = insert(store)
    claim(store)
    assert store.release_jobs(connection, worker_id="w1", held=[(job_id, 2)]) == {}
    assert store.release_jobs(connection, worker_id="w2", held=[(job_id, 1)]) == {}
    assert Job.objects.get(pk=job_id).state == "running"
    assert log_of(job_id).outcome is None


# --- recovery --------------------------------------------------------------------------


def recover(store: Store, lease: LeaderLease | None = None):
    params = {"job_ids": None, "limit": 100, "dead_after": 3600.0, **lease_params(lease)}
    return store.recover(connection, params)


def test_recover_requeues_an_expired_lease_fails_a_spent_one_and_leaves_a_live_one(store):
    again, spent, live = insert(store, new_job(), new_job(max_attempts=1), new_job())
    claim(store, worker="w-gone")
    Job.objects.filter(pk__in=[again, spent]).update(lease_expires_at=Now() - timedelta(seconds=5))
    rows = {row.id: row for row in recover(store)}
    assert set(rows) == {again, spent}
    assert (rows[again].state, rows[again].attempts, rows[again].locked_by) == ("queued", 1, "w-gone")
    assert (rows[spent].state, rows[spent].queue, rows[spent].task_path) == ("failed", "default", "tests.tasks.add")
    assert rows[again].worker_dead is False
    assert Job.objects.get(pk=live).state == "running"
    assert log_of(again).outcome == "lost"
    assert recover(store) == []


def test_recover_under_a_leader_lease_that_is_not_live_writes_nothing(store):
    [job_id] = insert(store)
    claim(store)
    Job.objects.filter(pk=job_id).update(lease_expires_at=Now() - timedelta(seconds=5))
    assert recover(store, LeaderLease("maintenance", "not-the-leader", 7)) == []
    assert Job.objects.get(pk=job_id).state == "running"


def finished(store: Store, state: str, days_ago: float, count: int = 1) -> list[int]:
    """``count`` jobs claimed once (one attempt row each), then ended ``state`` days ago."""
    ids = insert(store, *[new_job() for _ in range(count)])
    claim(store, limit=count)
    Job.objects.filter(pk__in=ids).update(
        state=state, finished_at=Now() - timedelta(days=days_ago), locked_by=None, lease_expires_at=None
    )
    return ids


def prune_batch(
    store: Store, state: str = "succeeded", days: float = 7, batch_size: int = 100, after=None
) -> PrunedBatch:
    after = after or datetime(1, 1, 1, tzinfo=UTC)
    params = {"state": state, "age_seconds": days * 86400, "batch_size": batch_size, "after": after}
    with transaction.atomic():
        return store.prune_terminal(connection, params)


def prune(store: Store, state: str = "succeeded", days: float = 7, batch_size: int = 100, after=None) -> int:
    return prune_batch(store, state, days, batch_size, after).deleted


def prune_pass(store: Store, batch_size: int, state: str = "succeeded", days: float = 7) -> int:
    """One retention pass as RetentionSweep makes it: each batch resumes at the latest
    finished_at the previous one deleted; a short batch ends the pass."""
    total, after = 0, None
    for _ in range(100):
        batch = prune_batch(store, state, days, batch_size, after)
        total += batch.deleted
        if batch.deleted < batch_size or batch.last_finished_at is None:
            return total
        after = batch.last_finished_at
    raise AssertionError("the pass did not end")


def finish_at(store: Store, job_id: int, when: datetime) -> None:
    """End ``job_id`` at ``when`` the way the engine's SQL writes finished_at: on SQLite
    through strftime's %f (text with 3 decimals: every instant of one millisecond is
    stored alike), on PostgreSQL as timestamptz (microseconds)."""
    with connection.cursor() as cursor:
        if store.native_datetimes:
            cursor.execute("UPDATE taskengine_job SET finished_at = %s WHERE id = %s", [when, job_id])
        else:
            text = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            cursor.execute(
                "UPDATE taskengine_job SET finished_at = strftime('%%Y-%%m-%%d %%H:%%M:%%f', %s) WHERE id = %s",
                [text, job_id],
            )


def test_prune_terminal_deletes_old_jobs_of_one_state_with_their_attempts_oldest_first(store):
    oldest = finished(store, "succeeded", 30)
    old = finished(store, "succeeded", 10, count=2)
    young = finished(store, "succeeded", 1)
    failed = finished(store, "failed", 30)
    [queued] = insert(store)
    assert prune(store, batch_size=2) == 2  # a bounded batch, the oldest first
    assert not Job.objects.filter(pk__in=oldest).exists()
    assert Job.objects.filter(pk__in=old).count() == 1
    assert prune(store) == 1
    assert prune(store) == 0
    assert set(Job.objects.values_list("id", flat=True)) == {*young, *failed, queued}
    assert not ExecutionLog.objects.filter(job_id__in=oldest + old).exists()
    assert ExecutionLog.objects.filter(job_id__in=young + failed).count() == 2  # other jobs' attempts stay


def test_prune_terminal_resumes_where_the_last_batch_stopped(store):
    oldest, middle, newest = (finished(store, "succeeded", days) for days in (30, 20, 10))
    params = {"state": "succeeded", "age_seconds": 7 * 86400, "batch_size": 1}
    with transaction.atomic():
        first = store.prune_terminal(connection, {**params, "after": datetime(1, 1, 1, tzinfo=UTC)})
    assert first.deleted == 1 and not Job.objects.filter(pk__in=oldest).exists()
    stopped = Job.objects.get(pk=middle[0]).finished_at
    assert first.last_finished_at is not None and first.last_finished_at < stopped
    # Resuming past the middle job passes over it; the last batch of a pass is short.
    assert prune(store, after=stopped + timedelta(seconds=1)) == 1
    assert Job.objects.filter(pk__in=middle).exists() and not Job.objects.filter(pk__in=newest).exists()
    assert prune(store, after=first.last_finished_at) == 1


def test_prune_terminal_resumes_at_a_job_that_finished_in_the_same_instant(store):
    """Two jobs finished by one statement share their finished_at: resuming at the first
    one's must still find the second (on SQLite, stored as text with fewer decimals than
    the bound would have)."""
    ids = finished(store, "succeeded", 10, count=2)
    params = {"state": "succeeded", "age_seconds": 7 * 86400, "batch_size": 1}
    with transaction.atomic():
        first = store.prune_terminal(connection, {**params, "after": datetime(1, 1, 1, tzinfo=UTC)})
    assert first.deleted == 1 and first.last_finished_at is not None
    assert prune(store, after=first.last_finished_at) == 1
    assert not Job.objects.filter(pk__in=ids).exists()


def test_a_pass_whose_batches_split_one_millisecond_of_finished_jobs_prunes_all_of_them(store):
    """Five jobs finished in one millisecond, four written as the engine's SQL writes
    finished_at (0.1 ms apart; on SQLite all stored as the same 3-decimal text) and one
    by the ORM (on SQLite 6 decimals), with a job in the millisecond before and one in
    the millisecond after; batches of 2 resume inside the group twice. Every one of them
    is pruned in one pass, and nothing finished after the cutoff is."""
    group_ms = datetime(2001, 2, 3, 4, 5, 6, 27000, tzinfo=UTC)
    before, *group, after = finished(store, "succeeded", 10, count=7)
    finish_at(store, before, group_ms - timedelta(microseconds=600))
    for n, job_id in enumerate(group[:4]):
        finish_at(store, job_id, group_ms + timedelta(microseconds=100 * n))
    Job.objects.filter(pk=group[4]).update(finished_at=group_ms + timedelta(microseconds=450))
    finish_at(store, after, group_ms + timedelta(milliseconds=1))
    young = finished(store, "succeeded", 6.9) + finished(store, "succeeded", 1, count=2)
    stored = {
        to_datetime(value) for value in Job.objects.filter(pk__in=group[:4]).values_list("finished_at", flat=True)
    }
    assert len(stored) == (4 if store.native_datetimes else 1)  # SQLite: one text for the four
    assert all(when.replace(microsecond=when.microsecond // 1000 * 1000) == group_ms for when in stored)

    assert prune_pass(store, batch_size=2) == 7
    assert set(Job.objects.values_list("id", flat=True)) == set(young)
    assert not ExecutionLog.objects.filter(job_id__in=[before, *group, after]).exists()
    assert ExecutionLog.objects.filter(job_id__in=young).count() == 3


@pytest.mark.postgres
def test_prune_terminal_passes_over_a_job_another_transaction_holds(store):
    """An operator requeueing an old job holds its row: the prune skips it (SKIP LOCKED)
    and deletes the rest; once requeued, the job is no longer terminal and stays."""
    held, free = finished(store, "succeeded", 30), finished(store, "succeeded", 30)
    s = connection.settings_dict
    with psycopg.connect(
        host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"] or "postgres", dbname=s["NAME"]
    ) as other:
        other.execute("SELECT id FROM taskengine_job WHERE id = %s FOR UPDATE", [held[0]])
        assert prune(store) == 1
        other.execute("UPDATE taskengine_job SET state = 'queued', finished_at = NULL WHERE id = %s", [held[0]])
    assert prune(store) == 0
    assert Job.objects.get(pk=held[0]).state == "queued"
    assert not Job.objects.filter(pk__in=free).exists()


# --- the other modules' operations -----------------------------------------------------


def test_notify_queue_runs_inside_the_callers_transaction(store):
    with transaction.atomic():
        store.notify_queue(connection, "taskengine_jobs", "default")


def test_queue_depth_is_the_count_below_the_cap_and_never_less_at_it(store):
    with connection.cursor() as cursor:
        assert store.queue_depth(connection, cursor, "default", 3, 10) == 3
        insert(store, new_job(), new_job())
        assert store.queue_depth(connection, cursor, "default", 2, 2) >= 2


@pytest.mark.parametrize("seconds", [10.0, 2.5])
def test_clock_shift_moves_stored_instants_into_the_past(store, seconds):
    [job_id] = insert(store, new_job(run_after=timezone.now() + timedelta(seconds=1)))
    before = Job.objects.get(pk=job_id).run_after
    with connection.cursor() as cursor:
        cursor.execute(*store.clock_shift("taskengine_job", TIMESTAMP_COLUMNS["taskengine_job"], seconds))
    moved = before - Job.objects.get(pk=job_id).run_after
    assert moved.total_seconds() == pytest.approx(seconds, abs=0.001)
    assert [j.id for j in claim(store)] == [job_id]


def test_a_clock_step_covers_the_wait(store):
    for wait in (0.0004, 1.0, 2.3):
        assert store.clock_step(wait) >= wait
