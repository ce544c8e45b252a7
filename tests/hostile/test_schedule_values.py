"""A schedule whose stored arguments no job may carry (SQLite's JSON can hold a lone
surrogate or a NUL escape; PostgreSQL's jsonb refuses them when the schedule is saved) is
refused by the same rule as enqueue: its slots make no job and the error is logged
once; the other schedules go on."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models.functions import Now
from django.test import override_settings

from taskengine.maintenance.schedules import Scheduler
from taskengine.models import Job, Schedule
from tests.leader.conftest import lead

TICK = "tests.leader.tasks.tick"


def make_schedule(name: str, args: list) -> Schedule:
    schedule = Schedule.objects.create(
        name=name, task_path=TICK, args=args, interval_seconds=60, last_slot_at=datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    )
    Schedule.objects.filter(pk=schedule.pk).update(created_at=Now() - timedelta(hours=1))
    return schedule


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_a_schedule_with_unstorable_arguments_makes_no_job_and_the_others_run(caplog):
    make_schedule("surrogate", ["bad \udcff"])
    make_schedule("nul", [{"k": "a\x00b"}])
    good = make_schedule("good", ["/tmp"])
    scheduler, lease = Scheduler("default", definitions=[]), lead()
    now = datetime(2026, 1, 1, 10, 1, 30, tzinfo=UTC)
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 600}), caplog.at_level(logging.ERROR):
        created = scheduler.run_once(lease, now=now)
        scheduler.run_once(lease, now=now)
    assert list(created) == ["good"] and Job.objects.filter(schedule=good).count() == 1
    assert Job.objects.count() == 1
    errors = [r.getMessage() for r in caplog.records if "cannot enqueue" in r.getMessage()]
    assert len(errors) == 2, errors  # once each, not once per tick
    assert any("'surrogate'" in e and "surrogate (" in e and "args[0]" in e for e in errors), errors
    assert any("'nul'" in e and "NUL" in e and "args[0]['k']" in e for e in errors), errors
