"""A claim racing a pause. The claim reads the paused queues inside its own statement
(PostgreSQL: its snapshot; SQLite: its IMMEDIATE transaction), so a pause committed
before a claim began is honoured — also when the claim runs inside a longer transaction,
as the worker's finish-then-claim does — and the claim never waits for a pause still in
progress. Two operators pausing at once: one wins, one is refused, one audit row."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection, connections, transaction

from taskengine import queues, store
from taskengine.models import OperatorAction, Queue
from taskengine.ops import queue_control
from taskengine.ops.operations import OperationRefused
from tests import tasks
from tests.conftest import subprocess_database_url

pytestmark = pytest.mark.django_db(transaction=True)

CLI = "cli:tester"


def claim(limit: int = 2) -> list:
    return store.claim_jobs(
        connection, worker_id=f"w-{threading.get_ident()}", queues=["default", "demo"], limit=limit, lease_seconds=30.0
    )


@pytest.mark.postgres
def test_a_claim_never_waits_for_a_pause_in_progress_and_honours_it_once_committed():
    queues.ensure(["demo"])
    held = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(3)]
    with psycopg.connect(subprocess_database_url()) as pausing:
        pausing.execute(
            "UPDATE taskengine_queue SET paused = true, paused_at = now(), paused_by = 'x' WHERE name = 'demo'"
        )  # uncommitted: the queue row stays locked
        started = time.monotonic()
        during = claim(limit=1)
        assert time.monotonic() - started < 1.0, "the claim waited for the pause's row lock"
        assert [j.id for j in during] == held[:1]  # not paused yet: the pause has not committed
        pausing.commit()
    assert claim(limit=5) == []
    assert Queue.objects.get(pk="demo").paused


def test_no_claim_begun_after_a_pause_committed_takes_a_job_of_the_paused_queue():
    queues.ensure(["demo", "default"])
    tasks.add.using(queue_name="demo").enqueue_many([(1, i) for i in range(400)])
    tasks.add.enqueue_many([(2, i) for i in range(400)])
    stop = threading.Event()
    claims: list[tuple[float, list[str]]] = []
    errors: list[BaseException] = []

    def claimer(in_transaction: bool) -> None:
        try:
            while not stop.is_set():
                began = time.monotonic()
                if in_transaction:  # like the worker's finish-then-claim: another statement first
                    with transaction.atomic():
                        Queue.objects.filter(pk="default").exists()
                        jobs = claim()
                else:
                    jobs = claim()
                claims.append((began, [j.queue for j in jobs]))
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(i % 2 == 1,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    queue_control.pause("demo", actor=CLI)
    committed = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    before = [qs for began, qs in claims if began < committed]
    after = [qs for began, qs in claims if began > committed]
    assert any("demo" in qs for qs in before), "the race was not live: no claim took the queue before the pause"
    assert any("default" in qs for qs in after), "no claim ran after the pause"
    late = [qs for qs in after if "demo" in qs]
    assert late == [], f"{len(late)} claims begun after the pause committed took its jobs"


def test_two_operators_pausing_at_once_one_wins_and_one_is_refused():
    queues.ensure(["demo"])
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def pause(actor: str) -> None:
        try:
            barrier.wait(10)
            queue_control.pause("demo", actor=actor)
            outcomes.append("won")
        except OperationRefused:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=pause, args=(f"cli:op{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["refused", "won"]
    assert OperatorAction.objects.filter(action="queue.pause").count() == 1
    row = Queue.objects.get(pk="demo")
    assert row.paused and row.paused_by == OperatorAction.objects.get().actor_repr
