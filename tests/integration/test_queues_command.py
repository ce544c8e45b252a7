"""``manage.py queues list | pause | resume | sync``: what each prints and changes, its
audit rows (actor ``cli:<os user>``), and its refusals as exit status 1 with the reason."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from taskengine import queues
from taskengine.models import OperatorAction, Queue
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("queues", *args, stdout=out)
    return out.getvalue()


def test_pause_list_resume(monkeypatch):
    monkeypatch.setattr(queues.getpass, "getuser", lambda: "ops")
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    tasks.add.using(queue_name="demo").enqueue(1, 2)
    assert run("pause", "demo", "--reason", "smtp down").startswith("Paused queue demo. (audit row ")
    table = run("list").splitlines()
    assert table[0].split() == [
        "QUEUE",
        "STATE",
        "QUEUED",
        "RUNNING",
        "PAUSED",
        "BY",
        "PAUSED",
        "AT",
        "(UTC)",
        "REASON",
    ]
    demo = next(line for line in table if line.startswith("demo "))
    assert demo.split()[:5] == ["demo", "paused", "2", "0", "cli:ops"] and demo.endswith("smtp down")
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
    settings.TASKENGINE = {"QUEUES": {"demo": {"rate": "10/s"}}}
    with pytest.raises(CommandError, match="unknown option"):
        run("sync")
