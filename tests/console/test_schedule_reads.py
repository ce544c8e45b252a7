"""The console's schedule page reads: the scheduler's own slot grid, bounded queries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from taskengine.console import reads
from taskengine.models import MissedSlot, Schedule
from taskengine.schedule_slots import SlotSpec, next_slot

pytestmark = pytest.mark.django_db


def test_next_slots_shown_are_the_slots_the_scheduler_enqueues():
    # A 7-minute interval in a +05:30 zone: the scheduler's grid starts at local
    # midnight, not at "now" — the console must show that same grid.
    schedule = Schedule.objects.create(
        name="odd", task_path="tests.tasks.noop", interval_seconds=420, timezone="Asia/Kolkata"
    )
    now = datetime(2026, 11, 23, 10, 2, 13, tzinfo=UTC)
    shown = reads.next_slots(schedule, now)
    expected, slot = [], now
    for _ in range(3):
        slot = next_slot(SlotSpec.of(schedule), slot)
        expected.append(slot)
    assert shown == expected
    assert all(s.utcoffset().total_seconds() == 5.5 * 3600 for s in shown)  # in the schedule's zone


def test_the_schedules_read_costs_the_same_queries_for_one_schedule_or_fifty():
    root = get_user_model().objects.create_superuser("root", "r@example.com", "pw")

    def queries_for(count: int) -> int:
        Schedule.objects.all().delete()
        for i in range(count):
            schedule = Schedule.objects.create(name=f"s{i}", task_path="tests.tasks.noop", interval_seconds=60)
            MissedSlot.objects.create(schedule=schedule, slot=datetime(2026, 1, 1, tzinfo=UTC), reason="skip")
        with CaptureQueriesContext(connection) as captured:
            rows = reads.schedules(root)
        assert len(rows) == count and all(r["missed_slots"] for r in rows)
        return len(captured)

    assert queries_for(1) == queries_for(50)
