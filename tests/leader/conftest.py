"""Helpers for the leadership and maintenance tests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now

from taskengine import store
from taskengine.jobs import ClaimedJob
from taskengine.leader.election import ELECTION, Elector, LeaderLease
from taskengine.models import Job, Leader


class FakeClock:
    """An injectable monotonic clock: tests move time instead of sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def elector(clock):
    def make(holder: str, **kw) -> Elector:
        kw.setdefault("ttl", 30.0)
        kw.setdefault("renew_every", 5.0)
        kw.setdefault("margin", 2.0)
        return Elector("default", holder, clock=clock, **kw)

    return make


def expire_leader(election: str = ELECTION) -> None:
    """Make the election's row expired on the database clock (as if its TTL passed)."""
    Leader.objects.filter(name=election).update(expires_at=Now() - timedelta(seconds=1))


def lead(holder: str = "leader-a") -> LeaderLease:
    """Acquire the election for ``holder`` and return its lease."""
    e = Elector("default", holder, ttl=60, renew_every=5, margin=2)
    assert e.step()
    return e.lease()


def claim(worker: str = "w1", lease_seconds: float = 30) -> list[ClaimedJob]:
    return store.claim_jobs(connection, worker_id=worker, queues=["default"], limit=10, lease_seconds=lease_seconds)


def expire_lease(job_id: int) -> None:
    Job.objects.filter(pk=job_id).update(lease_expires_at=Now() - timedelta(seconds=1))
