"""A schedule whose stored arguments no job may carry (SQLite's JSON can hold a lone
surrogate or a NUL escape; PostgreSQL's jsonb refuses them when the schedule is saved) is
refused by the same rule as enqueue: its slots make no job and the error is logged
once; the other schedules go on. Such a schedule is refused when it is defined, too:
TASKENGINE["SCHEDULES"] as it loads (and by a system check), Schedule.clean in a form."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models.functions import Now
from django.test import override_settings

from taskengine.backend import InvalidTaskArguments
from taskengine.leader.schedule_enqueuer import Scheduler
from taskengine.models import Job, Schedule
from taskengine.schedules import settings_schedules
from tests.leader.conftest import lead

from . import tasks
from .values import REFUSED, STORED, read_back

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


# --- at definition time: TASKENGINE["SCHEDULES"], Schedule.clean, the system check --------
# A schedule's arguments are checked when it is defined, by the rule enqueue applies
# (taskengine/values.py), with enqueue's own description of the place and the reason.

ECHO = "tests.hostile.tasks.echo"
# Where a value can sit in a schedule's arguments (as in test_enqueue_values).
PLACES = {
    "positional": lambda v: ((v,), {}),
    "keyword": lambda v: ((), {"field": v}),
    "nested": lambda v: ((1, {"outer": [0, {"inner": v}]}), {}),
}
# Values beyond the hostile ones enqueue refuses too: not JSON, keys JSON would merge.
REFUSED_TOO = {
    "not_json": (object(), "Unsupported type"),
    "colliding_keys": ({1: "int key", "1": "str key"}, "same JSON key"),
}
DEFINITION_REFUSED = {**REFUSED, **REFUSED_TOO}


def enqueue_refusal(args: tuple, kwargs: dict) -> str:
    """What enqueue says of these arguments: the place and the reason."""
    with pytest.raises(InvalidTaskArguments) as info:
        tasks.echo.enqueue(*args, **kwargs)
    message = str(info.value)
    return message[message.index("storable: ") + len("storable: ") : message.rindex(". Nothing was enqueued.")]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", DEFINITION_REFUSED)
def test_a_settings_schedule_with_arguments_enqueue_refuses_is_refused_when_loaded(kind):
    value, reason = DEFINITION_REFUSED[kind]
    for place, build in PLACES.items():
        args, kwargs = build(value)
        description = enqueue_refusal(args, kwargs)
        assert reason in description, description
        entry = {"task": ECHO, "interval": 60, "args": list(args), "kwargs": kwargs}
        with pytest.raises(ImproperlyConfigured) as info:
            settings_schedules({"hostile": entry})
        message = str(info.value)
        field = "kwargs" if place == "keyword" else "args"
        assert message.startswith("TASKENGINE[\"SCHEDULES\"]['hostile'] is invalid: "), message
        assert f"{field}: " in message and description in message, (place, message)
    assert not Job.objects.exists()


# Not nested_10000_levels: Django's JSONField.validate (Model.clean_fields, before
# Schedule.clean) raises RecursionError on it; a form's JSON field cannot parse it either.
CLEAN_REFUSED = [kind for kind in DEFINITION_REFUSED if kind != "nested_10000_levels"]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", CLEAN_REFUSED)
def test_a_schedule_with_arguments_enqueue_refuses_fails_clean_on_its_field(kind):
    value = DEFINITION_REFUSED[kind][0]
    for place, build in PLACES.items():
        args, kwargs = build(value)
        description = enqueue_refusal(args, kwargs)
        schedule = Schedule(name="hostile", task_path=ECHO, interval_seconds=60, args=list(args), kwargs=kwargs)
        with pytest.raises(ValidationError) as info:
            schedule.full_clean()
        field = "kwargs" if place == "keyword" else "args"
        assert set(info.value.message_dict) == {field}, (place, info.value.message_dict)
        assert description in " ".join(info.value.message_dict[field]), (place, info.value.message_dict)


def test_a_key_enqueue_refuses_is_refused_in_a_schedules_kwargs():
    for bad, reason in (("bad\x00key", "NUL"), ("bad \udcff key", "surrogate")):
        with pytest.raises(ImproperlyConfigured, match=rf"kwargs: a key of kwargs: .*{reason}"):
            settings_schedules({"hostile": {"task": ECHO, "interval": 60, "kwargs": {bad: 1}}})
    with pytest.raises(ImproperlyConfigured, match=r"kwargs: .*keys must be strings"):
        settings_schedules({"hostile": {"task": ECHO, "interval": 60, "kwargs": {1: "a"}}})


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"args": "/tmp"}, "args must be a list"),
        ({"kwargs": [("a", 1)]}, "kwargs must be a mapping"),
    ],
)
def test_schedule_arguments_of_the_wrong_shape_are_refused_not_converted(entry, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        settings_schedules({"hostile": {"task": ECHO, "interval": 60, **entry}})


def test_the_system_check_reports_a_bad_settings_schedule_with_the_entry_named():
    from django.core.checks import run_checks

    bad = {"SCHEDULES": {"hostile": {"task": ECHO, "interval": 60, "args": [float("nan")]}}}
    with override_settings(TASKENGINE=bad):
        [error] = [m for m in run_checks(tags=["taskengine"]) if m.id == "taskengine.E006"]
    assert error.is_serious()
    assert "TASKENGINE[\"SCHEDULES\"]['hostile'] is invalid: args: args[0]: nan is not a finite number" in error.msg
    good = {"SCHEDULES": {"fine": {"task": ECHO, "interval": 60, "args": ["/tmp"]}}}
    with override_settings(TASKENGINE=good):
        assert [m for m in run_checks(tags=["taskengine"]) if m.id == "taskengine.E006"] == []


@pytest.mark.django_db(transaction=True)
def test_a_schedule_with_storable_arguments_is_defined_and_its_slot_job_carries_them_exactly():
    for kind in STORED:
        given = STORED[kind][0]
        args, kwargs = (1, {"outer": [0, {"inner": given}]}, (given,)), {"field": given}
        [fields] = settings_schedules({kind: {"task": ECHO, "interval": 60, "args": list(args), "kwargs": kwargs}})
        want = tasks.echo.enqueue(*args, **kwargs)  # what enqueue stores for the same call
        assert (fields["args"], fields["kwargs"]) == (want.args, want.kwargs), kind
        Schedule(**fields).full_clean()
    Job.objects.all().delete()
    stored = {"task": ECHO, "interval": 60, "args": [STORED["utf8_bytes"][0], (1, 2)], "kwargs": {"x": 10**30}}
    scheduler, lease = Scheduler("default", definitions=settings_schedules({"stored": stored})), lead()
    scheduler.run_once(lease)  # syncs the definition
    Schedule.objects.filter(name="stored").update(created_at=Now() - timedelta(hours=1))
    scheduler.run_once(lease)  # its newest slot (run_once policy)
    [job] = Job.objects.filter(schedule__name="stored")
    assert (job.args, job.kwargs) == ([read_back("utf8_bytes"), [1, 2]], {"x": 10**30})


@pytest.mark.django_db
def test_the_admin_form_shows_enqueues_refusal_on_the_arguments_fields(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    form = {
        "name": "hostile",
        "task_path": ECHO,
        "cron": "",
        "interval_seconds": "60",
        "timezone": "UTC",
        "args": "[1, [NaN]]",  # Django's JSON form field parses NaN
        "kwargs": '{"to": ["a\\u0000b"]}',
        "queue": "default",
        "priority": "0",
        "misfire_policy": "run_once",
        "catch_up_limit": "10",
        "enabled": "on",
    }
    response = client.post("/admin/taskengine/schedule/add/", form)
    assert response.status_code == 200  # the form again, with errors
    errors = response.context["adminform"].form.errors
    assert errors["args"] == ["args[1][0]: nan is not a finite number (JSON has no NaN or infinity)"]
    assert errors["kwargs"] == [
        "kwargs['to'][0]: 'a\\x00b' contains a NUL character (\\u0000), which PostgreSQL cannot store"
    ]
    assert not Schedule.objects.exists()


# --- a schedule's own text fields and priority, by the limits enqueue applies ----------------
# name, tenant and queue follow the stored-text rule (text_problem) and their columns'
# lengths; priority is a whole number in -100..100, as a job's.

BAD_FIELDS = [
    ({"tenant": "a\x00b"}, "tenant", "NUL"),
    ({"tenant": "bad \udcff"}, "tenant", "surrogate"),
    ({"tenant": "t" * 65}, "tenant", "longer than 64"),
    ({"queue": "q\x00"}, "queue", "NUL"),
    ({"queue": "q" * 65}, "queue", "longer than 64"),
    ({"priority": 500}, "priority", "-100"),
    ({"priority": -101}, "priority", "-100"),
    ({"priority": "high"}, "priority", "whole number"),
    ({"priority": True}, "priority", "whole number"),
]


@pytest.mark.parametrize("entry, field, reason", BAD_FIELDS)
def test_a_settings_schedules_bad_tenant_queue_or_priority_is_refused_on_its_field(entry, field, reason):
    with pytest.raises(ImproperlyConfigured) as info:
        settings_schedules({"bad": {"task": TICK, "interval": 60, **entry}})
    message = str(info.value)
    assert message.startswith("TASKENGINE[\"SCHEDULES\"]['bad'] is invalid: "), message
    assert f"{field}: " in message and reason in message, message


@pytest.mark.parametrize("name, reason", [("a\x00b", "NUL"), ("bad \udcff", "surrogate"), ("n" * 101, "100")])
def test_a_settings_schedules_bad_name_is_refused(name, reason):
    with pytest.raises(ImproperlyConfigured, match=rf"name: .*{reason}"):
        settings_schedules({name: {"task": TICK, "interval": 60}})


@pytest.mark.parametrize("entry, field, reason", BAD_FIELDS)
def test_a_schedule_with_a_bad_tenant_queue_or_priority_fails_clean_on_its_field(entry, field, reason):
    schedule = Schedule(name="bad", task_path=TICK, interval_seconds=60, **entry)
    with pytest.raises(ValidationError) as info:
        schedule.clean()
    assert set(info.value.message_dict) == {field}, info.value.message_dict
    assert reason in " ".join(info.value.message_dict[field])


def test_the_system_check_reports_a_bad_tenant_or_priority_and_does_not_crash():
    from django.core.checks import run_checks

    schedules = {
        "good": {"task": TICK, "interval": 60},
        "nul": {"task": TICK, "interval": 60, "tenant": "a\x00b"},
        "word": {"task": TICK, "interval": 60, "priority": "high"},
    }
    with override_settings(TASKENGINE={"SCHEDULES": schedules}):
        errors = [m for m in run_checks(tags=["taskengine"]) if m.id == "taskengine.E006"]
    assert len(errors) == 2, [e.msg for e in errors]
    assert any("['nul']" in e.msg and "tenant: " in e.msg for e in errors)
    assert any("['word']" in e.msg and "priority: " in e.msg for e in errors)


@pytest.mark.django_db(transaction=True)
def test_a_bad_definition_reaching_the_sync_is_skipped_and_the_others_run(caplog):
    [good] = settings_schedules({"good": {"task": TICK, "interval": 60}})
    bad = {**good, "name": "bad", "tenant": "a\x00b"}
    scheduler, lease = Scheduler("default", definitions=[bad, good]), lead()
    with caplog.at_level(logging.ERROR, logger="taskengine.schedules"):
        scheduler.run_once(lease)
    assert list(Schedule.objects.values_list("name", flat=True)) == ["good"]
    assert any("'bad'" in r.getMessage() and "NUL" in r.getMessage() for r in caplog.records), caplog.records
    Schedule.objects.filter(name="good").update(created_at=Now() - timedelta(minutes=5))
    assert list(scheduler.run_once(lease)) == ["good"]


def test_a_schedule_of_another_tenant_into_a_queue_dedicated_to_a_tenant_is_refused_at_definition(settings):
    """Its slot jobs would be refused by enqueue (a dedicated queue takes its tenant's
    jobs only): the definition is refused on its queue field instead of every slot
    logging a refusal."""
    settings.TASKS = {"default": {**settings.TASKS["default"], "QUEUES": []}}
    settings.TASKENGINE = {"QUEUES": {"reports-acme": {"tenant": "acme"}}}
    for entry in ({"queue": "reports-acme"}, {"queue": "reports-acme", "tenant": "globex"}):
        with pytest.raises(ImproperlyConfigured, match=r"queue: Queue 'reports-acme' is dedicated to tenant 'acme'"):
            settings_schedules({"bad": {"task": TICK, "interval": 60, **entry}})
    settings_schedules({"good": {"task": TICK, "interval": 60, "queue": "reports-acme", "tenant": "acme"}})
