"""Fixtures for the migration-gate tests.

``taskengine_at_first_migration`` migrates taskengine back to 0001 (every later migration
pending) and forward again at teardown, so later tests always see the full schema.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connection

from tests.conftest import ROOT, subprocess_env

FIRST = "0001_initial"
SCHEMA_ERRORS = ("UndefinedColumn", "no such column", "does not exist")


@pytest.fixture
def taskengine_at_first_migration(transactional_db) -> Iterator[None]:
    call_command("migrate", "taskengine", FIRST, verbosity=0)
    try:
        yield
    finally:
        call_command("migrate", "taskengine", verbosity=0)


def migrate_in_another_process() -> str:
    """Run ``manage.py migrate`` in a subprocess against the test database; its output."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def job_row(job_id: int) -> tuple[str, int, str | None]:
    """(state, attempts, locked_by) read with columns that exist at every migration."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT state, attempts, locked_by FROM taskengine_job WHERE id = %s", [job_id])
        return cursor.fetchone()


def registered_workers() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM taskengine_worker")
        return cursor.fetchone()[0]


def assert_no_schema_errors(text: str) -> None:
    for needle in SCHEMA_ERRORS:
        assert needle not in text, f"{needle!r} in log:\n{text}"


@pytest.fixture
def engine_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """caplog that also sees the ``taskengine`` loggers (they do not propagate)."""
    engine = logging.getLogger("taskengine")
    engine.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="taskengine")
    try:
        yield caplog
    finally:
        engine.removeHandler(caplog.handler)
