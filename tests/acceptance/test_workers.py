"""Real runworker subprocesses on PostgreSQL: drain, kill -9, SIGTERM, stale finish,
connection loss."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from taskengine.models import ExecutionLog, Job, WorkerProcess
from tests import tasks
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.acceptance]


# Bounds for waits on a loaded CI machine (a worker's start-up can take many seconds there),
# not promises; the promises are asserted on what happened, or measured from when they start.
START_UP = 60
FUTURE_MIGRATION = ("taskengine", "9999_from_the_future")  # applied but unknown: the gate stays closed


def job_state(job_id) -> str:
    return Job.objects.values_list("state", flat=True).get(pk=job_id)


def executions(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


@pytest.mark.postgres
def test_four_workers_drain_5000_jobs_each_succeeding_exactly_once(worker_process):
    results = tasks.noop.enqueue_many([() for _ in range(5000)])
    workers = [worker_process("--burst", "--concurrency", "8", "--no-leader") for _ in range(4)]
    for worker in workers:
        assert worker.wait(300) == 0, worker.log()
    ids = [int(r.id) for r in results]
    assert Job.objects.filter(pk__in=ids, state="succeeded").count() == 5000
    logs = ExecutionLog.objects.filter(job_id__in=ids)
    assert logs.count() == 5000
    assert logs.filter(outcome="succeeded").values("job_id").distinct().count() == 5000
    assert logs.values("worker_id").distinct().count() >= 2  # the work was shared


@pytest.mark.postgres
def test_a_job_of_a_killed_worker_is_rerun_after_its_lease_expires_never_concurrently(worker_process, tmp_path):
    result = tasks.sleep_then_record.enqueue(str(tmp_path), "job", 2.0)
    first = worker_process("--lease-seconds", "2", "--no-leader", name="first")
    wait_for(lambda: (tmp_path / "job.started").exists(), timeout=START_UP, message="first attempt to start")
    first.kill9()
    lease_end = Job.objects.values_list("lease_expires_at", flat=True).get(pk=result.id)
    second = worker_process("--lease-seconds", "2", name="second")
    wait_for(lambda: job_state(result.id) == "succeeded", timeout=START_UP + 30, message="the rerun to succeed")
    attempts = list(ExecutionLog.objects.filter(job_id=result.id).order_by("attempt"))
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lost"), (2, "succeeded")]
    assert attempts[1].started_at > lease_end, "rerun began while the first lease was live"
    assert executions(tmp_path / "job") == [str(second.pid)]


@pytest.mark.postgres
def test_sigterm_lets_running_jobs_finish_then_exits_and_claims_nothing_more(worker_process, tmp_path):
    running = tasks.sleep_then_record.enqueue(str(tmp_path), "slow", 1.5)
    worker = worker_process("--no-leader", "--shutdown-grace", "20", name="draining")
    wait_for(lambda: (tmp_path / "slow.started").exists(), timeout=START_UP, message="job to start")
    worker.signal(signal.SIGTERM)
    # Enqueued once the drain has begun: the claim loop has seen the stop request.
    wait_for(lambda: "draining" in worker.log(), timeout=30, message="the signal to start a drain")
    later = tasks.add.enqueue(1, 1)
    assert worker.wait(60) == 0, worker.log()
    assert job_state(running.id) == "succeeded"
    assert job_state(later.id) == "queued"
    assert WorkerProcess.objects.get(pid=worker.pid).state == "stopped"


@pytest.mark.postgres
def test_sigterm_releases_jobs_still_running_when_the_grace_period_ends(worker_process, tmp_path):
    result = tasks.sleep_then_record.enqueue(str(tmp_path), "long", 30)
    worker = worker_process("--no-leader", "--shutdown-grace", "0.5", name="impatient")
    wait_for(lambda: (tmp_path / "long.started").exists(), timeout=START_UP, message="job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.log()
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.locked_by) == ("queued", None)
    assert ExecutionLog.objects.get(job_id=result.id).outcome == "released"


@pytest.mark.postgres
def test_a_stale_worker_resumed_after_losing_its_lease_cannot_finish_the_job(worker_process, tmp_path):
    result = tasks.sleep_then_record.enqueue(str(tmp_path), "job", 2.5)
    stale = worker_process("--lease-seconds", "1.5", "--no-leader", name="stale")
    wait_for(lambda: (tmp_path / "job.started").exists(), timeout=START_UP, message="first attempt to start")
    stale.signal(signal.SIGSTOP)
    (tmp_path / "job.started").unlink()
    fresh = worker_process("--lease-seconds", "5", name="fresh")
    wait_for(lambda: (tmp_path / "job.started").exists(), timeout=START_UP, message="the rerun to start")
    stale.signal(signal.SIGCONT)
    wait_for(lambda: job_state(result.id) == "succeeded", timeout=30, message="the rerun to succeed")
    wait_for(lambda: "lease lost" in stale.log(), timeout=30, message="the stale worker to notice")
    attempts = list(
        ExecutionLog.objects.filter(job_id=result.id).order_by("attempt").values_list("attempt", "outcome", "worker_id")
    )
    assert [(a, o) for a, o, _ in attempts] == [(1, "lost"), (2, "succeeded")]
    assert attempts[1][2] == WorkerProcess.objects.get(pid=fresh.pid).worker_id
    assert Job.objects.get(pk=result.id).attempts == 2


@pytest.mark.postgres
def test_worker_survives_losing_its_database_connections_and_finishes_every_job(worker_process):
    results = tasks.add.enqueue_many([(i, 1) for i in range(300)])
    worker = worker_process("--concurrency", "4", "--no-leader", "--max-backoff", "0.2", name="survivor")
    wait_for(lambda: Job.objects.filter(state="succeeded").exists(), timeout=START_UP, message="work to begin")
    s = connection.settings_dict
    dsn = dict(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"] or "postgres", dbname=s["NAME"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    with psycopg.connect(**dsn, autocommit=True) as admin:
        for _ in range(5):  # cut the worker off repeatedly, as a failover or restart would
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s",
                [s["NAME"], own_pid],
            )
            time.sleep(0.2)
    ids = [int(r.id) for r in results]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, state="succeeded").count() == 300,
        timeout=120,
        message="every job to succeed after the outage",
    )
    assert worker.proc.poll() is None, "the worker died:\n" + worker.log()
    log = worker.log()
    assert "database error" in log and "resuming" in log
    assert ExecutionLog.objects.filter(job_id__in=ids, outcome="succeeded").count() == 300


@pytest.mark.postgres
def test_a_second_signal_exits_at_once_and_the_lease_recovers_the_job(worker_process, tmp_path):
    result = tasks.sleep_then_record.enqueue(str(tmp_path), "long", 30)
    worker = worker_process("--no-leader", "--shutdown-grace", "60", "--lease-seconds", "2", name="twice")
    wait_for(lambda: (tmp_path / "long.started").exists(), timeout=START_UP, message="job to start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "draining" in worker.log(), timeout=30, message="the first signal to start a drain")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) != 0
    assert time.monotonic() - started < 5, "the second signal did not exit at once"
    assert "second signal" in worker.log()
    assert Job.objects.get(pk=result.id).state == "running"  # nothing written on the way out
    # The lease then expires and the one recovery path hands the job back.
    from taskengine.leader import recovery

    wait_for(lambda: recovery.run_once("default"), timeout=30, message="the lease to expire and be recovered")
    assert Job.objects.get(pk=result.id).state == "queued"


def test_sigterm_during_start_up_exits_0_before_registering_or_claiming(worker_process):
    """A worker held at the migration gate is still starting up: SIGTERM there means
    "stop before starting" (exit 0), not Python's default death by signal (-15)."""
    queued = tasks.add.enqueue(1, 1)
    recorder = MigrationRecorder(connection)
    recorder.record_applied(*FUTURE_MIGRATION)
    try:
        worker = worker_process("--concurrency", "1", name="starting")
        wait_for(
            lambda: "waiting for migrations" in worker.log(),
            timeout=START_UP,
            message="the worker to wait at the migration gate",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log()
    finally:
        recorder.record_unapplied(*FUTURE_MIGRATION)
    assert "before starting" in worker.log()
    assert "worker starting" not in worker.log()
    job = Job.objects.get(pk=queued.id)
    assert (job.state, job.attempts, job.locked_by) == ("queued", 0, None)
    assert not WorkerProcess.objects.exists()
