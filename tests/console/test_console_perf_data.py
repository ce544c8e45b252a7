"""The data ``manage.py console_perf`` times the console on (taskengine/bench/console_perf.sql),
built at a small size in the test database: the SQL runs, and the rows have the shape
docs/performance.md describes."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection

from taskengine.db.queries import package_statements
from taskengine.models import ExecutionLog, Job, OperatorAction

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_the_console_perf_data_builds_with_the_documented_shape():
    fill = package_statements("taskengine.bench", "console_perf.sql")
    assert sorted(fill) == ["console_perf_fill_attempts", "console_perf_fill_jobs"]
    with connection.cursor() as cursor:
        cursor.execute(fill["console_perf_fill_jobs"], {"rows": 2000})
        cursor.execute(fill["console_perf_fill_attempts"], {})
    assert Counter(Job.objects.values_list("state", flat=True)) == {
        "succeeded": 1860,
        "failed": 60,
        "cancelled": 40,
        "queued": 30,
        "running": 10,
    }
    assert Job.objects.values("tenant").distinct().count() == 50
    assert ExecutionLog.objects.filter(outcome="failed").count() == 60
    assert OperatorAction.objects.filter(actor_repr="perf").count() == 20
