"""``manage.py queues list | pause | resume | limit | sync``: what each prints and changes, its
audit rows (actor ``cli:<os user>``), and its refusals as exit status 1 with the reason."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from taskengine.models import OperatorAction, Queue
from taskengine.ops import queue_control
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("queues", *args, stdout=out)
    return out.getvalue()


def test_pause_list_resume(monkeypatch):
    monkeypatch.setattr(queue_control.getpass, "getuser", lambda: "ops")
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    tasks.add.using(queue_name="demo").enqueue(1, 2)
    assert run("pause", "demo", "--reason", "smtp down").startswith("Paused queue demo. (audit row ")
    table = run("list").splitlines()
    assert table[0].split() == [
        "QUEUE",
        "STATE",
        "QUEUED",
        "RUNNING",
        "LIMIT",
        "RATE",
        "PAUSED",
        "BY",
        "PAUSED",
        "AT",
        "(UTC)",
        "REASON",
    ]
    demo = next(line for line in table if line.startswith("demo "))
    assert demo.split()[:7] == ["demo", "paused", "2", "0", "-", "-", "cli:ops"] and demo.endswith("smtp down")
    assert any(line.split()[:2] == ["default", "active"] for line in table)
    listed = {q["name"]: q for q in json.loads(run("list", "--json"))}
    assert listed["demo"]["state"] == "paused" and listed["demo"]["queued"] == 2
    assert listed["demo"]["paused_by"] == "cli:ops" and listed["demo"]["paused_at"]
    assert run("resume", "demo").startswith("Resumed queue demo.")
    assert Queue.objects.get(pk="demo").paused is False
    assert list(OperatorAction.objects.order_by("pk").values_list("actor_repr", "action", "reason")) == [
        ("cli:ops", "queue.pause", "smtp down"),
        ("cli:ops", "queue.resume", ""),
    ]


def test_list_only_reads():
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    run("list")
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


def test_refusals_exit_with_the_reason():
    run("pause", "demo")
    with pytest.raises(CommandError, match="already paused"):
        run("pause", "demo")
    with pytest.raises(CommandError, match="not a queue name"):
        run("pause", "x" * 65)
    assert OperatorAction.objects.count() == 1


def test_sync_applies_the_settings_now(settings):
    settings.TASKENGINE = {"QUEUES": {"demo": {"paused": True}}}
    assert run("sync").strip() == "applied settings to: demo"
    assert Queue.objects.get(pk="demo").paused_by == "settings"
    assert run("sync").strip() == "nothing to apply"
    settings.TASKENGINE = {"QUEUES": {"demo": {"rate": "10/d"}}}
    with pytest.raises(CommandError, match="not a rate"):
        run("sync")


def test_limit_sets_and_lifts_concurrency_and_rate_with_audit_rows(monkeypatch):
    monkeypatch.setattr(queue_control.getpass, "getuser", lambda: "ops")
    out = run("limit", "demo", "--concurrency", "5", "--rate", "100/m", "--reason", "smtp quota")
    assert out.startswith("Queue demo: concurrency 5, rate 100/m. (audit row ")
    demo = next(line for line in run("list").splitlines() if line.startswith("demo "))
    assert demo.split()[:6] == ["demo", "active", "0", "0", "5", "100/m"]
    listed = {q["name"]: q for q in json.loads(run("list", "--json"))}
    assert (listed["demo"]["concurrency_limit"], listed["demo"]["rate"]) == (5, "100/m")
    assert run("limit", "demo", "--rate", "none").startswith("Queue demo: concurrency 5, rate none.")
    assert run("limit", "demo", "--concurrency", "none").startswith("Queue demo: concurrency none, rate none.")
    row = Queue.objects.get(pk="demo")
    assert (row.concurrency_limit, row.rate_limit, row.rate_period) == (None, None, None)
    actions = list(OperatorAction.objects.order_by("pk").values_list("action", "state_before", "state_after"))
    assert [a for a, _, _ in actions] == ["queue.limit"] * 3
    assert actions[0][1]["concurrency_limit"] is None and actions[0][2]["rate"] == "100/m"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--concurrency", "0"), "at least 1"),
        (("--concurrency", "two"), "not a concurrency limit"),
        (("--rate", "100/d"), "not a rate"),
        (("--rate", "0/m"), "at least 1 start"),
        ((), "give --concurrency"),
    ],
)
def test_limit_refuses_bad_values_and_writes_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        run("limit", "demo", *args)
    assert not Queue.objects.exists() and not OperatorAction.objects.exists()


def test_limit_refuses_a_change_that_changes_nothing():
    run("limit", "demo", "--concurrency", "2")
    with pytest.raises(CommandError, match="already has these limits"):
        run("limit", "demo", "--concurrency", "2")
    assert OperatorAction.objects.count() == 1


def test_declared_limits_are_applied_once_and_an_operator_change_stands_until_the_settings_change(settings):
    settings.TASKENGINE = {"QUEUES": {"demo": {"concurrency": 5, "rate": "100/m"}}}
    assert run("sync").strip() == "applied settings to: demo"
    row = Queue.objects.get(pk="demo")
    assert (row.concurrency_limit, row.rate_limit, row.rate_period) == (5, 100, 60)
    run("limit", "demo", "--concurrency", "2")
    assert run("sync").strip() == "nothing to apply"  # same settings deployed again
    assert Queue.objects.get(pk="demo").concurrency_limit == 2
    settings.TASKENGINE = {"QUEUES": {"demo": {"concurrency": 5, "rate": "10/s"}}}
    assert run("sync").strip() == "applied settings to: demo"  # only the rate changed
    row = Queue.objects.get(pk="demo")
    assert (row.concurrency_limit, row.rate_limit, row.rate_period) == (2, 10, 1)
    settings.TASKENGINE = {"QUEUES": {}}
    run("sync")  # the declaration removed: both lifted
    row = Queue.objects.get(pk="demo")
    assert (row.concurrency_limit, row.rate_limit) == (None, None)
    assert OperatorAction.objects.filter(action="queue.limit", actor_repr="settings").count() == 3
