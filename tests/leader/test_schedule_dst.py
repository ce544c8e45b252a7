"""Cron schedules across DST changes, by Vixie cron's convention (docs/leadership.md):

- a job at a time of day (minute and hour fields both fixed) runs once on the fall-back
  day, at the first of the two instants its local time names, and once on the
  spring-forward day, at the first valid instant after the gap when its time is skipped;
- a wildcard job (minute or hour field starting with ``*``) runs on elapsed time: at both
  instants of a repeated local time, and not at all for local times that do not exist.

Two zones (America/New_York and Europe/Berlin), both edges; then the leader's scheduler
over a fall-back night: one job per slot, never two for one local time of day."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings

from taskengine.leader.schedule_enqueuer import Scheduler
from taskengine.models import Job, MissedSlot, Schedule
from taskengine.schedule_slots import SlotSpec, next_slot, recent_slots

from .conftest import lead

TICK = "tests.leader.tasks.tick"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def walked_backwards(spec: SlotSpec, after: str, until: str) -> list[datetime]:
    slots, more = recent_slots(spec, after=utc(after), until=utc(until), limit=500)
    assert not more
    return slots


def walked_forwards(spec: SlotSpec, after: str, until: str) -> list[datetime]:
    slots, slot = [], next_slot(spec, utc(after))
    while slot <= utc(until):
        slots.append(slot)
        slot = next_slot(spec, slot)
    return slots


def both_walks(spec: SlotSpec, after: str, until: str) -> list[str]:
    """The slots in (after, until] as local ISO times; walking backwards (the scheduler)
    and forwards (reconcile, the console's next slots) must agree."""
    backwards, forwards = walked_backwards(spec, after, until), walked_forwards(spec, after, until)
    assert backwards == forwards
    zone = ZoneInfo(spec.timezone)
    return [slot.astimezone(zone).isoformat() for slot in backwards]


# (zone, cron at a repeated local time, the fall-back day's UTC window, the slots expected)
FALL_BACK = [
    (
        "America/New_York",
        "30 1 * * *",
        "2026-10-31 12:00",
        "2026-11-02 12:00",
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
    ),
    (
        "Europe/Berlin",
        "30 2 * * *",
        "2026-10-24 12:00",
        "2026-10-26 12:00",
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
    ),
]
SPRING_FORWARD = [
    (
        "America/New_York",
        "30 2 * * *",
        "2026-03-07 12:00",
        "2026-03-09 12:00",
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    ),
    (
        "Europe/Berlin",
        "30 2 * * *",
        "2026-03-28 12:00",
        "2026-03-30 12:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
    ),
]


@pytest.mark.parametrize("zone, cron, after, until, expected", FALL_BACK)
def test_a_daily_job_at_a_repeated_local_time_runs_once_at_the_first_instant(zone, cron, after, until, expected):
    spec = SlotSpec(cron, None, zone)
    assert both_walks(spec, after, until) == expected
    first = datetime.fromisoformat(expected[0]).astimezone(UTC)
    # From the first instant, the next slot is the next day's, not the second instant.
    assert next_slot(spec, first) == datetime.fromisoformat(expected[1]).astimezone(UTC)
    # Walking back from inside the repeated hour (after its second instant) finds no
    # second slot for that day either.
    assert walked_backwards(spec, after, (first + timedelta(hours=1, minutes=10)).strftime("%Y-%m-%d %H:%M")) == [first]


@pytest.mark.parametrize("zone, cron, after, until, expected", SPRING_FORWARD)
def test_a_daily_job_at_a_skipped_local_time_runs_once_at_the_first_valid_instant(zone, cron, after, until, expected):
    assert both_walks(SlotSpec(cron, None, zone), after, until) == expected


@pytest.mark.parametrize(
    "zone, after, until, expected",
    [
        (
            "America/New_York",
            "2026-11-01 04:00",
            "2026-11-01 08:00",
            [
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:30:00-05:00",
            ],
        ),
        (
            "Europe/Berlin",
            "2026-10-24 23:00",
            "2026-10-25 03:00",
            [
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ],
        ),
    ],
)
def test_an_hourly_wildcard_job_runs_every_elapsed_hour_through_the_repeated_hour(zone, after, until, expected):
    spec = SlotSpec("30 * * * *", None, zone)
    assert both_walks(spec, after, until) == expected
    slots = walked_backwards(spec, after, until)
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(hours=1)}


@pytest.mark.parametrize(
    "zone, after, until, expected",
    [
        (
            "America/New_York",
            "2026-03-08 04:00",
            "2026-03-08 10:00",
            ["2026-03-08T00:30:00-05:00", "2026-03-08T04:30:00-04:00"],
        ),
        (
            "Europe/Berlin",
            "2026-03-28 22:00",
            "2026-03-29 04:00",
            ["2026-03-29T00:30:00+01:00", "2026-03-29T04:30:00+02:00"],
        ),
    ],
)
def test_a_wildcard_job_does_not_run_for_skipped_local_times(zone, after, until, expected):
    # 02:30 does not exist that night; a wildcard job is not moved to 03:00.
    assert both_walks(SlotSpec("30 */2 * * *", None, zone), after, until) == expected
    assert both_walks(SlotSpec("*/15 2 * * *", None, zone), after, until) == []


def test_walking_back_from_inside_the_repeated_hour_starts_at_the_right_instant():
    # 06:40 UTC is 01:40 EST, the second 01:40 in New York: the 01:30 EST slot (06:30 UTC)
    # is due, and the walk must not start an hour early (at 01:40 EDT).
    spec = SlotSpec("30 * * * *", None, "America/New_York")
    assert walked_backwards(spec, "2026-11-01 05:30", "2026-11-01 06:40") == [utc("2026-11-01 06:30")]


@pytest.mark.parametrize(
    "zone, daily_cron, start, end, daily_slot, hourly_slots",
    [
        (
            "America/New_York",
            "30 1 * * *",
            "2026-11-01 03:00",
            "2026-11-01 09:00",
            "2026-11-01 05:30",
            ["03:30", "04:30", "05:30", "06:30", "07:30", "08:30"],
        ),
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24 22:00",
            "2026-10-25 03:00",
            "2026-10-25 00:30",
            ["22:30", "23:30", "00:30", "01:30", "02:30"],
        ),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_the_scheduler_enqueues_one_job_for_a_repeated_time_of_day_and_both_for_an_hourly_job(
    zone, daily_cron, start, end, daily_slot, hourly_slots
):
    daily = Schedule.objects.create(
        name="daily", task_path=TICK, cron=daily_cron, timezone=zone, args=["/tmp"], last_slot_at=utc(start)
    )
    hourly = Schedule.objects.create(
        name="hourly", task_path=TICK, cron="30 * * * *", timezone=zone, args=["/tmp"], last_slot_at=utc(start)
    )
    lease = lead()
    scheduler = Scheduler("default", definitions=[])
    now = utc(start)
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 600}):
        while now <= utc(end):  # the leader's ticks through the night, every ten minutes
            scheduler.run_once(lease, now=now)
            now += timedelta(minutes=10)
        assert not MissedSlot.objects.exists()  # every tick was on time
        # A lost write of last_slot_at (or a new leader) re-plans the night: no new job.
        Schedule.objects.update(last_slot_at=utc(start))
        assert scheduler.run_once(lease, now=utc(end)) == {}

    def slots(schedule: Schedule) -> list[datetime]:
        return list(Job.objects.filter(schedule=schedule).order_by("slot").values_list("slot", flat=True))

    assert slots(daily) == [utc(daily_slot)]
    assert [s.astimezone(UTC).strftime("%H:%M") for s in slots(hourly)] == hourly_slots
