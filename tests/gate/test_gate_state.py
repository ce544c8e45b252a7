"""Gate state against a fully migrated database: cache, reset, conflicts, database ahead
of the code, unreachable databases, and the system checks that report them."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext, override_settings

from taskengine import gate
from taskengine.checks import check_migration_state
from taskengine.compat import TASKS_MODULE
from tests.conftest import database_vendor

pytestmark = pytest.mark.django_db

CONFLICTS = {"MIGRATION_MODULES": {"project": "tests.gate.conflicting_migrations"}}
FUTURE = ("taskengine", "9999_from_the_future")


def ids(messages) -> set[str]:
    return {m.id for m in messages if (m.id or "").startswith("taskengine.")}


def test_fully_migrated_database_is_ready_with_nothing_to_report():
    status = gate.status("default")
    assert status.ready and status.reason == ""
    assert (status.pending, status.conflicts, status.unknown_applied, status.error) == ([], {}, [], None)
    assert gate.is_ready("default")


def test_open_gate_is_cached_without_queries_until_reset():
    assert gate.is_ready("default")
    MigrationRecorder(connection).record_applied(*FUTURE)
    with CaptureQueriesContext(connection) as queries:
        assert gate.is_ready("default"), "an open gate stays open in this process"
    assert len(queries) == 0
    assert not gate.is_ready("default", use_cache=False)
    gate.reset()
    assert not gate.is_ready("default")


def test_closed_gate_is_not_cached():
    recorder = MigrationRecorder(connection)
    recorder.record_applied(*FUTURE)
    assert not gate.is_ready("default")
    recorder.record_unapplied(*FUTURE)
    assert gate.is_ready("default"), "a closed gate re-checks on every call"


def test_applied_migration_unknown_to_the_code_closes_the_gate():
    MigrationRecorder(connection).record_applied(*FUTURE)
    status = gate.status("default")
    assert not status.ready
    assert status.unknown_applied == ["taskengine.9999_from_the_future"]
    assert status.pending == [] and status.conflicts == {}
    assert "ahead of the code" in status.reason and "9999_from_the_future" in status.reason


def test_applied_rows_of_apps_without_migrations_in_the_code_are_ignored():
    MigrationRecorder(connection).record_applied("uninstalled_app", "0001_initial")
    assert gate.status("default").ready


def test_conflicting_migration_leaves_close_the_gate_and_are_named():
    with override_settings(**CONFLICTS):
        status = gate.status("default")
    assert not status.ready
    assert status.conflicts == {"project": ["0002_left", "0002_right"]}
    assert "makemigrations --merge" in status.reason
    assert "project.0001_initial" in status.pending


def test_unreachable_or_unknown_database_closes_the_gate_without_raising():
    status = gate.status("no_such_alias")
    assert not status.ready and "no_such_alias" in status.error
    assert not gate.is_ready("no_such_alias")
    assert not gate.wait_until_ready("no_such_alias", timeout=0.3)


def test_status_as_dict_is_json_ready():
    body = gate.status("default").as_dict()
    assert body == {
        "alias": "default",
        "ready": True,
        "pending": [],
        "conflicts": {},
        "unknown_applied": [],
        "error": None,
        "reason": "",
    }


def test_database_checks_do_not_run_without_a_database_alias():
    MigrationRecorder(connection).record_applied(*FUTURE)
    with CaptureQueriesContext(connection) as queries:
        messages = run_checks()
    assert not ids(messages) & {"taskengine.E001", "taskengine.W001", "taskengine.W002", "taskengine.W003"}
    assert not [q for q in queries.captured_queries if "django_migrations" in q["sql"]]


def test_check_reports_database_ahead_of_code_as_warning_W002():
    MigrationRecorder(connection).record_applied(*FUTURE)
    messages = run_checks(databases=["default"])
    (ahead,) = [m for m in messages if m.id == "taskengine.W002"]
    assert "9999_from_the_future" in ahead.msg and ahead.hint
    assert not ahead.is_serious()


def test_check_reports_conflicting_leaves_as_error_E001_and_blocks_check():
    with override_settings(**CONFLICTS):
        messages = run_checks(databases=["default"])
        (conflict,) = [m for m in messages if m.id == "taskengine.E001"]
        assert "0002_left" in conflict.msg and "makemigrations --merge" in conflict.hint
        with pytest.raises(SystemCheckError, match=re.escape("taskengine.E001")):
            call_command("check", databases=["default"])


def test_check_reports_unreadable_migration_state_as_W003():
    # Django's own model checks would raise for an unknown alias: call ours directly.
    (unreadable,) = check_migration_state(databases=["no_such_alias"])
    assert unreadable.id == "taskengine.W003" and "no_such_alias" in unreadable.msg


def test_check_lease_shorter_than_three_heartbeats_is_error_E002():
    with override_settings(TASKENGINE={"LEASE_SECONDS": 10, "HEARTBEAT_SECONDS": 5}):
        messages = run_checks()
        (lease,) = [m for m in messages if m.id == "taskengine.E002"]
        assert lease.is_serious() and "15" in lease.hint
    with override_settings(TASKENGINE={"LEASE_SECONDS": 15, "HEARTBEAT_SECONDS": 5}):
        assert "taskengine.E002" not in ids(run_checks())


def test_check_tasks_backend_not_taskengine_is_warning_W005():
    other = {"default": {"BACKEND": f"{TASKS_MODULE}.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=other):
        assert "taskengine.W005" in ids(run_checks())
    assert "taskengine.W005" not in ids(run_checks())


@pytest.mark.sqlite_only
def test_check_sqlite_with_debug_off_is_warning_W004():
    with override_settings(DEBUG=False):
        assert "taskengine.W004" in ids(run_checks())
    with override_settings(DEBUG=True):
        assert "taskengine.W004" not in ids(run_checks())


@pytest.mark.postgres
def test_check_postgres_with_debug_off_has_no_W004():
    assert database_vendor() == "postgresql"
    with override_settings(DEBUG=False):
        assert "taskengine.W004" not in ids(run_checks())


def test_makemigrations_merge_is_not_blocked_by_the_conflict_check():
    out = StringIO()
    with override_settings(**CONFLICTS):
        call_command("makemigrations", "project", merge=True, dry_run=True, interactive=False, verbosity=3, stdout=out)
    assert "0002_left" in out.getvalue() and "0002_right" in out.getvalue()


def test_readyz_reports_database_ahead_of_code_and_conflicts_as_503(client):
    MigrationRecorder(connection).record_applied(*FUTURE)
    ahead = client.get("/readyz")
    assert ahead.status_code == 503
    assert ahead.json()["unknown_applied"] == ["taskengine.9999_from_the_future"]
    MigrationRecorder(connection).record_unapplied(*FUTURE)
    with override_settings(**CONFLICTS):
        conflict = client.get("/readyz")
    assert conflict.status_code == 503
    assert conflict.json()["conflicts"] == {"project": ["0002_left", "0002_right"]}
    assert client.get("/readyz").json() == {"ready": True, "database": "default", "reason": ""}
