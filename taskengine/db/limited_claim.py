"""The limited claim: jobs of queues with a concurrency or rate limit, and keyed jobs,
leased within every limit in one transaction (docs/queues.md; the limits themselves are
taskengine.limits' values).

The ordinary claim (``claim_jobs`` in <vendor>/jobs.sql) leaves limited queues and keyed
jobs alone, so queues without limits keep its plan, and says whether any wait (on
PostgreSQL in the same statement, the fragment ``limits_waiting``; on SQLite the store
asks ``claim_needs_limits``); only then does the store run :func:`claim_limited`, whose
statements are <vendor>/limits.sql:

1. the limited (and paused) queues' rows, locked ``FOR UPDATE`` in name order (PostgreSQL;
   SQLite's BEGIN IMMEDIATE transaction is the only writer);
2. the queued keys, each with its first due job in claim order; a key at its limit is
   passed over, the free ones are try-locked (``pg_try_advisory_xact_lock``): a key
   another claimer holds is skipped, never waited for, so nothing queues up behind it;
3. the running jobs per queue and per key, counted in statements run after the locks are
   granted, so they see every claim committed before (a dead worker's jobs are still
   running until recovery moves them: they count);
4. candidates within each queue's and key's room, ``FOR UPDATE SKIP LOCKED``, leased by
   an UPDATE that re-checks state and due time and, on PostgreSQL, that the job's queue
   was not paused (or limited, its row not locked in 1) meanwhile;
5. the starts added to each rate-limited queue's window counter (its row locked in 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from taskengine.db.queries import sql

from ..jobs import ClaimedJob
from .rows import claimed_jobs, records, rows_as

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from .base import Store

logger = logging.getLogger("taskengine.store")

# finish_and_claim's marker row on PostgreSQL (finished_state): limited work waits.
LIMITS_WAITING = "limits"
KEY_LOCK_NAMESPACE = 0x7465_6B79  # pg_try_advisory_xact_lock(namespace, hashtext(key)): "teky"
MAX_KEYS = 1024  # the keys one claim considers per queue (in key order: docs/queues.md)


@dataclass(slots=True)
class LimitedQueue:
    name: str
    paused: bool
    concurrency_limit: int | None
    rate_limit: int | None
    rate_used: int
    window_now: int


@dataclass(slots=True)
class KeyHead:
    """A queued key and its first due job in claim order."""

    key: str
    priority: int
    run_after: Any
    id: int
    concurrency_limit: int | None
    running: int


@dataclass(slots=True)
class Candidate:
    id: int
    queue: str
    concurrency_key: str | None
    concurrency_limit: int | None
    priority: int
    run_after: datetime


class _Claim:
    """One limited claim's statements on one cursor, in its transaction."""

    def __init__(self, store: Store, connection: BaseDatabaseWrapper, cursor: Any) -> None:
        self.store, self.connection, self.cursor = store, connection, cursor

    def run(self, name: str, **params: Any) -> tuple[Any, list[Any]]:
        self.cursor.execute(sql(self.connection, name), params)
        return self.cursor.description, list(self.cursor.fetchall())

    def fetch[T: DataclassInstance](self, cls: type[T], name: str, **params: Any) -> list[T]:
        return rows_as(cls, *self.run(name, **params))

    def running(self, name: str, column: str, values: list[str]) -> dict[str, int]:
        return {r[column]: int(r["running"]) for r in records(*self.run(name, **{column + "s": self.array(values)}))}

    def array(self, values: list[Any]) -> Any:
        return self.store.array(values)


def claim_limited_after(
    store: Store,
    connection: BaseDatabaseWrapper,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float,
) -> list[ClaimedJob]:
    """claim_limited after the ordinary claim left room. That claim may have committed
    already (PostgreSQL, autocommit): a failure here must not lose its jobs, so it is
    logged and claims nothing; the next claim tries again."""
    try:
        return claim_limited(
            store, connection, worker_id=worker_id, queues=queues, limit=limit, lease_seconds=lease_seconds
        )
    except DatabaseError:
        logger.exception("the limited claim failed; it is tried again at the next claim")
        return []


def claim_limited(
    store: Store,
    connection: BaseDatabaseWrapper,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float,
) -> list[ClaimedJob]:
    """Lease up to ``limit`` jobs of limited queues and keyed jobs of ``queues`` within
    every limit, in one transaction (its own, or a savepoint of the caller's). On
    PostgreSQL their attempts are logged by the claim; on SQLite the caller logs them."""
    if limit <= 0 or not queues:
        return []
    with transaction.atomic(using=connection.alias), store.engine_cursor(connection) as cursor:
        claim = _Claim(store, connection, cursor)
        controlled = claim.fetch(LimitedQueue, "limited_queues", queues=claim.array(queues))
        paused = {q.name for q in controlled if q.paused}
        wanted = [q for q in queues if q not in paused]
        if not wanted:
            return []
        limited = {q.name: q for q in controlled if not q.paused}
        keys, key_limit = _free_keys(claim, wanted, limit)
        queue_room = _queue_room(claim, limited, limit)
        key_running = claim.running("running_by_key", "key", keys) if keys else {}
        key_room = {k: min(limit, key_limit[k] - key_running.get(k, 0)) for k in keys}
        candidates = _candidates(claim, wanted, queue_room, key_room)
        picked = _pick(candidates, limit, limited, queue_room, key_running)
        if not picked:
            return []
        queue_of = {c.id: c.queue for c in candidates}
        description, rows = claim.run(
            "claim_limited",
            ids=claim.array(picked),
            queues=claim.array([queue_of[i] for i in picked]),
            counted=claim.array(list(limited)),
            worker_id=worker_id,
            lease_seconds=float(lease_seconds),
        )
        claimed = claimed_jobs(description, rows)
        _count_rates(claim, limited, claimed)
        return claimed


def _free_keys(claim: _Claim, wanted: list[str], limit: int) -> tuple[list[str], dict[str, int]]:
    """Step 2: the keys below their limit, in claim order of their first job, up to the
    claim's room; on PostgreSQL only those whose advisory lock this claim got."""
    max_keys = MAX_KEYS if claim.store.concurrent_writers else MAX_KEYS * len(wanted)
    heads = [
        h
        for h in claim.fetch(KeyHead, "queued_keys", queues=claim.array(wanted), max_keys=max_keys)
        if h.running < (h.concurrency_limit or 1)
    ]
    heads.sort(key=lambda h: (-h.priority, h.run_after, h.id))
    keys = list(dict.fromkeys(h.key for h in heads))[:limit]  # a key's first head is its best
    if claim.store.concurrent_writers and keys:
        description, rows = claim.run("lock_keys", keys=claim.array(keys), lock_namespace=KEY_LOCK_NAMESPACE)
        keys = [r["key"] for r in records(description, rows)]
    key_limit: dict[str, int] = {}
    for head in heads:
        key_limit.setdefault(head.key, head.concurrency_limit or 1)
    return keys, key_limit


def _queue_room(claim: _Claim, limited: dict[str, LimitedQueue], limit: int) -> dict[str, int]:
    """Step 3: how many more jobs each limited queue may start now."""
    if not limited:
        return {}
    running = claim.running("running_by_queue", "queue", list(limited))
    room: dict[str, int] = {}
    for name, queue in limited.items():
        allowed = limit
        if queue.concurrency_limit is not None:
            allowed = min(allowed, queue.concurrency_limit - running.get(name, 0))
        if queue.rate_limit is not None:
            allowed = min(allowed, queue.rate_limit - int(queue.rate_used))
        room[name] = max(0, allowed)
    return room


def _candidates(
    claim: _Claim, wanted: list[str], queue_room: dict[str, int], key_room: dict[str, int]
) -> list[Candidate]:
    """Step 4's candidates, locked: PostgreSQL reads every queue's and key's in one
    statement each; SQLite (the only writer) one statement per queue and key."""
    open_queues = [q for q, room in queue_room.items() if room > 0]
    open_keys = [k for k, room in key_room.items() if room > 0]
    found: list[Candidate] = []
    if claim.store.concurrent_writers:
        if open_queues:
            allowances = [queue_room[q] for q in open_queues]
            found += claim.fetch(Candidate, "queue_candidates", queues=open_queues, allowances=allowances)
        if open_keys:
            allowances = [key_room[k] for k in open_keys]
            found += claim.fetch(Candidate, "key_candidates", keys=open_keys, allowances=allowances, queues=wanted)
        return found
    for name in open_queues:
        found += claim.fetch(Candidate, "queue_candidates", queue=name, limit=queue_room[name])
    for key in open_keys:
        found += claim.fetch(Candidate, "key_candidates", key=key, queues=claim.array(wanted), limit=key_room[key])
    return found


def _pick(
    candidates: list[Candidate],
    limit: int,
    limited: dict[str, LimitedQueue],
    queue_room: dict[str, int],
    key_running: dict[str, int],
) -> list[int]:
    """The candidates to lease, in claim order, each within its queue's and key's room."""
    candidates.sort(key=lambda c: (-c.priority, c.run_after, c.id))
    picked: list[int] = []
    for job in candidates:
        if len(picked) >= limit:
            break
        if job.queue in limited and queue_room.get(job.queue, 0) <= 0:
            continue
        if job.concurrency_key is not None:
            if key_running.get(job.concurrency_key, 0) >= (job.concurrency_limit or 1):
                continue
            key_running[job.concurrency_key] = key_running.get(job.concurrency_key, 0) + 1
        if job.queue in limited:
            queue_room[job.queue] -= 1
        picked.append(job.id)
    return picked


def _count_rates(claim: _Claim, limited: dict[str, LimitedQueue], claimed: list[ClaimedJob]) -> None:
    """Step 5: this claim's starts in each rate-limited queue's current window."""
    started: dict[str, int] = {}
    for job in claimed:
        started[job.queue] = started.get(job.queue, 0) + 1
    for name, count in started.items():
        queue = limited.get(name)
        if queue is not None and queue.rate_limit is not None:
            claim.cursor.execute(
                sql(claim.connection, "count_rate"), {"name": name, "window": queue.window_now, "started": count}
            )
