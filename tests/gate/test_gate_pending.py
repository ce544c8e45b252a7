"""With taskengine migrated back to its first migration: the gate is closed and says why,
/readyz answers 503, the maintenance tick is skipped, checks warn without blocking
``migrate``, and everything opens once ``migrate`` has run."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connection, connections
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from taskengine import gate
from taskengine.leader.election import Elector
from taskengine.leader.ticker import MaintenanceTicker
from taskengine.models import Job
from taskengine.runtime.leader_service import default_services
from tests.conftest import ROOT, subprocess_env, wait_for
from tests.gate.conftest import job_row, migrate_in_another_process

pytestmark = pytest.mark.django_db(transaction=True)

SECOND = "taskengine.0002_execution_log_user_id_str"
WRITES = ("INSERT", "UPDATE", "DELETE")


def test_gate_is_closed_naming_pending_migrations_and_opens_after_migrate(taskengine_at_first_migration):
    status = gate.status("default")
    assert not status.ready
    assert status.pending[0] == SECOND
    assert "taskengine.0004_notify_trigger" in status.pending
    assert all(name.startswith("taskengine.") for name in status.pending)
    assert status.conflicts == {} and status.unknown_applied == [] and status.error is None
    assert SECOND in status.reason and "manage.py migrate" in status.reason
    assert not gate.is_ready("default")
    call_command("migrate", "taskengine", verbosity=0)
    assert gate.is_ready("default"), "opens without reset()"


def test_waiting_reads_only_django_migrations_never_taskengine_tables(taskengine_at_first_migration, engine_log):
    with CaptureQueriesContext(connection) as queries:
        assert not gate.wait_until_ready("default", timeout=0.5)
    statements = [q["sql"] for q in queries.captured_queries]
    assert any("django_migrations" in s for s in statements)
    assert not [s for s in statements if "taskengine_" in s or "task_execution_logs" in s]
    rechecks = [r for r in engine_log.records if r.getMessage().startswith("gate still closed")]
    waiting = [r for r in engine_log.records if r.getMessage().startswith("waiting for migrations: ")]
    assert len(rechecks) >= 2 and len(waiting) == 1
    stop = threading.Event()
    stop.set()
    assert gate.wait_until_ready("default", stop=stop) is False, "a set stop event ends the wait"


def test_readyz_flips_from_503_to_200_after_migrate_while_healthz_stays_200(client, taskengine_at_first_migration):
    with CaptureQueriesContext(connection) as queries:
        closed = client.get("/readyz")
    assert closed.status_code == 503 and closed["Content-Type"] == "application/json"
    body = closed.json()
    assert body["ready"] is False and body["database"] == "default"
    assert SECOND in body["pending"] and SECOND in body["reason"]
    assert not [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(WRITES)]
    with CaptureQueriesContext(connection) as queries:
        health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert len(queries) == 0, "/healthz never touches the database"

    migrate_in_another_process()
    opened = client.get("/readyz")
    assert opened.status_code == 200
    assert opened.json()["ready"] is True
    assert client.post("/readyz").status_code == 405


def test_maintenance_tick_is_skipped_while_closed_and_runs_after(transactional_db, engine_log):
    job = Job.objects.create(
        task_path="tests.tasks.noop",
        state="running",
        attempts=1,
        max_attempts=3,
        locked_by="ghost-worker",
        lease_expires_at=Now() - timedelta(minutes=5),
    )
    elector = Elector("default", "gate-test-leader")
    ticker = MaintenanceTicker("default", elector, default_services("default"))
    call_command("migrate", "taskengine", "0001_initial", verbosity=0)
    try:
        assert [ticker.tick() for _ in range(3)] == [[], [], []]
        assert job_row(job.pk)[0] == "running", "recovery must not run while migrations are pending"
        paused = [r for r in engine_log.records if r.name == "taskengine.maintenance"]
        assert len(paused) == 1 and "migrations pending" in paused[0].getMessage()
    finally:
        call_command("migrate", "taskengine", verbosity=0)
    assert elector.step(), "sole candidate becomes leader"
    assert "recovery" in ticker.tick()
    assert job_row(job.pk)[0] == "queued", "the first tick after migrate recovers the expired lease"


def test_checks_warn_about_pending_migrations_without_blocking(taskengine_at_first_migration):
    (pending,) = [m for m in run_checks(databases=["default"]) if m.id == "taskengine.W001"]
    assert SECOND in pending.msg and "migrate" in pending.hint and not pending.is_serious()
    call_command("check", databases=["default"])  # a warning: no SystemCheckError


def test_checkready_exits_1_while_pending_and_0_after_migrate(taskengine_at_first_migration):
    command = [sys.executable, str(ROOT / "manage.py"), "checkready"]
    closed = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert closed.returncode == 1 and SECOND in closed.stderr
    call_command("migrate", "taskengine", verbosity=0)
    opened = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert opened.returncode == 0, opened.stderr
    assert "ready" in opened.stdout


def test_checkready_exits_1_when_the_database_is_unreachable(tmp_path):
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path}/missing/dir/db.sqlite3")
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "checkready", "--wait", "0.5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot read migration state" in done.stderr
    assert done.stderr.count("waiting for migrations") == 1, done.stderr


def test_gate_watch_logs_once_per_state_change_not_per_tick(taskengine_at_first_migration, engine_log):
    watch = gate.GateWatch("default", what="scheduler")
    assert [watch.is_open() for _ in range(4)] == [False] * 4
    call_command("migrate", "taskengine", verbosity=0)
    assert [watch.is_open() for _ in range(3)] == [True] * 3
    lines = [r.getMessage() for r in engine_log.records if r.name == "taskengine.gate"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("scheduler paused until migrations are applied: ") and SECOND in lines[0]
    assert lines[1] == "scheduler resumed: migration gate open on database 'default'"


def test_waiting_logs_once_while_migrate_progresses_step_by_step(taskengine_at_first_migration, engine_log):
    opened: list[bool] = []

    def wait() -> None:
        try:
            opened.append(gate.wait_until_ready("default", timeout=30))
        finally:
            connections["default"].close()

    def rechecks() -> int:
        return sum(r.getMessage().startswith("gate still closed") for r in engine_log.records)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: rechecks() >= 1, message="the first re-check")
    call_command("migrate", "taskengine", "0002", verbosity=0)
    seen = rechecks()
    wait_for(lambda: rechecks() > seen, message="a re-check with a shorter pending list")
    call_command("migrate", "taskengine", verbosity=0)
    waiter.join(30)
    assert opened == [True]
    messages = [r.getMessage() for r in engine_log.records if r.name == "taskengine.gate"]
    assert sum(m.startswith("waiting for migrations: ") for m in messages) == 1, messages
    assert any(m.startswith("migration gate open on database 'default'") for m in messages)
