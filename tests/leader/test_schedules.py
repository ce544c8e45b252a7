"""Schedules: validation, slot arithmetic, misfire policies, exactly one job per slot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models.functions import Now
from django.test import override_settings

from taskengine.leader.election import NotLeader
from taskengine.leader.schedule_enqueuer import Scheduler, plan_slots
from taskengine.models import Job, MissedSlot, Schedule
from taskengine.schedule_slots import SlotSpec, next_slot, recent_slots
from taskengine.schedules import settings_schedules

from .conftest import expire_leader, lead

TICK = "tests.leader.tasks.tick"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"cron": "61 * * * *"}, "cron", "not a valid cron expression"),
        ({"cron": None, "interval_seconds": None}, "cron", "either a cron expression or an interval"),
        ({"interval_seconds": 60}, "cron", "not both"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown time zone 'Mars/Olympus'"),
        ({"task_path": "tests.leader.tasks.missing"}, "task_path", "cannot import task"),
        ({"task_path": "tests.leader.tasks.not_a_task"}, "task_path", "is not a task"),
        ({"queue": "nowhere"}, "queue", "not in the backend's QUEUES"),
    ],
)
@pytest.mark.django_db
def test_schedule_clean_rejects_bad_input_with_a_clear_message(changes, field, message):
    schedule = Schedule(name="s", task_path=TICK, cron="*/5 * * * *", timezone="Europe/Paris")
    for name, value in changes.items():
        setattr(schedule, name, value)
    with pytest.raises(ValidationError) as info:
        schedule.full_clean()
    assert message in " ".join(info.value.message_dict[field])


@pytest.mark.django_db
def test_a_valid_schedule_passes_full_clean():
    Schedule(name="ok", task_path=TICK, cron="0 9 * * mon-fri", timezone="Europe/Paris").full_clean()
    Schedule(name="ok2", task_path=TICK, cron="", interval_seconds=30).full_clean()


def test_settings_schedules_are_validated_with_the_entry_named():
    with pytest.raises(ImproperlyConfigured, match=r"\['nightly'\].*cron.*'99 \* \* \* \*'"):
        settings_schedules({"nightly": {"task": TICK, "cron": "99 * * * *"}})
    with pytest.raises(ImproperlyConfigured, match=r"unknown key.*every"):
        settings_schedules({"x": {"task": TICK, "every": 5}})
    with pytest.raises(ImproperlyConfigured, match="Unknown time zone"):
        settings_schedules({"x": {"task": TICK, "cron": "* * * * *", "timezone": "Nowhere/Land"}})
    [fields] = settings_schedules({"x": {"task": TICK, "interval": 5, "args": ["/tmp"]}})
    assert fields["interval_seconds"] == 5 and fields["misfire_policy"] == "run_once"


# --- slots ---------------------------------------------------------------------------


def test_interval_slots_are_aligned_to_the_epoch():
    spec = SlotSpec(None, 60)
    slots, more = recent_slots(spec, after=t("2026-03-01 10:00:30"), until=t("2026-03-01 10:03:10"), limit=10)
    assert slots == [t("2026-03-01 10:01:00"), t("2026-03-01 10:02:00"), t("2026-03-01 10:03:00")]
    assert not more
    assert next_slot(spec, t("2026-03-01 10:03:00")) == t("2026-03-01 10:04:00")


def test_interval_slots_are_aligned_in_the_schedules_time_zone():
    spec = SlotSpec(None, 3600, "Asia/Kolkata")  # UTC+05:30
    slots, _ = recent_slots(spec, after=t("2026-03-01 10:00"), until=t("2026-03-01 12:00"), limit=10)
    assert slots == [t("2026-03-01 10:30"), t("2026-03-01 11:30")]  # 16:00 and 17:00 local
    assert next_slot(spec, t("2026-03-01 11:30")) == t("2026-03-01 12:30")


def test_cron_slots_follow_the_time_zone_across_dst():
    spec = SlotSpec("30 2 * * *", None, "Europe/Paris")
    # 02:30 Paris is 01:30 UTC in winter and 00:30 UTC in summer. On 2026-03-29 clocks
    # jump 02:00 -> 03:00, so 02:30 does not exist: that day's slot is 03:00 CEST.
    slots, _ = recent_slots(spec, after=t("2026-03-27 00:00"), until=t("2026-03-30 12:00"), limit=10)
    assert [s.astimezone(UTC).isoformat() for s in slots] == [
        "2026-03-27T01:30:00+00:00",
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
    ]


def test_a_slot_exactly_at_until_is_included_and_long_outages_are_bounded():
    spec = SlotSpec("* * * * *", None)
    slots, more = recent_slots(spec, after=t("2026-01-01 00:00"), until=t("2026-01-08 00:00"), limit=3)
    assert slots[-1] == t("2026-01-08 00:00") and len(slots) == 3 and more


@pytest.mark.parametrize("policy", ["skip", "run_once", "catch_up"])
def test_misfire_policies_for_slots_missed_while_nothing_ran(policy):
    plan = plan_slots(
        SlotSpec(None, 60),
        after=t("2026-01-01 10:00"),
        now=t("2026-01-01 10:10:30"),
        policy=policy,
        catch_up_limit=2,
        grace=60,
    )
    # 10:10 is on time (within the grace); 10:01..10:09 misfired.
    assert plan.enqueue[-1] == t("2026-01-01 10:10")
    hhmm = [s.strftime("%H:%M") for s in plan.enqueue[:-1]]
    expected = {"skip": [], "run_once": [], "catch_up": ["10:08", "10:09"]}[policy]
    assert hhmm == expected
    assert len(plan.missed) == 9 - len(expected)
    # With no slot on time, run_once runs the newest missed slot once.
    late = plan_slots(
        SlotSpec(None, 60),
        after=t("2026-01-01 10:00"),
        now=t("2026-01-01 10:05:30"),
        policy=policy,
        catch_up_limit=2,
        grace=10,
    )
    assert [s.strftime("%H:%M") for s in late.enqueue] == {
        "skip": [],
        "run_once": ["10:05"],
        "catch_up": ["10:04", "10:05"],
    }[policy]


# --- the service ---------------------------------------------------------------------


def make_schedule(**kw) -> Schedule:
    kw.setdefault("name", "every-minute")
    kw.setdefault("task_path", TICK)
    kw.setdefault("args", ["/tmp"])
    if "cron" not in kw:
        kw.setdefault("interval_seconds", 60)
    schedule = Schedule.objects.create(**kw)
    Schedule.objects.filter(pk=schedule.pk).update(created_at=Now() - timedelta(hours=1))
    schedule.refresh_from_db()
    return schedule


@pytest.mark.django_db(transaction=True)
def test_scheduler_enqueues_one_ordinary_job_per_slot_even_when_run_twice():
    schedule = make_schedule(last_slot_at=t("2026-01-01 10:00"))
    lease = lead()
    scheduler = Scheduler("default", definitions=[])
    now = t("2026-01-01 10:02:30")
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 600}):
        first = scheduler.run_once(lease, now=now)
        Schedule.objects.filter(pk=schedule.pk).update(last_slot_at=t("2026-01-01 10:00"))  # as if a write was lost
        second = scheduler.run_once(lease, now=now)
    assert len(first["every-minute"]) == 2 and second == {}
    jobs = Job.objects.filter(schedule=schedule).order_by("slot")
    assert [j.slot for j in jobs] == [t("2026-01-01 10:01"), t("2026-01-01 10:02")]
    job = jobs[0]
    assert (job.state, job.task_path, job.args, job.queue, job.run_after) == (
        "queued",
        TICK,
        ["/tmp"],
        "default",
        t("2026-01-01 10:01"),
    )
    assert Schedule.objects.get(pk=schedule.pk).last_slot_at == t("2026-01-01 10:02")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_scheduled_job_wakes_listening_workers_on_commit():
    import psycopg

    from tests.conftest import subprocess_database_url

    make_schedule(last_slot_at=t("2026-01-01 10:00"))
    with psycopg.connect(
        subprocess_database_url().replace("postgres://", "postgresql://"), autocommit=True
    ) as listener:
        listener.execute("LISTEN taskengine_jobs")
        with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 600}):
            Scheduler("default", definitions=[]).run_once(lead(), now=t("2026-01-01 10:01:10"))
        assert [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)] == ["default"]


@pytest.mark.django_db(transaction=True)
def test_a_new_leader_does_not_enqueue_a_slot_twice():
    schedule = make_schedule(last_slot_at=t("2026-01-01 10:00"))
    old = lead("old")
    Scheduler("default", definitions=[]).run_once(old, now=t("2026-01-01 10:01:10"))
    expire_leader()
    new = lead("new")
    Schedule.objects.filter(pk=schedule.pk).update(last_slot_at=t("2026-01-01 10:00"))
    Scheduler("default", definitions=[]).run_once(new, now=t("2026-01-01 10:02:10"))
    slots = list(Job.objects.filter(schedule=schedule).values_list("slot", flat=True).order_by("slot"))
    assert slots == [t("2026-01-01 10:01"), t("2026-01-01 10:02")]


@pytest.mark.django_db(transaction=True)
def test_a_stale_term_enqueues_nothing_and_does_not_advance():
    schedule = make_schedule(last_slot_at=t("2026-01-01 10:00"))
    stale = lead("old")
    scheduler = Scheduler("default", definitions=[])
    scheduler._synced_term = stale.term  # settings already synced under this term
    expire_leader()
    lead("new")
    assert scheduler.run_once(stale, now=t("2026-01-01 10:05:10")) == {}
    assert not Job.objects.exists() and not MissedSlot.objects.exists()
    assert Schedule.objects.get(pk=schedule.pk).last_slot_at == t("2026-01-01 10:00")
    with pytest.raises(NotLeader):
        Scheduler("default", definitions=[]).run_once(stale, now=t("2026-01-01 10:05:10"))


@pytest.mark.django_db(transaction=True)
def test_missed_slots_are_recorded_once_per_the_misfire_policy():
    schedule = make_schedule(last_slot_at=t("2026-01-01 10:00"), misfire_policy="catch_up", catch_up_limit=2)
    lease = lead()
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 30}):
        Scheduler("default", definitions=[]).run_once(lease, now=t("2026-01-01 10:06:10"))
    enqueued = [
        s.strftime("%H:%M")
        for s in Job.objects.filter(schedule=schedule).order_by("slot").values_list("slot", flat=True)
    ]
    missed = [
        s.strftime("%H:%M")
        for s in MissedSlot.objects.filter(schedule=schedule).order_by("slot").values_list("slot", flat=True)
    ]
    assert enqueued == ["10:04", "10:05", "10:06"]
    assert missed == ["10:01", "10:02", "10:03"]
    assert set(MissedSlot.objects.values_list("reason", flat=True)) == {"misfire:catch_up"}


@pytest.mark.django_db(transaction=True)
def test_a_schedule_whose_task_vanished_is_skipped_without_stopping_others(caplog):
    broken = make_schedule(name="broken", last_slot_at=t("2026-01-01 10:00"))
    Schedule.objects.filter(pk=broken.pk).update(task_path="tests.leader.tasks.gone")
    fine = make_schedule(name="fine", last_slot_at=t("2026-01-01 10:00"))
    created = Scheduler("default", definitions=[]).run_once(lead(), now=t("2026-01-01 10:01:10"))
    assert list(created) == ["fine"]
    assert Job.objects.filter(schedule=fine).count() == 1
    assert "schedule 'broken' cannot enqueue" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_settings_schedules_sync_under_the_lease_and_removed_ones_are_disabled():
    definitions = settings_schedules({"beat": {"task": TICK, "interval": 5, "args": ["/tmp"]}})
    Schedule.objects.create(name="manual", task_path=TICK, interval_seconds=7)
    Schedule.objects.create(name="retired", task_path=TICK, interval_seconds=7, from_settings=True)
    Scheduler("default", definitions=definitions).run_once(lead())
    beat = Schedule.objects.get(name="beat")
    assert (beat.interval_seconds, beat.from_settings, beat.enabled) == (5, True, True)
    assert Schedule.objects.get(name="manual").enabled
    assert not Schedule.objects.get(name="retired").enabled
    changed = settings_schedules({"beat": {"task": TICK, "interval": 9}})
    expire_leader()
    Scheduler("default", definitions=changed).run_once(lead("next"))
    assert Schedule.objects.get(name="beat").interval_seconds == 9
    assert Schedule.objects.filter(name="beat").count() == 1


@pytest.mark.django_db
def test_runworker_refuses_to_start_with_a_bad_settings_schedule():
    from django.core.management import CommandError, call_command

    bad = {"SCHEDULES": {"nightly": {"task": TICK, "cron": "every night"}}}
    with override_settings(TASKENGINE=bad), pytest.raises(CommandError, match=r"\['nightly'\] is invalid: cron"):
        call_command("runworker", "--burst")


@pytest.mark.django_db
def test_the_admin_refuses_a_bad_cron_unknown_zone_and_unknown_task(client, django_user_model):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    form = {
        "name": "nightly",
        "task_path": "tests.leader.tasks.missing",
        "cron": "61 * * * *",
        "timezone": "Mars/Olympus",
        "args": "[]",
        "kwargs": "{}",
        "queue": "default",
        "priority": "0",
        "misfire_policy": "run_once",
        "catch_up_limit": "10",
        "enabled": "on",
    }
    response = client.post("/admin/taskengine/schedule/add/", form)
    assert response.status_code == 200  # the form again, with errors
    errors = response.context["adminform"].form.errors
    assert "not a valid cron expression" in errors["cron"][0]
    assert "Unknown time zone 'Mars/Olympus'" in errors["timezone"][0]
    assert "cannot import task 'tests.leader.tasks.missing'" in errors["task_path"][0]
    assert not Schedule.objects.exists()
    form.update(task_path=TICK, cron="0 3 * * *", timezone="Europe/Paris")
    assert client.post("/admin/taskengine/schedule/add/", form).status_code == 302
    assert Schedule.objects.get().cron == "0 3 * * *"


@pytest.mark.django_db(transaction=True)
def test_a_slot_that_already_has_its_job_is_never_recorded_as_missed():
    schedule = make_schedule(last_slot_at=t("2026-01-01 10:00"), misfire_policy="skip")
    lease = lead()
    scheduler = Scheduler("default", definitions=[])
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 600}):
        scheduler.run_once(lease, now=t("2026-01-01 10:02:10"))
    # last_slot_at set back (a lost write, an operator's edit): the re-plan sees 10:01
    # and 10:02 as late again, but their jobs exist — they ran, they were not missed.
    Schedule.objects.filter(pk=schedule.pk).update(last_slot_at=t("2026-01-01 10:00"))
    with override_settings(TASKENGINE={"SCHEDULE_MISFIRE_GRACE_SECONDS": 30}):
        scheduler.run_once(lease, now=t("2026-01-01 10:05:10"))
    missed = [
        s.strftime("%H:%M")
        for s in MissedSlot.objects.filter(schedule=schedule).order_by("slot").values_list("slot", flat=True)
    ]
    assert missed == ["10:03", "10:04"]
    assert [
        s.strftime("%H:%M")
        for s in Job.objects.filter(schedule=schedule).order_by("slot").values_list("slot", flat=True)
    ] == ["10:01", "10:02", "10:05"]
