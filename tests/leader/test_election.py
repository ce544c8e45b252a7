"""Leader election on the database clock: terms, compare-and-set, trust window."""

from __future__ import annotations

import pytest

from taskengine.leader.election import NotLeader, current_leader, fenced_transaction
from taskengine.models import Leader

from .conftest import expire_leader

pytestmark = pytest.mark.django_db(transaction=True)


def test_first_candidate_acquires_term_one_and_others_wait(elector):
    a, b = elector("a"), elector("b")
    assert a.step() is True
    assert b.step() is False
    row = Leader.objects.get()
    assert (row.holder, row.term) == ("a", 1)
    assert a.lease().term == 1 and b.lease() is None


def test_renew_keeps_the_same_term(elector, clock):
    a = elector("a")
    a.step()
    clock.advance(5)
    assert a.step() is True
    assert a.lease().term == 1
    assert Leader.objects.get().term == 1


def test_takeover_after_expiry_increments_the_term_and_the_old_leader_steps_down(elector):
    a, b = elector("a"), elector("b")
    a.step()
    expire_leader()
    assert b.step() is True
    assert b.lease().term == 2
    # a still trusts its window locally, but its renew is a compare-and-set on
    # (holder, term): it fails, and a steps down at once.
    assert a.lease() is not None
    assert a.step() is False
    assert a.lease() is None
    row = Leader.objects.get()
    assert (row.holder, row.term) == ("b", 2)


def test_expired_leader_reacquires_under_a_new_term(elector):
    a = elector("a")
    a.step()
    expire_leader()
    assert a.step() is True
    assert a.lease().term == 2


def test_leader_stops_acting_when_its_trust_window_ends_without_a_renew(elector, clock):
    a = elector("a", ttl=30, margin=2)
    a.step()
    clock.advance(27.9)
    assert a.lease() is not None
    clock.advance(0.2)  # 28.1s > TTL - margin
    assert a.lease() is None
    assert not a.is_leader


def test_a_late_renew_does_not_extend_trust_beyond_when_it_was_sent(elector, clock):
    a = elector("a", ttl=30, margin=2)
    a.step()
    clock.advance(10)

    real_run = a._run

    def slow_run(name, params):
        result = real_run(name, params)
        clock.advance(20)  # the renew answered 20s after it was sent
        return result

    a._run = slow_run
    assert a.step() is True
    # Trust is measured from when the renew was sent (t=10): until t=10+30-2=38.
    clock.advance(7.9)  # t = 37.9
    assert a.lease() is not None
    clock.advance(0.2)  # t = 38.1
    assert a.lease() is None


def test_resign_lets_a_successor_acquire_at_once(elector):
    a, b = elector("a"), elector("b")
    a.step()
    a.resign()
    assert a.lease() is None
    assert b.step() is True
    assert b.lease().term == 2


def test_concurrent_candidates_produce_exactly_one_leader_per_term(elector):
    candidates = [elector(f"c{i}") for i in range(5)]
    for _ in range(3):
        winners = [c for c in candidates if c.step()]
        assert len(winners) == 1
        expire_leader()
    leaders = [c for c in candidates if c.lease() is not None]
    # Every one of them may still trust itself locally, but only the row's holder
    # renews; the others step down on their next round.
    for c in candidates:
        c.step()
    assert [c.holder for c in candidates if c.lease() is not None] == [Leader.objects.get().holder]
    assert Leader.objects.get().term == 4
    assert leaders


def test_fenced_transaction_refuses_a_stale_term(elector):
    a, b = elector("a"), elector("b")
    a.step()
    stale = a.lease()
    with fenced_transaction("default", stale):
        pass
    expire_leader()
    b.step()
    with pytest.raises(NotLeader), fenced_transaction("default", stale):
        pytest.fail("must not run")


def test_current_leader_reports_the_row_on_the_database_clock(elector):
    assert current_leader("default") is None
    elector("a").step()
    info = current_leader("default")
    assert info["holder"] == "a" and info["term"] == 1 and info["live"] is True
    expire_leader()
    assert current_leader("default")["live"] is False


def test_renew_interval_must_fit_in_the_trust_window(elector):
    with pytest.raises(ValueError, match="renew interval"):
        elector("a", ttl=5, renew_every=4, margin=2)


@pytest.mark.postgres
def test_a_takeover_waits_for_a_fenced_write_of_the_old_term_to_commit(elector):
    """FOR SHARE in the fence: every write of term T commits before term T+1 begins."""
    import threading

    import psycopg
    from django.db import connection, connections

    from taskengine.db.queries import sql
    from tests.conftest import subprocess_database_url

    a = elector("a", ttl=1.0, renew_every=0.2, margin=0.1)
    a.step()
    old = psycopg.connect(subprocess_database_url().replace("postgres://", "postgresql://"))
    try:
        with old.cursor() as cursor:  # a maintenance transaction of term 1, still open
            cursor.execute(sql(connection, "leader_fence"), a.lease().params())
            assert cursor.fetchone() == (1,)
        with connection.cursor() as cursor:  # term 1 expires on the database clock
            cursor.execute("SELECT pg_sleep(1.1)")
        b = elector("b")
        won = []

        def take_over() -> None:
            try:
                won.append(b.step())
            finally:
                connections.close_all()  # this thread's connection

        taker = threading.Thread(target=take_over)
        taker.start()
        taker.join(0.5)
        assert taker.is_alive() and won == [], "the takeover did not wait for the open fenced write"
        old.commit()
        taker.join(10)
        assert won == [True] and b.lease().term == 2
    finally:
        old.close()
