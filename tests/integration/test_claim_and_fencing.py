"""Leased claiming and fenced completion, at the store level."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from taskengine import store
from taskengine.db import store_for
from taskengine.db.queries import sql
from taskengine.jobs import Outcome
from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job
from taskengine.states import AttemptOutcome
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def claim(worker="w1", limit=10, lease=30.0, queues=("default",), advisory=False):
    return store.claim_jobs(
        connection, worker_id=worker, queues=list(queues), limit=limit, lease_seconds=lease, advisory=advisory
    )


def succeed(job, worker="w1"):
    return store.finish_jobs(
        connection,
        worker_id=worker,
        outcomes=[Outcome(job.id, job.attempt, "succeeded", AttemptOutcome.SUCCEEDED, return_value="1")],
    )


def expire_lease(job_id):
    Job.objects.filter(pk=job_id).update(lease_expires_at=Now() - timedelta(seconds=1))


db_now = store.db_now


def test_claim_takes_highest_priority_then_oldest_run_after_then_id():
    low = tasks.add.using(priority=-5).enqueue(1, 1)
    first_normal = tasks.add.enqueue(1, 2)
    second_normal = tasks.add.enqueue(1, 3)
    high = tasks.add.using(priority=10).enqueue(1, 4)
    claimed = claim(limit=3)
    assert [j.id for j in claimed] == [int(high.id), int(first_normal.id), int(second_normal.id)]
    assert Job.objects.get(pk=low.id).state == "queued"


def test_claim_skips_jobs_not_yet_due_and_other_queues():
    tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    assert claim() == []
    assert len(claim(queues=("demo",))) == 1


def test_claim_sets_owner_fencing_token_and_lease_from_the_database_clock():
    result = tasks.add.enqueue(1, 2)
    before = db_now()
    [job] = claim(worker="w-alpha", lease=42)
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.locked_by, row.attempts, job.attempt) == ("running", "w-alpha", 1, 1)
    lease = (row.lease_expires_at - before).total_seconds()
    assert 41 <= lease <= 44
    log = ExecutionLog.objects.get(job_id=result.id)
    assert (log.attempt, log.worker_id, log.outcome) == (1, "w-alpha", None)


def test_a_claimed_job_is_not_claimed_again_while_leased():
    tasks.add.enqueue(1, 2)
    assert len(claim(worker="a")) == 1
    assert claim(worker="b") == []


def test_claim_limit_is_respected():
    tasks.add.enqueue_many([(i, i) for i in range(25)])
    assert len(claim(limit=10)) == 10
    assert len(claim(limit=100)) == 15


def test_heartbeat_extends_live_leases_and_reports_lost_ones():
    tasks.add.enqueue_many([(1, 1), (2, 2)])
    kept_job, lost_job = claim(lease=5)
    expire_lease(lost_job.id)
    before = Job.objects.get(pk=kept_job.id).lease_expires_at
    kept = store.extend_leases(connection, worker_id="w1", held=[(kept_job.id, 1), (lost_job.id, 1)], lease_seconds=60)
    assert kept == {kept_job.id: False}
    assert Job.objects.get(pk=kept_job.id).lease_expires_at > before + timedelta(seconds=50)


def test_heartbeat_reports_a_requested_cancellation():
    tasks.add.enqueue(1, 1)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(cancel_requested_at=Now())
    assert store.extend_leases(connection, worker_id="w1", held=[(job.id, 1)], lease_seconds=30) == {job.id: True}


def test_finish_by_the_lease_holder_succeeds_and_closes_the_attempt():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    won = succeed(job)
    assert won[job.id][0] == "succeeded"
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.return_value, row.locked_by, row.lease_expires_at) == ("succeeded", 1, None, None)
    assert row.finished_at is not None
    log = ExecutionLog.objects.get(job_id=result.id)
    assert log.outcome == "succeeded" and log.finished_at is not None


def test_a_worker_whose_lease_expired_cannot_finish_the_job():
    result = tasks.add.enqueue(1, 2)
    [job] = claim(worker="stale")
    expire_lease(job.id)
    assert succeed(job, worker="stale") == {}
    assert Job.objects.get(pk=result.id).state == "running"


def test_stale_worker_cannot_complete_a_recovered_and_reclaimed_job():
    result = tasks.add.enqueue(1, 2)
    [stale] = claim(worker="stale")
    expire_lease(stale.id)
    [recovered] = recovery.run_once("default")
    assert (recovered.id, recovered.state) == (stale.id, "queued")
    [fresh] = claim(worker="fresh")
    assert fresh.attempt == 2
    assert succeed(stale, worker="stale") == {}  # late, under the old token
    assert store.extend_leases(connection, worker_id="stale", held=[(stale.id, 1)], lease_seconds=30) == {}
    assert succeed(fresh, worker="fresh")[fresh.id][0] == "succeeded"
    logs = list(ExecutionLog.objects.filter(job_id=result.id).values_list("attempt", "worker_id", "outcome"))
    assert logs == [(1, "stale", "lost"), (2, "fresh", "succeeded")]


def test_another_worker_with_the_same_attempt_number_cannot_finish():
    tasks.add.enqueue(1, 2)
    [job] = claim(worker="owner")
    assert succeed(job, worker="intruder") == {}


def test_retry_outcome_requeues_with_backoff_on_the_database_clock():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    before = db_now()
    won = store.finish_jobs(
        connection,
        worker_id="w1",
        outcomes=[
            Outcome(
                job.id,
                1,
                "queued",
                AttemptOutcome.RETRY,
                retry_delay=30,
                error_class="builtins.ValueError",
                error_message="x",
                traceback="tb",
            )
        ],
    )
    assert won[job.id][0] == "queued"
    row = Job.objects.get(pk=result.id)
    assert row.state == "queued" and row.finished_at is None and row.locked_by is None
    assert 29 <= (row.run_after - before).total_seconds() <= 32
    assert claim() == []


def test_retry_of_a_job_whose_cancel_was_requested_ends_cancelled():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(cancel_requested_at=Now())
    store.finish_jobs(
        connection, worker_id="w1", outcomes=[Outcome(job.id, 1, "queued", AttemptOutcome.RETRY, retry_delay=0)]
    )
    row = Job.objects.get(pk=result.id)
    assert row.state == "cancelled" and row.finished_at is not None
    assert ExecutionLog.objects.get(job_id=job.id).outcome == "cancelled"


def test_release_hands_the_job_back_without_spending_an_attempt():
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    [job] = claim()
    assert store.release_jobs(connection, worker_id="w1", held=[(job.id, 1)]) == {job.id: ("queued", None)}
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.attempts, row.max_attempts) == ("queued", 1, 2)
    assert ExecutionLog.objects.get(job_id=job.id).outcome == "released"
    [again] = claim()
    assert again.attempt == 2


def test_release_of_a_job_whose_cancel_was_requested_ends_it_cancelled_never_queued():
    """Shutdown releases jobs its worker never saw cancelled (no heartbeat came between
    the operator's request and the release): the release honours the request, as
    finish and recovery do, instead of queueing the job to run again."""
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(cancel_requested_at=Now())
    written = store.release_jobs(connection, worker_id="w1", held=[(job.id, 1)])
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.locked_by, row.lease_expires_at, row.max_attempts) == ("cancelled", None, None, 1)
    assert row.finished_at is not None
    assert written == {job.id: ("cancelled", row.finished_at)}
    log = ExecutionLog.objects.get(job_id=job.id)
    assert (log.outcome, log.error_class) == ("cancelled", store.RELEASED_CANCEL_ERROR_CLASS)
    assert log.finished_at is not None
    assert claim() == []


def test_recovery_fails_a_job_whose_attempts_are_spent():
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    [job] = claim()
    expire_lease(job.id)
    [recovered] = recovery.run_once("default")
    assert recovered.state == "failed"
    row = Job.objects.get(pk=result.id)
    assert row.state == "failed" and row.finished_at is not None


def test_recovery_ends_a_job_whose_cancel_was_requested_cancelled_not_queued():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(cancel_requested_at=Now())
    expire_lease(job.id)
    [recovered] = recovery.run_once("default")
    assert recovered.state == "cancelled"
    row = Job.objects.get(pk=result.id)
    assert row.state == "cancelled" and row.finished_at is not None
    assert claim() == []


def test_recovery_leaves_a_job_that_finished_before_its_write():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    succeed(job)
    Job.objects.filter(pk=job.id).update(lease_expires_at=None)
    assert recovery.run_once("default") == []
    assert Job.objects.get(pk=result.id).state == "succeeded"


def test_check_constraints_refuse_impossible_states():
    from django.db import IntegrityError, transaction

    result = tasks.add.enqueue(1, 2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=result.id).update(state="succeeded")  # no finished_at
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=result.id).update(state="running")  # no lease
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=result.id).update(attempts=F("max_attempts") + 1)


# --- PostgreSQL: concurrency -----------------------------------------------------------


def _second_connection():
    s = connection.settings_dict
    return psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=s["USER"] or "postgres",
        password=s["PASSWORD"] or None,
        dbname=s["NAME"],
    )


@pytest.mark.postgres
def test_claim_skips_rows_locked_by_another_connection():
    locked = tasks.add.enqueue(1, 1)
    free = tasks.add.enqueue(2, 2)
    with _second_connection() as other:
        other.execute("SELECT id FROM taskengine_job WHERE id = %s FOR UPDATE", [int(locked.id)])
        claimed = claim(limit=10)
        assert [j.id for j in claimed] == [int(free.id)]
    assert [j.id for j in claim(limit=10)] == [int(locked.id)]


@pytest.mark.postgres
def test_advisory_claim_skips_jobs_whose_advisory_lock_is_held():
    held = tasks.add.enqueue(1, 1)
    free = tasks.add.enqueue(2, 2)
    with _second_connection() as other:
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)", [store.ADVISORY_LOCK_NAMESPACE, int(held.id)])
        claimed = claim(limit=10, advisory=True)
        assert [j.id for j in claimed] == [int(free.id)]
    [late] = claim(limit=10, advisory=True)
    assert late.id == int(held.id)
    assert Job.objects.get(pk=held.id).attempts == 1


@pytest.mark.postgres
def test_advisory_claim_does_not_take_a_job_that_stopped_being_due_while_it_waited():
    """The advisory claim reads its candidates without row locks, so its UPDATE must
    re-check on the newest row version everything that made a row a candidate, not
    only the state: here another transaction (standing for a worker that claimed the
    job, failed and queued a retry with an hour's backoff) holds the row when the claim
    reaches it and commits while the claim waits. The job is queued again, but not due."""
    import threading

    from django.db import connections

    from tests.conftest import wait_for

    result = tasks.add.enqueue(1, 1)
    claimed: list = []

    def advisory_claim():
        try:
            claimed.append(
                store.claim_jobs(
                    connections["default"],
                    worker_id="late",
                    queues=["default"],
                    limit=10,
                    lease_seconds=30,
                    advisory=True,
                )
            )
        finally:
            connections["default"].close()

    with _second_connection() as other:
        other.execute(
            "UPDATE taskengine_job SET run_after = now() + interval '1 hour', attempts = 1,"
            " max_attempts = 3 WHERE id = %s",
            [int(result.id)],
        )
        thread = threading.Thread(target=advisory_claim)
        thread.start()

        def claim_waits_on_other():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    [other.info.backend_pid],
                )
                return cursor.fetchone()[0] == 1

        wait_for(claim_waits_on_other, timeout=10, message="the claim to wait on the row")
        other.commit()
        thread.join(30)
    assert claimed == [[]]
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.attempts, row.locked_by) == ("queued", 1, None)


@pytest.mark.postgres
def test_concurrent_claims_from_many_connections_never_share_a_job():
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    tasks.add.enqueue_many([(i, i) for i in range(400)])

    def claimer(n):
        try:
            got = []
            while batch := store.claim_jobs(
                connections["default"],
                worker_id=f"w{n}",
                queues=["default"],
                limit=7,
                lease_seconds=30,
                advisory=n % 2 == 0,
            ):
                got += [j.id for j in batch]
            return got
        finally:
            connections["default"].close()

    with ThreadPoolExecutor(6) as pool:
        claimed = [i for ids in pool.map(claimer, range(6)) for i in ids]
    assert len(claimed) == 400 and len(set(claimed)) == 400


@pytest.mark.postgres
def test_claim_plan_is_an_index_scan_on_the_claim_index_at_any_size():
    with connection.cursor() as cursor:
        for total in (10_000, 200_000):
            cursor.execute(
                """
                INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after,
                    enqueued_at, attempts, max_attempts, on_lease_expired)
                SELECT 'tests.tasks.noop', 'default', 'default', 0, '[]', '{}', 'queued', now(), now(), 0, 3, 'retry'
                  FROM generate_series(1, %s - (SELECT count(*) FROM taskengine_job))""",
                [total],
            )
            cursor.execute("ANALYZE taskengine_job")
            cursor.execute(
                "EXPLAIN " + sql(connection, "claim_jobs"),
                {"queues": ["default"], "limit": 50, "worker_id": "x", "lease_seconds": 30.0},
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "taskengine_job_claim_idx" in plan, plan
            assert "Seq Scan on taskengine_job" not in plan, plan
            assert "Index Scan using taskengine_job_claim_idx" in plan, plan


# A queue that once had a backlog: its jobs went through the claim index, finished and
# were pruned, and the vacuum that removed them left the index's pages (a B-tree keeps
# them; the table gives its empty pages back). Then a quiet moment, when a vacuum's
# ANALYZE (the leader's, or autovacuum's) counts fewer queued jobs than a claim asks
# for; then a burst.
BURST = """
INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
    attempts, max_attempts, on_lease_expired)
SELECT 'tests.tasks.noop', 'default', 'default', 0, '[]', '{}', 'queued', now(), now(), 0, 3, 'retry'
  FROM generate_series(1, %s)
"""
ALL_PRUNED = "DELETE FROM taskengine_job"


@pytest.mark.postgres
def test_a_workers_claim_stays_on_the_claim_index_after_an_analyze_that_saw_few_queued_jobs():
    """With statistics that count fewer queued jobs than the claim's limit, and a claim
    index with many pages, PostgreSQL priced the index scan as reading every page and
    planned the claim as a sequential scan of the whole table and a sort of every
    queued row. Found by the benchmark's sustained load: after one of the leader's
    ANALYZEs each worker claimed ~1,300 jobs/s instead of ~4,000, slower as the backlog
    grew, until the next ANALYZE; pickup latency reached 8 s. A worker's connection
    plans without sequential or bitmap scans, so the claim walks the claim index in
    order and stops at its limit, whatever the statistics say."""
    with connection.cursor() as cursor:
        cursor.execute(BURST, [200_000])
        cursor.execute(ALL_PRUNED)
        cursor.execute("VACUUM taskengine_job")
        cursor.execute(BURST, [5])
        cursor.execute("VACUUM ANALYZE taskengine_job")  # the leader's, or autovacuum's
        cursor.execute(BURST, [70_000])
    with store.worker_connection(connection):
        assert len(claim(limit=40)) == 40  # the worker's claim, on its connection
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql(connection, "claim_jobs"), {**CLAIM_PARAMS, "limit": 40})
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using taskengine_job_claim_idx" in plan, plan
    assert "Seq Scan on taskengine_job" not in plan, plan
    assert "Bitmap" not in plan, plan
    # The queue rows' scan that remains is priced past jit_above_cost: without
    # jit = off every claim was JIT-compiled (300 ms).
    assert "JIT" not in plan, plan


@pytest.mark.postgres
def test_a_workers_finish_reaches_its_rows_by_primary_key_after_an_analyze_of_an_empty_table():
    """Statistics of an empty table (a new deployment; every phase of the benchmark,
    which clears its queue and vacuums first) and then running jobs: the finish was
    planned as sequential scans of the job table and of the attempt rows, joined to the
    batch's outcomes (22 ms for 40 outcomes beside 2,000 running jobs, and slower as the
    table grew: one worker's completer fell 5 s behind in the sustained load)."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE taskengine_job")
        cursor.execute("VACUUM ANALYZE task_execution_logs")
        cursor.execute(BURST, [2_000])
    jobs = claim(limit=2_000)
    outcomes = [Outcome(j.id, j.attempt, "succeeded", AttemptOutcome.SUCCEEDED, return_value="1") for j in jobs[:40]]
    params = store_for(connection)._finish_params("w1", outcomes)
    with store.worker_connection(connection):
        assert len(succeed(jobs[40])) == 1  # the worker's finish, on its connection
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql(connection, "finish_jobs"), params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    assert "Index Scan using taskengine_job_pkey on taskengine_job" in plan, plan
    assert "Index Scan using task_execution_logs_job_attempt_uniq" in plan, plan


@pytest.mark.postgres
def test_connections_that_are_not_a_workers_keep_the_servers_planner_settings():
    """The planner settings are a worker's own connections': the connection an
    application enqueues on (and runs its own queries on), and one that claims outside
    a worker (as taskengine.testing's drain does), are planned as the server configures
    them; and a worker's connection, once the worker is done with it, is closed."""
    connection.close()

    def settings():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('enable_seqscan'), current_setting('enable_bitmapscan'), current_setting('jit')"
            )
            return cursor.fetchone()

    tasks.noop.enqueue()
    assert claim(limit=1)
    assert settings() == ("on", "on", "on")
    with store.worker_connection(connection):
        assert claim(limit=1) == []
        assert settings() == ("off", "off", "off")
    assert settings() == ("on", "on", "on")


CLAIM_PARAMS = {"queues": ["default"], "limit": 50, "worker_id": "w", "lease_seconds": 30.0}
FINISH_PARAMS = {
    "ids": [1, 2],
    "attempts": [1, 1],
    "states": ["succeeded"] * 2,
    "outcomes": ["succeeded"] * 2,
    "retry_delays": [0.0] * 2,
    "return_values": ["1"] * 2,
    "error_classes": [None] * 2,
    "error_messages": [""] * 2,
    "tracebacks": [""] * 2,
    "worker_id": "w",
}
HOT_STATEMENTS = {
    "claim_jobs": {"queues": ["default"], "limit": 50, "worker_id": "w", "lease_seconds": 30.0},
    "claim_jobs_advisory": {
        "queues": ["default"],
        "limit": 50,
        "worker_id": "w",
        "lease_seconds": 30.0,
        "lock_namespace": store.ADVISORY_LOCK_NAMESPACE,
    },
    "extend_leases": {"ids": [1, 2], "attempts": [1, 1], "worker_id": "w", "lease_seconds": 30.0},
    "finish_jobs": {
        "ids": [1, 2],
        "attempts": [1, 1],
        "states": ["succeeded"] * 2,
        "outcomes": ["succeeded"] * 2,
        "retry_delays": [0.0] * 2,
        "return_values": ["1"] * 2,
        "error_classes": [None] * 2,
        "error_messages": [""] * 2,
        "tracebacks": [""] * 2,
        "worker_id": "w",
    },
    "finish_and_claim": {**FINISH_PARAMS, **CLAIM_PARAMS},
    "finish_and_claim_advisory": {**FINISH_PARAMS, **CLAIM_PARAMS, "lock_namespace": store.ADVISORY_LOCK_NAMESPACE},
    "release_jobs": {
        "ids": [1, 2],
        "attempts": [1, 1],
        "worker_id": "w",
        "cancel_error_class": store.RELEASED_CANCEL_ERROR_CLASS,
        "cancel_error_message": store.RELEASED_CANCEL_MESSAGE,
    },
}


FILL_QUEUE = """
    WITH jobs AS (
        INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after,
                                    enqueued_at, attempts, max_attempts, on_lease_expired)
        SELECT 'tests.tasks.noop', 'default', 'default', 0, '[]', '{}', 'queued', now(), now(), 0, 3, 'retry'
          FROM generate_series(1, 20000)
        RETURNING id)
    INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, error_message, traceback)
    SELECT id, 1, 'w', now(), '', '' FROM jobs"""


@pytest.mark.postgres
@pytest.mark.parametrize("statistics", ["analysed-full", "analysed-empty-then-filled"])
def test_the_generic_plans_of_the_prepared_hot_statements_stay_on_their_indexes(statistics):
    """The engine prepares its statements, and after five runs PostgreSQL may keep a
    generic plan, made without the parameters (the LIMIT, the array sizes), which it
    guesses. Found by the benchmark: with the claim's candidates joined back to the
    table, the guess (a tenth of the queued rows) made the generic plan a hash join over
    a sequential scan of every queued row (10 ms per claim at 40,000 rows); and with
    statistics that counted no running rows, finish and heartbeat scanned the running-
    rows index, dead entries and all, on every call (the drain slowed to ~500 jobs/s).
    Each hot statement must reach its rows by primary key whatever the statistics say."""
    from taskengine.db.postgresql import libpq

    with connection.cursor() as cursor:
        if statistics == "analysed-full":
            cursor.execute(FILL_QUEUE)
            cursor.execute("ANALYZE taskengine_job")
            cursor.execute("ANALYZE task_execution_logs")
        else:
            cursor.execute(FILL_QUEUE)
            cursor.execute("SELECT max(id) FROM taskengine_job")
            last = cursor.fetchone()[0]  # kept, so VACUUM cannot truncate the empty pages
            cursor.execute("DELETE FROM task_execution_logs WHERE job_id <> %s", [last])
            cursor.execute("DELETE FROM taskengine_job WHERE id <> %s", [last])
            cursor.execute("VACUUM ANALYZE taskengine_job")
            cursor.execute("VACUUM ANALYZE task_execution_logs")
            cursor.execute(FILL_QUEUE)  # a burst before autovacuum analyses again
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            for name, params in HOT_STATEMENTS.items():
                _, text, order = libpq._statement(name)
                cursor.execute(f"PREPARE plan_{name} AS {text.decode()}")
                placeholders = ", ".join(["%s"] * len(order))
                cursor.execute(f"EXPLAIN EXECUTE plan_{name}({placeholders})", [params[k] for k in order])
                plan = "\n".join(row[0] for row in cursor.fetchall())
                cursor.execute(f"DEALLOCATE plan_{name}")
                assert "Seq Scan on taskengine_job" not in plan, f"{name}:\n{plan}"
                assert "Seq Scan on task_execution_logs" not in plan, f"{name}:\n{plan}"
                assert "taskengine_job_worker_idx" not in plan, f"{name}:\n{plan}"
                assert "Index Scan using taskengine_job_pkey on taskengine_job" in plan, f"{name}:\n{plan}"
                if "claim" in name:
                    assert "taskengine_job_claim_idx" in plan, f"{name}:\n{plan}"
        finally:
            cursor.execute("RESET plan_cache_mode")


def _plan_cache_mode() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        return cursor.fetchone()[0]


@pytest.mark.postgres
def test_engine_statements_are_planned_on_every_run_once_set_outside_a_transaction():
    """A generic plan made while the queue was empty would be kept through a burst;
    the engine asks for a plan per run on each connection it prepares statements on,
    and never from inside a transaction, whose rollback would undo the SET."""
    from django.db import transaction

    connection.close()
    with transaction.atomic():
        store.claim_jobs(connection, worker_id="w", queues=["default"], limit=5, lease_seconds=30)
        assert _plan_cache_mode() == "auto"
        transaction.set_rollback(True)
    assert _plan_cache_mode() == "auto"
    store.claim_jobs(connection, worker_id="w", queues=["default"], limit=5, lease_seconds=30)
    assert _plan_cache_mode() == "force_custom_plan"
    connection.close()  # a new physical connection gets it again
    store.extend_leases(connection, worker_id="w", held=[(1, 1)], lease_seconds=30)
    assert _plan_cache_mode() == "force_custom_plan"


@pytest.mark.postgres
def test_with_poll_only_nothing_is_set_on_the_session():
    """Behind PgBouncer in transaction mode a session SET would reach other clients."""
    from django.test import override_settings

    connection.close()
    with override_settings(TASKENGINE={"POLL_ONLY": True}), store.worker_connection(connection):
        store.claim_jobs(connection, worker_id="w", queues=["default"], limit=5, lease_seconds=30)
        assert _plan_cache_mode() == "auto"
        with connection.cursor() as cursor:
            cursor.execute("SHOW enable_seqscan")
            assert cursor.fetchone()[0] == "on"  # nor a worker's planner settings
    connection.close()


@pytest.mark.postgres
def test_the_job_table_is_vacuumed_after_a_fixed_number_of_dead_tuples_whatever_its_size():
    # Migration 0011: every job leaves two dead tuples; with the server's default share
    # (20 % of the table) a table of kept jobs was never vacuumed during a sustained run.
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'taskengine_job'")
        (options,) = cursor.fetchone()
    settings = dict(option.split("=", 1) for option in options)
    assert settings["autovacuum_vacuum_scale_factor"] == "0"
    assert int(settings["autovacuum_vacuum_threshold"]) <= 10_000
    assert settings["autovacuum_vacuum_insert_scale_factor"] == "0"
    assert float(settings["autovacuum_vacuum_cost_delay"]) < 2  # the server default
    assert int(settings["fillfactor"]) < 100
