"""A real ``runworker`` started before ``migrate``: it waits (one log line), claims nothing,
registers nothing, and runs the queued jobs once ``migrate`` has run in another process."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from taskengine.compat import TaskResultStatus
from tests import tasks
from tests.conftest import wait_for
from tests.gate.conftest import (
    assert_no_schema_errors,
    job_row,
    migrate_in_another_process,
    registered_workers,
)

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

WAITING = "waiting for migrations"
RECHECK = "gate still closed"


def test_worker_started_before_migrate_waits_then_runs_queued_jobs_without_restart(transactional_db, worker_process):
    results = [tasks.add.enqueue(n, 3) for n in range(3)]
    call_command("migrate", "taskengine", "0001_initial", verbosity=0)
    try:
        worker = worker_process("--backoff-base", "0.05", "--concurrency", "1", env={"TASKENGINE_LOG_LEVEL": "DEBUG"})
        wait_for(lambda: worker.log().count(RECHECK) >= 3, timeout=30, message="three gate re-checks")
        log = worker.log()
        assert log.count(WAITING) == 1, log
        assert "taskengine.0002_execution_log_user_id_str" in log
        for result in results:
            assert job_row(result.id) == ("queued", 0, None), "a waiting worker claims nothing"
        assert registered_workers() == 0, "a waiting worker does not register"
        assert worker.proc.poll() is None

        migrate_output = migrate_in_another_process()
    finally:
        call_command("migrate", "taskengine", verbosity=0)

    def finished():
        for result in results:
            result.refresh()
        return all(result.status == TaskResultStatus.SUCCESSFUL for result in results)

    wait_for(finished, timeout=30, message="the queued jobs to succeed after migrate")
    assert [result.return_value for result in results] == [3, 4, 5]
    assert worker.proc.poll() is None, "the same process, not a restart"
    worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert log.count(WAITING) == 1, log
    assert "migration gate open" in log
    assert_no_schema_errors(log)
    assert_no_schema_errors(migrate_output)


def test_gate_timeout_exits_nonzero_while_migrations_are_pending(taskengine_at_first_migration, worker_process):
    worker = worker_process("--gate-timeout", "1")
    code = worker.wait(60)
    log = worker.log()
    assert code != 0, log
    assert "migrations still pending" in log and "taskengine.0002_execution_log_user_id_str" in log
    assert log.count(WAITING) == 1, log
    assert registered_workers() == 0
    assert_no_schema_errors(log)
