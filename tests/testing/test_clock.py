"""advance_clock / advance_clock_to / run_schedules: time moves for the engine without sleeping."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test.utils import override_settings

from taskengine.leader.election import Elector, current_leader
from taskengine.models import Job, Schedule
from taskengine.testing import (
    TEST_LEADER_ID,
    advance_clock,
    advance_clock_to,
    drain,
    engine_now,
    enqueued_jobs,
    run_schedules,
)
from tests import tasks

pytestmark = pytest.mark.django_db


def test_the_clock_only_moves_forward():
    for amount in (-1, timedelta(seconds=-1), float("nan")):
        with pytest.raises(ValueError, match="the clock only moves forward"):
            advance_clock(amount)


def test_advance_clock_takes_seconds_or_a_timedelta():
    result = tasks.add.enqueue(1, 2)
    before = Job.objects.get(pk=result.id).enqueued_at
    advance_clock(30)
    advance_clock(timedelta(minutes=1))
    assert before - Job.objects.get(pk=result.id).enqueued_at == timedelta(seconds=90)


def test_advance_clock_to_moves_no_further_than_needed_and_never_back():
    result = tasks.add.using(run_after=engine_now() + timedelta(seconds=100)).enqueue(1, 2)
    assert 0 < advance_clock_to(Job.objects.get(pk=result.id).run_after) <= 101
    # The stored run_after moved with the clock (a datetime held in Python did not):
    # it has been reached, so nothing moves.
    assert advance_clock_to(Job.objects.get(pk=result.id).run_after) == 0.0
    assert drain().ran == 1


def test_an_interval_schedule_enqueues_its_slot_once_the_clock_reaches_it():
    # Hourly slots are whole UTC hours; the schedule starts now, so its first slot is
    # the next whole hour, which the clock reaches within an hour's advance.
    schedule = Schedule.objects.create(name="hourly-noop", task_path="tests.tasks.noop", interval_seconds=3600)
    assert run_schedules() == {}
    advance_clock(timedelta(hours=1))
    created = run_schedules()
    assert list(created) == ["hourly-noop"]
    [job] = enqueued_jobs(tasks.noop)
    assert created["hourly-noop"] == [job.pk]
    assert job.schedule_id == schedule.pk
    # Moved by whole periods, the stored slot is still on the grid.
    assert (job.slot.minute, job.slot.second, job.slot.microsecond) == (0, 0, 0)
    assert run_schedules() == {}  # one job per slot
    assert drain().succeeded == 1


@override_settings(TASKENGINE={"SCHEDULES": {"nightly-noop": {"task": "tests.tasks.noop", "cron": "0 3 * * *"}}})
def test_run_schedules_syncs_settings_schedules_and_follows_the_misfire_policy():
    assert run_schedules() == {}
    assert Schedule.objects.filter(name="nightly-noop", from_settings=True).exists()
    advance_clock(timedelta(days=1))
    # A day later, 03:00 has passed while no scheduler ran: the default policy
    # (run_once) enqueues that slot once.
    assert list(run_schedules()) == ["nightly-noop"]
    [job] = enqueued_jobs(tasks.noop)
    assert (job.slot.hour, job.slot.minute) == (3, 0)


def test_run_schedules_acts_under_a_leader_term_and_resigns_it():
    run_schedules()
    leader = current_leader("default")
    assert (leader["holder"], leader["live"]) == (TEST_LEADER_ID, False)
    run_schedules()
    assert current_leader("default")["term"] == leader["term"] + 1


def test_run_schedules_refuses_while_another_leader_holds_a_live_term():
    assert Elector("default", "worker-elsewhere").step()
    with pytest.raises(RuntimeError, match="'worker-elsewhere' holds a live one"):
        run_schedules()
