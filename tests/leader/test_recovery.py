"""The one recovery path, fenced by the leader's term, including dead workers' jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from taskengine import store
from taskengine.jobs import Outcome
from taskengine.leader import dead_workers, recovery
from taskengine.models import ExecutionLog, Job, WorkerProcess
from taskengine.runtime import heartbeats
from tests import tasks

from .conftest import claim, expire_leader, expire_lease, lead

pytestmark = pytest.mark.django_db(transaction=True)


def test_leader_recovers_an_expired_lease_under_its_live_term():
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    expire_lease(job.id)
    [recovered] = recovery.run_once("default", lease=lead())
    assert (recovered.id, recovered.state, recovered.worker_id) == (int(result.id), "queued", "w1")
    assert Job.objects.get(pk=job.id).state == "queued"
    log = ExecutionLog.objects.get(job_id=job.id)
    assert (log.outcome, log.error_class) == ("lost", "taskengine.LeaseExpired")


def test_a_stale_term_recovers_nothing():
    tasks.add.enqueue(1, 2)
    [job] = claim()
    expire_lease(job.id)
    stale = lead("old")
    expire_leader()
    lead("new")
    assert recovery.run_once("default", lease=stale) == []
    assert Job.objects.get(pk=job.id).state == "running"


def test_jobs_of_a_dead_worker_are_recovered_before_their_lease_ends():
    heartbeats.register("default", "doomed", ["default"], 1)
    heartbeats.register("default", "healthy", ["default"], 1)
    tasks.add.enqueue(1, 2)
    tasks.add.enqueue(3, 4)
    [doomed_job] = store.claim_jobs(connection, worker_id="doomed", queues=["default"], limit=1, lease_seconds=300)
    [healthy_job] = store.claim_jobs(connection, worker_id="healthy", queues=["default"], limit=1, lease_seconds=300)
    WorkerProcess.objects.filter(worker_id="doomed").update(last_heartbeat_at=Now() - timedelta(seconds=120))
    lease = lead()
    report = dead_workers.run_once("default", lease, dead_after=60)
    assert report.marked_dead == ["doomed"]
    [recovered] = recovery.run_once("default", lease=lease, dead_after=60)
    assert (recovered.id, recovered.worker_dead) == (doomed_job.id, True)
    assert Job.objects.get(pk=healthy_job.id).state == "running"
    log = ExecutionLog.objects.get(job_id=doomed_job.id)
    assert (log.outcome, log.error_class) == ("lost", "taskengine.WorkerDead")
    # The dead worker's late finish is fenced out.
    late = store.finish_jobs(
        connection,
        worker_id="doomed",
        outcomes=[Outcome(doomed_job.id, 1, "succeeded", "succeeded", return_value="3")],
    )
    assert late == {}


def test_a_stale_heartbeat_alone_makes_a_worker_dead_for_recovery():
    heartbeats.register("default", "silent", ["default"], 1)
    tasks.add.enqueue(1, 2)
    [job] = store.claim_jobs(connection, worker_id="silent", queues=["default"], limit=1, lease_seconds=300)
    WorkerProcess.objects.filter(worker_id="silent").update(last_heartbeat_at=Now() - timedelta(seconds=10))
    lease = lead()
    assert recovery.run_once("default", lease=lease, dead_after=60) == []
    [recovered] = recovery.run_once("default", lease=lease, dead_after=5)
    assert recovered.id == job.id


def test_on_lease_expired_fail_policy_fails_the_job():
    tasks.add.using(max_attempts=5).enqueue(1, 2)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(on_lease_expired="fail")
    expire_lease(job.id)
    [recovered] = recovery.run_once("default", lease=lead())
    assert recovered.state == "failed"
    assert Job.objects.get(pk=job.id).finished_at is not None


def test_two_sweeps_recover_each_job_once():
    for i in range(5):
        tasks.add.enqueue(i, i)
    jobs = claim()
    for job in jobs:
        expire_lease(job.id)
    lease = lead()
    first = recovery.run_once("default", lease=lease)
    second = recovery.run_once("default", lease=lease)
    assert sorted(j.id for j in first) == sorted(j.id for j in jobs) and second == []
    assert ExecutionLog.objects.filter(outcome="lost").count() == 5


@pytest.mark.postgres
def test_a_job_completing_while_recovery_runs_is_left_completed():
    """The worker's fenced finish holds the job's row lock (its transaction is still
    open) when the lease runs out and recovery sweeps: recovery must not touch it, and
    once the finish commits the job stays succeeded with one attempt."""
    import psycopg

    from tests.conftest import subprocess_database_url

    result = tasks.add.enqueue(1, 2)
    [job] = claim(lease_seconds=1)
    finisher = psycopg.connect(subprocess_database_url().replace("postgres://", "postgresql://"))
    try:
        with finisher.cursor() as cursor:  # BEGIN (psycopg is not autocommit by default)
            cursor.execute(
                "UPDATE taskengine_job SET state = 'succeeded', finished_at = now(), return_value = '3',"
                " locked_by = NULL, lease_expires_at = NULL"
                " WHERE id = %s AND state = 'running' AND attempts = 1 AND locked_by = 'w1'"
                " AND lease_expires_at > now() RETURNING id",
                [job.id],
            )
            assert cursor.fetchone() == (job.id,)
            cursor.execute(
                "UPDATE task_execution_logs SET finished_at = now(), outcome = 'succeeded'"
                " WHERE job_id = %s AND attempt = 1",
                [job.id],
            )
        # The lease runs out on the database clock while the finish is uncommitted.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_sleep(GREATEST(0, EXTRACT(EPOCH FROM lease_expires_at - now())) + 0.05)"
                " FROM taskengine_job WHERE id = %s",
                [job.id],
            )
        assert Job.objects.filter(pk=job.id, lease_expires_at__lt=Now()).exists()
        assert recovery.run_once("default", lease=lead()) == []
        finisher.commit()
    finally:
        finisher.close()
    assert recovery.run_once("default") == []
    row = Job.objects.get(pk=result.id)
    assert (row.state, row.attempts, row.return_value) == ("succeeded", 1, 3)
    assert list(ExecutionLog.objects.filter(job_id=job.id).values_list("outcome", flat=True)) == ["succeeded"]


def test_recovery_compare_and_set_leaves_a_job_finished_after_it_was_read(monkeypatch):
    """Recovery reads a candidate, then the job finishes, then recovery writes: the
    write is compare-and-set on state and attempt, so it changes nothing."""
    result = tasks.add.enqueue(1, 2)
    [job] = claim()
    expire_lease(job.id)
    if connection.vendor == "postgresql":
        # One statement reads and writes under a row lock; the read-then-write race is
        # covered by test_a_job_completing_while_recovery_runs_is_left_completed.
        Job.objects.filter(pk=job.id).update(
            state="succeeded", finished_at=Now(), locked_by=None, lease_expires_at=None
        )
        assert recovery.run_once("default") == []
    else:
        from taskengine.db.queries import sql

        real_execute = None

        def finish_between(cursor_self, query, params=None):
            if query == sql(connection, "recover_job"):
                Job.objects.filter(pk=job.id).update(
                    state="succeeded", finished_at=Now(), locked_by=None, lease_expires_at=None
                )
            return real_execute(cursor_self, query, params)

        from django.db.backends.utils import CursorWrapper

        real_execute = CursorWrapper.execute
        monkeypatch.setattr(CursorWrapper, "execute", finish_between)
        assert recovery.run_once("default") == []
    assert Job.objects.get(pk=result.id).state == "succeeded"


# --- the compare-and-set re-checks what it relies on under the row lock ----------------
#
# PostgreSQL: the recovery statement reads its candidates in the statement's snapshot,
# then locks them. A commit that lands in between (a heartbeat renewing the lease, a
# reconcile recovering the job and another worker claiming it, the worker's registry
# heartbeat) must be seen under the lock. The interleaving is made deterministic with
# the leader fence: a second connection holds the leader row FOR UPDATE, so the fenced
# sweep, its snapshot already taken, waits on FOR SHARE of that row before it locks any
# job; the second connection then commits its change and releases the row.


def _other_connection():
    import psycopg

    from tests.conftest import subprocess_database_url

    return psycopg.connect(subprocess_database_url().replace("postgres://", "postgresql://"))


def _blocking_the_fenced_sweep(other, lease, job_ids=None, dead_after=60.0):
    """Start the fenced sweep on a thread while ``other`` holds the leader row; return
    (thread, result list) once the sweep waits on ``other``."""
    import threading

    from django.db import connections

    from taskengine.leader.election import ELECTION
    from tests.conftest import wait_for

    with other.cursor() as cursor:
        cursor.execute("SELECT 1 FROM taskengine_leader WHERE name = %s FOR UPDATE", [ELECTION])
    result: list = []

    def sweep():
        try:
            result.append(recovery.run_once("default", lease=lease, job_ids=job_ids, dead_after=dead_after))
        except BaseException as exc:
            result.append(exc)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=sweep)
    thread.start()

    def sweep_waits_on_other():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [other.info.backend_pid]
            )
            return cursor.fetchone()[0] == 1

    wait_for(sweep_waits_on_other, timeout=10, message="the sweep to wait on the leader row")
    return thread, result


def _sweep_result(thread, result):
    thread.join(30)
    assert not thread.is_alive()
    [outcome] = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@pytest.mark.postgres
@pytest.mark.parametrize("job_ids", ["sweep", "reconcile"])
def test_recovery_leaves_a_lease_renewed_while_it_waited(job_ids):
    """A heartbeat that began just before the lease ran out (its now() is earlier)
    commits after the sweep read the lease as expired: under the row lock the lease is
    live again, so the job stays with its worker. Also with the job ids reconcile
    --apply passes (the same statement, restricted to the jobs it found)."""
    from taskengine.db.queries import sql

    tasks.add.enqueue(1, 2)
    [job] = claim()
    lease = lead()
    other = _other_connection()
    try:
        with other.cursor() as cursor:  # BEGIN: the heartbeat's transaction and its now()
            cursor.execute("SELECT now()")
            [heartbeat_began] = cursor.fetchone()
        Job.objects.filter(pk=job.id).update(lease_expires_at=heartbeat_began + timedelta(milliseconds=1))
        assert Job.objects.filter(pk=job.id, lease_expires_at__lt=Now()).exists()
        thread, result = _blocking_the_fenced_sweep(other, lease, job_ids=[job.id] if job_ids == "reconcile" else None)
        with other.cursor() as cursor:
            cursor.execute(
                sql(connection, "extend_leases"),
                {"ids": [job.id], "attempts": [1], "worker_id": "w1", "lease_seconds": 30.0},
            )
            assert cursor.fetchall() == [(job.id, False)]
        other.commit()
        assert _sweep_result(thread, result) == []
    finally:
        other.close()
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by, row.attempts) == ("running", "w1", 1)
    assert ExecutionLog.objects.get(job_id=job.id).outcome is None


@pytest.mark.postgres
def test_recovery_of_a_dead_workers_job_leaves_it_once_another_worker_claimed_it():
    """The sweep picks the job of a dead worker; before it locks the row, a reconcile
    recovers that attempt and a live worker claims the job (attempt 2, live lease). The
    sweep must re-check under the lock that the lease holder is still the dead worker
    and the attempt the one it picked — not recover the live worker's attempt as
    "worker dead"."""
    from taskengine.db.queries import sql
    from taskengine.leader.election import lease_params

    heartbeats.register("default", "doomed", ["default"], 1)
    heartbeats.register("default", "fresh", ["default"], 1)
    tasks.add.enqueue(1, 2)
    [job] = store.claim_jobs(connection, worker_id="doomed", queues=["default"], limit=1, lease_seconds=300)
    WorkerProcess.objects.filter(worker_id="doomed").update(state="dead")
    lease = lead()
    other = _other_connection()
    try:
        thread, result = _blocking_the_fenced_sweep(other, lease)
        with other.cursor() as cursor:
            cursor.execute(
                sql(connection, "recover_expired_leases"),
                {"job_ids": [job.id], "limit": 10, "dead_after": 60.0, **lease_params(None)},
            )
            assert [row[0] for row in cursor.fetchall()] == [job.id]
            cursor.execute(
                sql(connection, "claim_jobs"),
                {"queues": ["default"], "limit": 1, "worker_id": "fresh", "lease_seconds": 300.0},
            )
            assert [row[0] for row in cursor.fetchall()] == [job.id]
        other.commit()
        assert _sweep_result(thread, result) == []
    finally:
        other.close()
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by, row.attempts) == ("running", "fresh", 2)
    logs = list(ExecutionLog.objects.filter(job_id=job.id).order_by("attempt").values_list("attempt", "outcome"))
    assert logs == [(1, "lost"), (2, None)]


@pytest.mark.postgres
def test_recovery_leaves_the_job_of_a_worker_whose_heartbeat_arrived_while_it_waited():
    """The sweep reads a worker as dead (no heartbeat for dead_after) while its job's
    lease is still live; the worker's registry heartbeat commits before the sweep locks
    the job. Under the lock the worker is alive, so its job is not taken."""
    heartbeats.register("default", "slow", ["default"], 1)
    tasks.add.enqueue(1, 2)
    [job] = store.claim_jobs(connection, worker_id="slow", queues=["default"], limit=1, lease_seconds=300)
    WorkerProcess.objects.filter(worker_id="slow").update(last_heartbeat_at=Now() - timedelta(seconds=120))
    lease = lead()
    other = _other_connection()
    try:
        thread, result = _blocking_the_fenced_sweep(other, lease, dead_after=60)
        assert heartbeats.heartbeat("default", "slow", "running")
        other.commit()
        assert _sweep_result(thread, result) == []
    finally:
        other.close()
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by) == ("running", "slow")


# SQLite: recovery runs its read and its writes in one IMMEDIATE transaction (the single
# write lock), so no other writer can commit in between; the statement-level guard is
# shown by changing the row from inside that transaction, between the read and the
# compare-and-set write.


def _between_read_and_write(monkeypatch, change):
    from django.db.backends.utils import CursorWrapper

    from taskengine.db.queries import sql

    real_execute = CursorWrapper.execute

    def execute(cursor_self, query, params=None):
        if query == sql(connection, "recover_job"):
            change()
        return real_execute(cursor_self, query, params)

    monkeypatch.setattr(CursorWrapper, "execute", execute)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("job_ids", ["sweep", "reconcile"])
def test_recovery_write_re_checks_that_the_lease_is_still_expired(monkeypatch, job_ids):
    """recover_job re-checks the expired lease itself: a lease renewed between
    select_recoverable and the write is left alone (sweep and reconcile's job ids)."""
    tasks.add.enqueue(1, 2)
    [job] = claim()
    expire_lease(job.id)
    _between_read_and_write(
        monkeypatch, lambda: Job.objects.filter(pk=job.id).update(lease_expires_at=Now() + timedelta(seconds=30))
    )
    ids = [job.id] if job_ids == "reconcile" else None
    assert recovery.run_once("default", job_ids=ids) == []
    row = Job.objects.get(pk=job.id)
    assert (row.state, row.locked_by) == ("running", "w1")
    assert ExecutionLog.objects.get(job_id=job.id).outcome is None


@pytest.mark.sqlite_only
def test_recovery_write_re_checks_that_the_worker_is_still_dead(monkeypatch):
    """recover_job re-checks the dead-worker condition itself: a worker whose heartbeat
    lands between select_recoverable and the write keeps its live job."""
    heartbeats.register("default", "slow", ["default"], 1)
    tasks.add.enqueue(1, 2)
    [job] = store.claim_jobs(connection, worker_id="slow", queues=["default"], limit=1, lease_seconds=300)
    WorkerProcess.objects.filter(worker_id="slow").update(last_heartbeat_at=Now() - timedelta(seconds=120))
    _between_read_and_write(monkeypatch, lambda: heartbeats.heartbeat("default", "slow", "running"))
    assert recovery.run_once("default", dead_after=60) == []
    assert Job.objects.get(pk=job.id).state == "running"
