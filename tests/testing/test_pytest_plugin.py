"""The documented setup: a project's top-level conftest enables the fixtures with
``pytest_plugins = ["taskengine.testing.pytest_plugin"]``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = 'pytest_plugins = ["taskengine.testing.pytest_plugin"]\n'
TESTS = textwrap.dedent("""
    from datetime import timedelta

    import pytest

    from tests import tasks


    @pytest.mark.django_db
    def test_fixtures_enqueue_drain_and_advance(taskengine_jobs, taskengine_clock):
        tasks.add.using(run_after=taskengine_clock.now() + timedelta(hours=1)).enqueue(2, 2)
        taskengine_jobs.assert_enqueued(tasks.add, args=[2, 2], run_after=timedelta(hours=1))
        assert taskengine_jobs.drain().ran == 0
        taskengine_clock.advance(timedelta(hours=1))
        assert taskengine_jobs.drain().results[0].return_value == 4
        taskengine_jobs.assert_not_enqueued(tasks.add)
        assert taskengine_clock.run_schedules() == {}
""")


@pytest.mark.sqlite_only  # loading a plugin does not depend on the database; one run is enough
def test_a_projects_conftest_enables_the_fixtures_with_pytest_plugins(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_project.py").write_text(TESTS)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="project.settings",
        TASKENGINE_TEST_DB_SUFFIX=os.environ.get("TASKENGINE_TEST_DB_SUFFIX", "") + "_plugin",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "--ds",
            "project.settings",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
