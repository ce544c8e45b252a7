"""pytest fixtures for projects that use taskengine.

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["taskengine.testing.pytest_plugin"]

The fixtures need database access like any Django test (pytest-django's
``django_db`` mark, or its ``db`` / ``transactional_db`` fixtures); they work inside the
test's transaction and outside one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from taskengine.models import Job
    from taskengine.testing.drain import DrainResult


class TaskengineJobs:
    """The ``taskengine_jobs`` fixture: the assertion helpers and drain() on one database."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def enqueued(self, task: Any = None, **filters: Any) -> list[Job]:
        from taskengine.testing import enqueued_jobs

        return enqueued_jobs(task, using=self.using, **filters)

    def assert_enqueued(self, task: Any = None, **expected: Any) -> list[Job]:
        from taskengine.testing import assert_enqueued

        return assert_enqueued(task, using=self.using, **expected)

    def assert_not_enqueued(self, task: Any = None, **expected: Any) -> None:
        from taskengine.testing import assert_not_enqueued

        assert_not_enqueued(task, using=self.using, **expected)

    def drain(self, **options: Any) -> DrainResult:
        from taskengine.testing import drain

        return drain(using=self.using, **options)


class TaskengineClock:
    """The ``taskengine_clock`` fixture: the engine's clock on one database."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def now(self) -> datetime:
        """The instant claims compare run_after with (``engine_now``)."""
        from taskengine.testing import engine_now

        return engine_now(using=self.using)

    def advance(self, by: float | timedelta) -> None:
        from taskengine.testing import advance_clock

        advance_clock(by, using=self.using)

    def advance_to(self, when: datetime) -> float:
        from taskengine.testing import advance_clock_to

        return advance_clock_to(when, using=self.using)

    def run_schedules(self) -> dict[str, list[int]]:
        from taskengine.testing import run_schedules

        return run_schedules(using=self.using)


@pytest.fixture
def taskengine_jobs() -> TaskengineJobs:
    """Assert what was enqueued and drain due jobs inline (``taskengine.testing``)."""
    return TaskengineJobs()


@pytest.fixture
def taskengine_clock() -> TaskengineClock:
    """Move the engine's clock forward and run the schedule pass (``taskengine.testing``)."""
    return TaskengineClock()
