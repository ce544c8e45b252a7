"""Queue limits and per-key concurrency, at the claim (taskengine.limits): a queue's
concurrency limit, its rate, a job's concurrency key — each enforced inside the claim's
transaction, also with many claimers at once (threads, each with its own connection,
calling the real claim), and queues without limits claimed as before."""

from __future__ import annotations

import math
import threading

import pytest
from django.db import connection, connections, transaction

from taskengine import store
from taskengine.jobs import Outcome
from taskengine.models import Job, Queue
from taskengine.ops import queue_control
from tests import tasks

pytestmark = pytest.mark.django_db(transaction=True)

CLI = "cli:tester"


def claim(limit: int = 10, queues_: tuple[str, ...] = ("default", "demo"), worker: str = "") -> list:
    return store.claim_jobs(
        connection,
        worker_id=worker or f"w-{threading.get_ident()}",
        queues=list(queues_),
        limit=limit,
        lease_seconds=30.0,
    )


def succeed(jobs: list) -> None:
    by_worker: dict[str, list] = {}
    for job in jobs:
        locked_by = Job.objects.get(pk=job.id).locked_by
        by_worker.setdefault(locked_by, []).append(job)
    for worker, held in by_worker.items():
        store.finish_jobs(
            connection,
            worker_id=worker,
            outcomes=[Outcome(j.id, j.attempt, "succeeded", "succeeded", return_value="null") for j in held],
        )


def test_a_concurrency_limit_caps_running_jobs_and_counts_jobs_of_other_workers():
    queue_control.set_limits("demo", concurrency=2, actor=CLI)
    ids = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(5)]
    other = int(tasks.add.enqueue(2, 2).id)  # default: no limit
    first = claim(worker="w1")
    assert sorted(j.id for j in first) == sorted([*ids[:2], other])
    assert claim(worker="w2") == []  # w1's two running jobs count for everyone
    succeed([j for j in first if j.id == ids[0]])
    assert [j.id for j in claim(worker="w2")] == [ids[2]]
    queue_control.set_limits("demo", concurrency="none", actor=CLI)
    assert sorted(j.id for j in claim()) == ids[3:]


def test_jobs_over_a_rate_stay_queued_without_using_an_attempt():
    queue_control.set_limits("demo", rate="3/h", actor=CLI)
    ids = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(5)]
    assert [j.id for j in claim(limit=2)] == ids[:2]
    assert [j.id for j in claim()] == ids[2:3]
    assert claim() == []
    assert list(Job.objects.filter(pk__in=ids[3:]).values_list("state", "attempts")) == [("queued", 0)] * 2
    row = Queue.objects.get(pk="demo")
    assert (row.rate_limit, row.rate_period, row.rate_count) == (3, 3600, 3)


def test_a_busy_key_is_passed_over_without_blocking_other_keys():
    keyed = tasks.add.using(queue_name="demo", concurrency_key="acct-1")
    a = [int(keyed.using(priority=10).enqueue(1, i).id) for i in range(4)]  # ahead in claim order
    b = [int(tasks.add.using(concurrency_key="acct-2", concurrency_limit=2).enqueue(1, i).id) for i in range(3)]
    plain = int(tasks.add.enqueue(3, 3).id)
    first = claim()
    assert sorted(j.id for j in first) == sorted([a[0], b[0], b[1], plain])
    assert claim() == []
    succeed([j for j in first if j.id == a[0]])
    assert [j.id for j in claim()] == [a[1]]
    stored = Job.objects.get(pk=b[0])
    assert (stored.concurrency_key, stored.concurrency_limit) == ("acct-2", 2)


def test_a_paused_queue_stays_paused_for_keyed_and_limited_jobs():
    queue_control.set_limits("demo", concurrency=5, actor=CLI)
    queue_control.pause("demo", actor=CLI)
    tasks.add.using(queue_name="demo").enqueue(1, 1)
    tasks.add.using(queue_name="demo", concurrency_key="k").enqueue(1, 2)
    assert claim() == []


def test_finish_and_claim_takes_the_limited_claims_turn():
    queue_control.set_limits("demo", concurrency=1, actor=CLI)
    ids = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(3)]
    (first,) = claim(worker="w1")
    won, claimed = store.finish_and_claim(
        connection,
        worker_id="w1",
        outcomes=[Outcome(first.id, first.attempt, "succeeded", "succeeded", return_value="null")],
        queues=["default", "demo"],
        limit=4,
        lease_seconds=30.0,
    )
    assert list(won) == [ids[0]]
    assert [j.id for j in claimed] == [ids[1]]


def race(claimers: int, rounds: int) -> list[list[int]]:
    """``claimers`` threads, each with its own connection, claim at once, ``rounds``
    times: the ids each round started (none finished meanwhile)."""
    barrier = threading.Barrier(claimers)
    results: list[list[int]] = [[] for _ in range(rounds)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer() -> None:
        try:
            for round_ in range(rounds):
                barrier.wait(timeout=30)
                jobs = claim(limit=3)
                with lock:
                    results[round_].extend(j.id for j in jobs)
                barrier.wait(timeout=30)
                if jobs:
                    succeed(jobs)
                barrier.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claimer) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_many_claimers_at_once_never_start_two_jobs_of_a_queue_limited_to_one():
    queue_control.set_limits("demo", concurrency=1, actor=CLI)
    tasks.add.using(queue_name="demo").enqueue_many([(1, i) for i in range(40)])
    results = race(claimers=8, rounds=6)
    assert [len(ids) for ids in results] == [1] * 6, results


def test_many_claimers_at_once_never_start_two_jobs_of_a_key_limited_to_one():
    for key in ("k1", "k2"):
        tasks.add.using(concurrency_key=key).enqueue_many([(1, i) for i in range(30)])
    results = race(claimers=8, rounds=6)
    for ids in results:
        keys = list(Job.objects.filter(pk__in=ids).values_list("concurrency_key", flat=True))
        assert sorted(keys) == ["k1", "k2"], results


def test_a_queue_without_limits_is_claimed_as_before_beside_a_limited_one():
    queue_control.set_limits("demo", concurrency=1, actor=CLI)
    plain = [int(tasks.add.enqueue(1, i).id) for i in range(4)]
    limited = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(4)]
    got = claim(limit=10)
    assert sorted(j.id for j in got) == sorted([*plain, limited[0]])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency_key": "a\x00b"}, "NUL character"),
        ({"concurrency_key": "\udcff"}, "lone surrogate"),
        ({"concurrency_key": "k" * 256}, "255"),
        ({"concurrency_key": "k", "concurrency_limit": 0}, "at least 1"),
        ({"concurrency_limit": 2}, "needs a concurrency_key"),
        ({"concurrency_key": 5}, "non-empty string"),
        ({"concurrency_key": b"acct"}, "non-empty string"),
        ({"concurrency_key": ["acct"]}, "non-empty string"),
    ],
)
def test_bad_concurrency_options_are_refused_at_enqueue_and_store_nothing(options, message):
    from taskengine.compat import InvalidTask

    with pytest.raises(InvalidTask, match=message):
        tasks.add.using(**options).enqueue(1, 2)
    assert not Job.objects.exists()


def test_the_concurrency_options_are_read_back_on_the_result():
    result = tasks.add.using(concurrency_key="acct-9", concurrency_limit=3).enqueue(1, 2)
    task = tasks.add.get_backend().get_result(result.id).task
    assert (task.concurrency_key, task.concurrency_limit) == ("acct-9", 3)
    bulk = tasks.add.using(concurrency_key="bulk").enqueue_many([(1, i) for i in range(150)])  # COPY on PostgreSQL
    assert set(Job.objects.filter(pk__in=[r.id for r in bulk]).values_list("concurrency_key", "concurrency_limit")) == {
        ("bulk", 1)
    }


@pytest.mark.postgres
def test_a_keyed_job_leaving_running_notifies_its_queue_and_an_unkeyed_one_does_not():
    import psycopg

    from tests.conftest import subprocess_database_url

    keyed = int(tasks.add.using(queue_name="demo", concurrency_key="k").enqueue(1, 1).id)
    plain = int(tasks.add.enqueue(1, 2).id)
    with psycopg.connect(subprocess_database_url(), autocommit=True) as listening:
        listening.execute("LISTEN taskengine_jobs")
        claimed = {j.id: j for j in claim(worker="w1")}
        assert set(claimed) == {keyed, plain}
        list(listening.notifies(timeout=0.2))  # nothing is expected from the claim itself
        succeed([claimed[plain]])
        assert [n.payload for n in listening.notifies(timeout=0.5)] == []
        succeed([claimed[keyed]])
        assert [n.payload for n in listening.notifies(timeout=2.0, stop_after=1)] == ["demo"]


@pytest.mark.postgres
def test_a_claim_whose_clock_is_behind_the_rate_window_takes_nothing_and_keeps_the_counter():
    """now() is the transaction's start: a claim that began in window W and reaches the
    queue row after another claim counted starts in window W+1 must neither start more
    (W's count was overwritten) nor move the counter back to W (W+1's starts forgotten)."""
    import time

    queue_control.set_limits("demo", rate="2/s", actor=CLI)
    tasks.add.using(queue_name="demo").enqueue_many([(1, i) for i in range(8)])
    later: list[int] = []

    def claim_in_the_next_window() -> None:
        try:
            later.extend(j.id for j in claim(worker="w-later"))
        finally:
            connections.close_all()

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch FROM now())::float8")
            (started,) = cursor.fetchone()
        time.sleep(max(0.0, math.floor(started) + 1.05 - time.time()))  # the next window on the DB clock
        thread = threading.Thread(target=claim_in_the_next_window)
        thread.start()
        thread.join(timeout=30)
        assert len(later) == 2
        assert claim(worker="w-behind") == []
    row = Queue.objects.get(pk="demo")
    assert (row.rate_window, row.rate_count) == (math.floor(started) + 1, 2)


def test_changing_the_rate_period_starts_a_fresh_window():
    queue_control.set_limits("demo", rate="1/s", actor=CLI)
    ids = [int(tasks.add.using(queue_name="demo").enqueue(1, i).id) for i in range(3)]
    assert [j.id for j in claim()] == ids[:1]
    queue_control.set_limits("demo", rate="1/h", actor=CLI)
    assert [j.id for j in claim()] == ids[1:2]
    assert claim() == []


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["pause", "limit"])
def test_a_pause_or_limit_committed_during_a_limited_claim_is_honoured_by_its_lease(monkeypatch, change):
    """The limited claim is several statements: a keyed job's queue paused (or limited
    to what already runs) after its first statement read the queue rows, and before it
    leases, must not be leased by it (its UPDATE re-checks the queue, as a claim statement
    begun after the change would)."""
    from taskengine.db import limited_claim

    running = int(tasks.add.using(queue_name="demo").enqueue(1, 0).id)
    assert [j.id for j in claim(queues_=("demo",), worker="w0")] == [running]
    keyed = int(tasks.add.using(queue_name="demo", concurrency_key="acct").enqueue(1, 1).id)
    real_pick = limited_claim._pick

    def change_the_queue() -> None:
        try:
            if change == "pause":
                queue_control.pause("demo", actor=CLI)
            else:
                queue_control.set_limits("demo", concurrency=1, actor=CLI)
        finally:
            connections.close_all()

    def pick_after_the_change(*args, **kwargs):
        thread = threading.Thread(target=change_the_queue)
        thread.start()
        thread.join(timeout=30)
        return real_pick(*args, **kwargs)

    monkeypatch.setattr(limited_claim, "_pick", pick_after_the_change)
    assert claim(queues_=("demo",), worker="w1") == []
    assert Job.objects.get(pk=keyed).state == "queued"
