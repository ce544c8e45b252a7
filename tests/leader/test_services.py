"""Retention, dead-worker cleanup and the maintenance ticker (gate, leadership)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from taskengine import gate
from taskengine.leader import dead_workers, retention
from taskengine.leader.election import NotLeader
from taskengine.leader.ticker import MaintenanceTicker, Service
from taskengine.models import ExecutionLog, Job, WorkerProcess
from taskengine.runtime import heartbeats
from tests import tasks

from .conftest import claim, expire_leader, lead

pytestmark = pytest.mark.django_db(transaction=True)


def finished_job(state: str, days_ago: float) -> int:
    tasks.add.enqueue(1, 2)
    [job] = claim()
    Job.objects.filter(pk=job.id).update(
        state=state, finished_at=Now() - timedelta(days=days_ago), locked_by=None, lease_expires_at=None
    )
    return job.id


def test_retention_prunes_only_old_terminal_jobs_per_state_with_their_attempts():
    old_ok = finished_job("succeeded", 8)
    young_ok = finished_job("succeeded", 1)
    old_failed = finished_job("failed", 8)  # failed jobs are kept 30 days
    ancient_failed = finished_job("failed", 31)
    queued = int(tasks.add.enqueue(5, 6).id)
    deleted = retention.run_once("default", lead(), days={"succeeded": 7, "failed": 30, "cancelled": None})
    assert deleted == {"succeeded": 1, "failed": 1}
    assert set(Job.objects.values_list("id", flat=True)) == {young_ok, old_failed, queued}
    assert not ExecutionLog.objects.filter(job_id__in=[old_ok, ancient_failed]).exists()


def test_retention_works_in_bounded_batches():
    for _ in range(5):
        finished_job("succeeded", 10)
    deleted = retention.run_once("default", lead(), days={"succeeded": 7}, batch_size=2, max_batches=2)
    assert deleted == {"succeeded": 4}
    assert Job.objects.count() == 1


def test_a_retention_pass_resumes_across_runs_and_the_next_pass_starts_from_the_oldest():
    first, second, third = (finished_job("succeeded", days) for days in (30, 20, 10))
    first_finished = Job.objects.get(pk=first).finished_at
    sweep = retention.RetentionSweep("default")
    lease = lead()
    assert sweep.run_once(lease, days={"succeeded": 7}, batch_size=1, max_batches=1) == {"succeeded": 1}
    assert sweep.resume_at["succeeded"] == first_finished  # where the pass goes on
    assert set(Job.objects.values_list("id", flat=True)) == {second, third}
    # A job older than where the pass stands (one another transaction held, say) is
    # passed over by this pass ...
    late = finished_job("succeeded", 40)
    assert sweep.run_once(lease, days={"succeeded": 7}, batch_size=1, max_batches=5) == {"succeeded": 2}
    assert set(Job.objects.values_list("id", flat=True)) == {late}
    assert "succeeded" not in sweep.resume_at  # a short batch ended the pass
    # ... and pruned by the next one, which starts from the oldest again.
    assert sweep.run_once(lease, days={"succeeded": 7}, batch_size=1, max_batches=5) == {"succeeded": 1}
    assert not Job.objects.exists()


def test_retention_under_a_stale_term_deletes_nothing():
    finished_job("succeeded", 10)
    stale = lead("old")
    expire_leader()
    lead("new")
    with pytest.raises(NotLeader):
        retention.run_once("default", stale, days={"succeeded": 7})
    assert Job.objects.count() == 1


def test_retention_refuses_to_prune_live_states():
    with pytest.raises(ValueError, match="only terminal states"):
        retention.run_once("default", lead(), days={"queued": 1})


def test_dead_workers_are_marked_and_long_gone_ones_forgotten():
    for worker_id in ("alive", "silent", "gone"):
        heartbeats.register("default", worker_id, ["default"], 1)
    WorkerProcess.objects.filter(worker_id="silent").update(last_heartbeat_at=Now() - timedelta(seconds=120))
    WorkerProcess.objects.filter(worker_id="gone").update(state="stopped", last_heartbeat_at=Now() - timedelta(days=8))
    assert list(heartbeats.dead_workers("default", dead_after=60).values_list("worker_id", flat=True)) == ["silent"]
    report = dead_workers.run_once("default", lead(), dead_after=60, prune_after=7 * 86400)
    assert (report.marked_dead, report.pruned) == (["silent"], ["gone"])
    states = dict(WorkerProcess.objects.values_list("worker_id", "state"))
    assert states == {"alive": "running", "silent": "dead"}
    # A dead worker that was only paused registers again on its next heartbeat.
    assert heartbeats.heartbeat("default", "silent", "running") is False


def test_dead_worker_marking_under_a_stale_term_changes_nothing():
    heartbeats.register("default", "silent", ["default"], 1)
    WorkerProcess.objects.filter(worker_id="silent").update(last_heartbeat_at=Now() - timedelta(seconds=120))
    stale = lead("old")
    expire_leader()
    lead("new")
    assert dead_workers.run_once("default", stale, dead_after=60).marked_dead == []
    assert WorkerProcess.objects.get().state == "running"


class Recorder:
    def __init__(self) -> None:
        self.leases = []

    def __call__(self, lease) -> None:
        self.leases.append(lease)


def test_ticker_runs_services_only_on_the_leader_and_only_when_due(elector, clock):
    a, b = elector("a"), elector("b")
    a.step()
    b.step()
    ran_a, ran_b = Recorder(), Recorder()
    ticker_a = MaintenanceTicker("default", a, [Service("x", 5.0, ran_a)], clock=clock)
    ticker_b = MaintenanceTicker("default", b, [Service("x", 5.0, ran_b)], clock=clock)
    assert ticker_a.tick() == ["x"] and ticker_b.tick() == []
    assert ticker_a.tick() == []  # not due yet
    clock.advance(5)
    assert ticker_a.tick() == ["x"]
    assert [lease.term for lease in ran_a.leases] == [1, 1] and ran_b.leases == []


def test_ticker_stops_acting_when_trust_runs_out(elector, clock):
    a = elector("a", ttl=30, margin=2)
    a.step()
    ran = Recorder()
    ticker = MaintenanceTicker("default", a, [Service("x", 1.0, ran)], clock=clock)
    assert ticker.tick() == ["x"]
    clock.advance(29)  # no renew happened: past TTL - margin
    assert ticker.tick() == []
    assert len(ran.leases) == 1


def test_ticker_checks_the_gate_every_tick_and_logs_once_per_change(elector, clock, monkeypatch, caplog):
    a = elector("a")
    a.step()
    ran = Recorder()
    ticker = MaintenanceTicker("default", a, [Service("x", 0.1, ran)], clock=clock)
    answers = iter([False, False, True, False])
    calls = []
    monkeypatch.setattr(gate, "is_ready", lambda alias="default": calls.append(alias) or next(answers))
    with caplog.at_level(logging.WARNING, logger="taskengine.maintenance"):
        for _ in range(4):
            ticker.tick()
            clock.advance(1)
    assert len(calls) == 4 and len(ran.leases) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "taskengine.maintenance"]
    assert messages == [
        "maintenance paused: migrations pending on 'default'",
        "maintenance resumed: migrations at head on 'default'",
        "maintenance paused: migrations pending on 'default'",
    ]


def test_a_failing_service_does_not_stop_the_others(elector, clock, caplog):
    a = elector("a")
    a.step()

    def broken(lease):
        raise RuntimeError("bug")

    ran = Recorder()
    ticker = MaintenanceTicker("default", a, [Service("broken", 1.0, broken), Service("ok", 1.0, ran)], clock=clock)
    assert ticker.tick() == ["broken", "ok"]
    assert len(ran.leases) == 1 and "broken raised" in caplog.text


def test_the_vacuum_has_a_ticker_of_its_own_that_runs_it_alone():
    from types import SimpleNamespace

    from taskengine.runtime.leader_service import build_services

    [service] = build_services(SimpleNamespace(database="default", worker_id="layout"))
    assert [[s.name for s in ticker.services] for ticker in service.tickers] == [
        ["recovery", "dead_workers", "schedules", "retention", "bulk"],
        ["vacuum"],
    ]
    assert [ticker._thread.name for ticker in service.tickers] == ["taskengine-maintenance", "taskengine-vacuum"]


def test_a_service_that_runs_long_on_its_ticker_holds_no_service_of_another_back(elector):
    # Two real ticker threads (the runworker layout): a "vacuum" that takes its time
    # (here until released) while the other ticker's "schedules" keeps its cadence.
    import threading
    import time as wall

    a = elector("a")
    a.step()
    vacuuming, release = threading.Event(), threading.Event()
    ran = Recorder()

    def long_vacuum(lease) -> None:
        vacuuming.set()
        release.wait(20)

    shared = MaintenanceTicker("default", a, [Service("schedules", 0.05, ran)])
    own = MaintenanceTicker("default", a, [Service("vacuum", 0.05, long_vacuum)], name="taskengine-vacuum")
    own.start()
    try:
        assert vacuuming.wait(10)
        shared.start()
        deadline = wall.monotonic() + 10
        while len(ran.leases) < 5 and wall.monotonic() < deadline:
            wall.sleep(0.05)
        assert len(ran.leases) >= 5 and not release.is_set()  # all while the vacuum ran
    finally:
        release.set()
        shared.request_stop()
        own.request_stop()
        shared.stop()
        own.stop()
