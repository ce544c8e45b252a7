"""The user_id → user_id_str backfill: the migration path for logs written before the
column existed, the resumable command (interrupted and rerun: no row written twice),
the report, and new attempt rows carrying both columns."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from taskengine import gate, store
from taskengine.jobs import NewJob
from taskengine.models import ExecutionLog, Job, OperatorAction
from taskengine.ops import backfill, reconcile
from tests.conftest import ROOT, subprocess_env, wait_for

LOG_INSERT = """
INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, error_message, traceback, user_id)
VALUES (%s, %s, 'legacy-worker', '2026-01-01 00:00:00', '', '', %s)
"""


def legacy_logs(n: int, *, with_user_str: bool = False) -> list[int]:
    """``n`` attempt rows missing user_id_str (every 5th has no user at all)."""
    job = Job.objects.create(
        task_path="tests.tasks.noop", state="succeeded", attempts=1, finished_at="2026-01-01T00:00:00Z"
    )
    rows = [
        ExecutionLog(
            job=job,
            attempt=i + 1,
            worker_id="w",
            started_at="2026-01-01T00:00:00Z",
            user_id=None if i % 5 == 4 else 1000 + i,
        )
        for i in range(n)
    ]
    return [log.id for log in ExecutionLog.objects.bulk_create(rows)]


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_logs_written_before_the_user_id_str_migration_end_backfilled_with_a_clean_report():
    try:
        call_command("migrate", "taskengine", "0001", verbosity=0)
        closed = reconcile.report()
        assert closed.gate["ready"] is False
        assert "taskengine.0002_execution_log_user_id_str" in closed.gate["pending"]
        assert [(f.category, f.count) for f in closed.findings] == [("migration_gate", 1)]
        with pytest.raises(SystemExit) as refused:
            call_command("reconcile", "--apply", "--no-progress", stdout=StringIO(), stderr=StringIO())
        assert refused.value.code == 2
        for command in ("backfill_user_ids", "backfill_report"):
            with pytest.raises(CommandError, match="migration gate closed"):
                run_command(command)

        # The job as the 0001 schema has it (today's model has columns 0001 lacks).
        job_at_0001 = (
            MigrationLoader(connection)
            .project_state(("taskengine", "0001_initial"))
            .apps.get_model("taskengine", "Job")
        )
        job = job_at_0001.objects.create(
            task_path="tests.tasks.noop", state="succeeded", attempts=1, finished_at="2026-01-01T00:00:00Z"
        )
        with connection.cursor() as cursor:
            for attempt in range(1, 31):
                cursor.execute(LOG_INSERT, [job.id, attempt, None if attempt % 7 == 0 else 500 + attempt])
        call_command("migrate", verbosity=0)
        gate.reset()

        logs = list(ExecutionLog.objects.filter(job_id=job.pk))
        assert len(logs) == 30
        assert all(log.user_id_str == (None if log.user_id is None else str(log.user_id)) for log in logs)
        [table] = backfill.report()
        assert (table.total, table.filled, table.missing, table.mismatched, table.without_user) == (30, 26, 0, 0, 4)
        after = reconcile.report()
        assert after.gate["ready"] is True
        assert after.finding("user_id_str_missing").count == 0
        assert after.finding("user_id_str_mismatch").count == 0
    finally:
        call_command("migrate", verbosity=0)
        gate.reset()


@pytest.mark.django_db
def test_backfill_stopped_by_max_batches_resumes_and_writes_each_row_once():
    ids = legacy_logs(29)  # 24 with a user id, 5 without
    first = json.loads(run_command("backfill_user_ids", "--batch-size", "5", "--max-batches", "2", "--json"))
    assert (first["pending_at_start"], first["updated"], first["complete"], first["remaining"]) == (24, 10, False, 14)
    second = json.loads(run_command("backfill_user_ids", "--batch-size", "5", "--json"))
    assert (second["updated"], second["complete"], second["remaining"]) == (14, True, 0)
    third = json.loads(run_command("backfill_user_ids", "--json"))
    assert third["updated"] == 0
    # Every write is counted (UPDATE … RETURNING): 10 + 14 writes for 24 rows = once each.
    assert first["updated"] + second["updated"] == 24
    audits = OperatorAction.objects.filter(action="backfill.user_id_str")
    assert audits.count() == 2 + 3
    assert sum(a.state_after["updated"] for a in audits) == 24
    logs = ExecutionLog.objects.filter(pk__in=ids)
    assert all(log.user_id_str == (None if log.user_id is None else str(log.user_id)) for log in logs)


@pytest.mark.django_db
def test_dry_run_counts_and_writes_nothing():
    legacy_logs(12)
    out = json.loads(run_command("backfill_user_ids", "--dry-run", "--batch-size", "4", "--json"))
    assert (out["would_update"], out["updated"], out["remaining"]) == (10, 0, 10)
    assert not OperatorAction.objects.exists()
    out, err = StringIO(), StringIO()
    call_command("backfill_user_ids", "--dry-run", "--batch-size", "4", stdout=out, stderr=err)
    assert "would write 10 row(s) in 3 batch(es)" in out.getvalue()
    assert "would fill [" in err.getvalue() and "10/10 (100%)" in err.getvalue()  # progress on stderr


@pytest.mark.postgres
@pytest.mark.acceptance
@pytest.mark.django_db(transaction=True)
def test_killed_backfill_rerun_finishes_and_never_rewrites_a_row():
    legacy_logs(60)  # 48 rows to fill
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "backfill_user_ids", "--batch-size", "4", "--pause", "0.3"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: ExecutionLog.objects.filter(user_id_str__isnull=False).count() >= 12,
            timeout=60,
            message="the first batches to commit",
        )
    finally:
        proc.kill()
        proc.wait(10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM task_execution_logs WHERE user_id_str IS NOT NULL")
        written_before_kill = dict(cursor.fetchall())
    assert 12 <= len(written_before_kill) < 48

    rerun = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "backfill_user_ids", "--batch-size", "7", "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["updated"], summary["remaining"]) == (48 - len(written_before_kill), 0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM task_execution_logs WHERE id = ANY(%s)", [list(written_before_kill)])
        assert dict(cursor.fetchall()) == written_before_kill  # not one of them was written again
    assert not ExecutionLog.objects.filter(user_id__isnull=False, user_id_str__isnull=True).exists()


@pytest.mark.django_db
def test_backfill_report_command_json_and_csv():
    ids = legacy_logs(5)  # 4 missing, 1 without a user
    ExecutionLog.objects.filter(pk=ids[0]).update(user_id_str="not-1000")
    data = json.loads(run_command("backfill_report", "--json"))
    [table] = data["tables"]
    assert {k: table[k] for k in ("table", "total", "filled", "missing", "mismatched", "without_user", "clean")} == {
        "table": "task_execution_logs",
        "total": 5,
        "filled": 1,
        "missing": 3,
        "mismatched": 1,
        "without_user": 1,
        "clean": False,
    }
    assert table["sample_mismatched_ids"] == [ids[0]]
    assert table["sample_missing_ids"] == ids[1:4]
    rows = list(csv.reader(StringIO(run_command("backfill_report", "--csv"))))
    assert rows[0] == backfill.CSV_COLUMNS
    assert rows[1][:6] == ["task_execution_logs", "5", "1", "3", "1", "1"]
    assert "NOT CLEAN" in run_command("backfill_report")


@pytest.mark.django_db(transaction=True)
def test_new_attempt_rows_carry_both_ids_or_only_the_string():
    jobs = [
        NewJob(task_path="tests.tasks.noop", queue="backfill-test", args="[]", kwargs="{}", acting_user_id=user)
        for user in ("42", "3f2a-uuid-key", None)
    ]
    store.insert_jobs(connection, jobs)
    store.claim_jobs(connection, worker_id="w-bf", queues=["backfill-test"], limit=10, lease_seconds=30)
    logs = {log.user_id_str: log.user_id for log in ExecutionLog.objects.filter(worker_id="w-bf")}
    assert logs == {"42": 42, "3f2a-uuid-key": None, None: None}
    assert backfill.report()[0].clean
