"""``manage.py check --deploy``: the settings a deployment of the engine gets wrong, each
reported with its id and a hint (taskengine/checks.py, listed in docs/gate.md)."""

from __future__ import annotations

import subprocess
import sys

from taskengine.checks import check_queue_settings, deployment_messages
from tests.conftest import ROOT

BACKEND = "taskengine.backend.DatabaseBackend"
SQLITE = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}
POSTGRES = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "db", "PORT": 5432, "CONN_MAX_AGE": 0}
TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": ["default"]}}


def messages(databases, tasks=TASKS, *, engine_database="default", poll_only=False):
    found = deployment_messages(databases, tasks, engine_database=engine_database, poll_only=poll_only)
    for message in found:
        assert message.hint, message
    return found


def ids(found) -> list[str]:
    return sorted(m.id for m in found)


def test_sqlite_without_immediate_transactions_is_error_E003():
    (deferred,) = messages({"default": SQLITE})
    assert deferred.id == "taskengine.E003" and deferred.is_serious()
    assert "transaction_mode" in deferred.hint and "IMMEDIATE" in deferred.hint
    (explicit,) = messages({"default": {**SQLITE, "OPTIONS": {"transaction_mode": "DEFERRED"}}})
    assert explicit.id == "taskengine.E003" and "'DEFERRED'" in explicit.msg
    for mode in ("IMMEDIATE", "immediate"):
        assert messages({"default": {**SQLITE, "OPTIONS": {"transaction_mode": mode}}}) == []


def test_sqlite_databases_the_engine_does_not_use_are_not_checked():
    databases = {"default": POSTGRES, "cache": SQLITE}
    assert messages(databases) == []


def test_every_database_of_an_engine_backend_is_checked():
    tasks = {**TASKS, "bulk": {"BACKEND": BACKEND, "OPTIONS": {"database": "jobs2"}}}
    (e003,) = messages({"default": POSTGRES, "jobs2": SQLITE}, tasks)
    assert e003.id == "taskengine.E003" and "'jobs2'" in e003.msg


def test_tasks_default_enqueueing_on_another_database_than_the_engine_is_error_E004():
    tasks = {"default": {"BACKEND": BACKEND, "OPTIONS": {"database": "jobs"}}}
    found = messages({"default": POSTGRES, "jobs": POSTGRES}, tasks)
    (disagree,) = found
    assert disagree.id == "taskengine.E004" and disagree.is_serious()
    assert "'jobs'" in disagree.msg and "'default'" in disagree.msg
    assert messages({"default": POSTGRES, "jobs": POSTGRES}, tasks, engine_database="jobs") == []


def test_a_second_backend_on_its_own_database_is_not_a_disagreement():
    # docs/runbooks/high-contention.md: a second TASKS alias on another database, with
    # its own runworker --database.
    tasks = {**TASKS, "bulk": {"BACKEND": BACKEND, "OPTIONS": {"database": "jobs2"}}}
    assert messages({"default": POSTGRES, "jobs2": POSTGRES}, tasks) == []


def test_an_engine_database_missing_from_databases_is_error_E004():
    # TASKS['default'] (on 'default') and TASKENGINE['DATABASE'] ('jobs') also disagree.
    found = messages({"default": POSTGRES}, TASKS, engine_database="jobs")
    assert ids(found) == ["taskengine.E004", "taskengine.E004"]
    assert any("DATABASES does not define" in m.msg and "'jobs'" in m.msg for m in found)


def test_backends_other_than_taskengine_are_left_alone():
    tasks = {
        "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend", "OPTIONS": {"database": "elsewhere"}}
    }
    assert messages({"default": POSTGRES}, tasks) == []


def test_a_pooler_port_without_poll_only_is_warning_W006():
    pooled = {**POSTGRES, "PORT": "6432"}
    (pooler,) = messages({"default": pooled})
    assert pooler.id == "taskengine.W006" and not pooler.is_serious()
    assert "POLL_ONLY" in pooler.hint
    assert messages({"default": pooled}, poll_only=True) == []
    assert messages({"default": {**POSTGRES, "PORT": 6432}}, poll_only=True) == []
    assert ids(messages({"default": {**POSTGRES, "PORT": 6432}})) == ["taskengine.W006"]
    assert messages({"default": POSTGRES}) == []


def test_conn_max_age_with_djangos_pool_is_error_E005():
    (pooled,) = messages({"default": {**POSTGRES, "CONN_MAX_AGE": 60, "OPTIONS": {"pool": True}}})
    assert pooled.id == "taskengine.E005" and pooled.is_serious() and "OPTIONS['pool']" in pooled.msg
    (forever,) = messages({"default": {**POSTGRES, "CONN_MAX_AGE": None, "OPTIONS": {"pool": {"max_size": 4}}}})
    assert forever.id == "taskengine.E005"
    assert messages({"default": {**POSTGRES, "CONN_MAX_AGE": 0, "OPTIONS": {"pool": True}}}) == []


def test_conn_max_age_django_cannot_use_is_error_E005():
    for bad in (-1, "600", True):
        (invalid,) = messages({"default": {**POSTGRES, "CONN_MAX_AGE": bad}})
        assert invalid.id == "taskengine.E005" and repr(bad) in invalid.msg
    for good in (0, 600, 0.5, None):
        assert messages({"default": {**POSTGRES, "CONN_MAX_AGE": good}}) == []


def run_check(*args: str, database_url: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--tag", "taskengine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_deployment_checks_run_with_check_deploy_only():
    """Settings-only: no server needs to answer on the pooler port for the check."""
    url = "postgres://app@127.0.0.1:6432/app"
    deploy = run_check("--deploy", database_url=url)
    assert deploy.returncode == 0, deploy.stderr
    assert "taskengine.W006" in deploy.stderr + deploy.stdout
    plain = run_check(database_url=url)
    assert plain.returncode == 0, plain.stderr
    assert "taskengine.W006" not in plain.stderr + plain.stdout


def test_a_queue_setting_runworker_would_refuse_is_error_E007(settings):
    settings.TASKENGINE = {"QUEUES": {"emails": {"concurrency": 0}}}
    [message] = check_queue_settings()
    assert message.id == "taskengine.E007" and "concurrency" in message.msg
    settings.TASKENGINE = {"QUEUES": {"emails": {"paused": True, "tenant": "acme", "concurrency": 5, "rate": "100/m"}}}
    assert check_queue_settings() == []
