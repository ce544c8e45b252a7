"""The one recovery path, fenced by the leader's term, including dead workers' jobs."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from taskengine import registry, store
from taskengine.maintenance import dead_workers, recovery
from taskengine.models import ExecutionLog, Job, WorkerProcess
from tests import tasks

from .conftest import claim, expire_lease, expire_leader, lead

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
    registry.register("default", "doomed", ["default"], 1)
    registry.register("default", "healthy", ["default"], 1)
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
    late = store.finish_jobs(connection, worker_id="doomed", outcomes=[
        store.Outcome(doomed_job.id, 1, "succeeded", "succeeded", return_value="3")])
    assert late == {}


def test_a_stale_heartbeat_alone_makes_a_worker_dead_for_recovery():
    registry.register("default", "silent", ["default"], 1)
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
                " AND lease_expires_at > now() RETURNING id", [job.id])
            assert cursor.fetchone() == (job.id,)
            cursor.execute("UPDATE task_execution_logs SET finished_at = now(), outcome = 'succeeded'"
                           " WHERE job_id = %s AND attempt = 1", [job.id])
        # The lease runs out on the database clock while the finish is uncommitted.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(GREATEST(0, EXTRACT(EPOCH FROM lease_expires_at - now())) + 0.05)"
                           " FROM taskengine_job WHERE id = %s", [job.id])
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
        Job.objects.filter(pk=job.id).update(state="succeeded", finished_at=Now(), locked_by=None,
                                             lease_expires_at=None)
        assert recovery.run_once("default") == []
    else:
        from taskengine.queries import sql

        real_execute = None

        def finish_between(cursor_self, query, params=None):
            if query == sql(connection, "recover_job"):
                Job.objects.filter(pk=job.id).update(state="succeeded", finished_at=Now(), locked_by=None,
                                                     lease_expires_at=None)
            return real_execute(cursor_self, query, params)

        from django.db.backends.utils import CursorWrapper
        real_execute = CursorWrapper.execute
        monkeypatch.setattr(CursorWrapper, "execute", finish_between)
        assert recovery.run_once("default") == []
    assert Job.objects.get(pk=result.id).state == "succeeded"
