"""Queue limits and per-key concurrency: the limited claim (docs/queues.md).

Three limits, all enforced inside the claim's transaction, on the database clock:

- a queue's **concurrency** (``taskengine_queue.concurrency_limit``): at most N of its
  jobs running across the fleet. A dead worker's jobs are still running (state and
  lease) until recovery moves them, so they count;
- a queue's **rate** (``rate_limit`` starts per ``rate_period`` seconds): a fixed window
  aligned to the epoch on the database clock, counted in the queue row
  (``rate_window``, ``rate_count``) under the row's lock. Jobs over it stay queued;
- a job's **concurrency key** (``@task(concurrency_key=..., concurrency_limit=...)`` or
  ``.using(...)``): at most ``concurrency_limit`` (default 1) running jobs share a key,
  whatever their queue.

The ordinary claim (sql/jobs.<vendor>.sql) leaves limited queues and keyed jobs alone,
so queues without limits keep its plan, and says in the same statement whether any wait
for the wanted queues; only then does the store call :func:`claim_limited`, whose steps
are in sql/limits.postgresql.sql. On PostgreSQL claimers of one limited queue take turns
on the queue's row lock and claimers of one key on its advisory lock (a busy key is
skipped, never waited for); the running jobs are counted in statements run after the
locks are granted, so they see every claim committed before. On SQLite the claim's
BEGIN IMMEDIATE transaction is the only writer.

This module imports no other module of the engine but the bottom layer and the SQL
loader: the store calls it, and ``queues`` uses its parsers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .queries import sql
from .values import stored_text_problem

KEY_LOCK_NAMESPACE = 0x7465_6B79  # pg_try_advisory_xact_lock(namespace, hashtext(key)): "teky"
MAX_KEYS = 1024  # the keys one claim considers per queue (in key order: docs/queues.md)
MAX_KEY_LENGTH = 255  # Job.concurrency_key's length
PERIODS = {"s": 1, "m": 60, "h": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")


# --- values ----------------------------------------------------------------------------


def parse_rate(text: str) -> tuple[int, int]:
    """``"100/m"`` -> (100, 60): starts per period of seconds (``/s``, ``/m``, ``/h``).
    Raises ValueError with the reason for anything else (a count below 1 included)."""
    if not isinstance(text, str):
        raise ValueError(f"a rate is text like '100/m', not {type(text).__name__}")
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a rate: {text!r} (a whole number of starts per s, m or h, like '100/m')")
    count = int(match.group(1))
    if count < 1:
        raise ValueError(f"not a rate: {text!r} (at least 1 start per period)")
    if count > 2**31 - 1:
        raise ValueError(f"not a rate: {text!r} (at most {2**31 - 1} starts per period)")
    return count, PERIODS[match.group(2)]


def format_rate(count: int | None, period: int | None) -> str:
    """(100, 60) -> ``"100/m"``; no rate -> ``""``."""
    if count is None or period is None:
        return ""
    unit = {seconds: unit for unit, seconds in PERIODS.items()}.get(period)
    return f"{count}/{unit}" if unit else f"{count}/{period}s"


def parse_concurrency(value: Any) -> int | None:
    """A queue's concurrency limit: a whole number of at least 1, or ``none``/None to
    lift it. Raises ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise ValueError("a concurrency limit is a whole number of at least 1 or 'none'")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a concurrency limit: {value!r} (a whole number of at least 1, or 'none')") from None
    if isinstance(value, float) and number != value:
        raise ValueError(f"not a concurrency limit: {value!r} (a whole number)")
    if number < 1 or number > 2**31 - 1:
        raise ValueError(f"not a concurrency limit: {value!r} (at least 1; 'none' lifts the limit)")
    return number


def check_concurrency_options(key: Any, limit: Any, error: Callable[[str], Exception]) -> None:
    """A task's ``concurrency_key`` and ``concurrency_limit``, by the stored-text rule:
    raises ``error(message)`` for a key that is not a non-empty string, has a NUL or a
    lone surrogate or is longer than 255 characters, and for a limit that is not a whole
    number of at least 1, or is given without a key."""
    if key is not None:
        if not isinstance(key, str) or not key:
            raise error("concurrency_key must be a non-empty string.")
        if (problem := stored_text_problem(key, MAX_KEY_LENGTH)) is not None:
            raise error(f"concurrency_key cannot be stored: {problem}.")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit > 2**31 - 1:
            raise error(f"concurrency_limit must be a whole number of at least 1, not {limit!r}.")
        if key is None:
            raise error("concurrency_limit needs a concurrency_key (the jobs it limits).")


def job_concurrency_limit(key: str | None, limit: int | None) -> int | None:
    """The limit a job stores: the task's, 1 when it has a key and no limit, None without a key."""
    if key is None:
        return None
    return 1 if limit is None else limit


# --- the limited claim -----------------------------------------------------------------


@dataclass(slots=True)
class _Candidate:
    id: int
    queue: str
    key: str | None
    key_limit: int | None
    priority: int
    run_after: Any


def needs_limits(connection: BaseDatabaseWrapper, queues: list[str]) -> bool:
    """SQLite: whether limited queues or due keyed jobs wait for ``queues`` (on PostgreSQL
    the claim statement says so itself: the fragment limits_waiting)."""
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "claim_needs_limits"), {"queues": json.dumps(queues)})
        row = cursor.fetchone()
    return bool(row and row[0])


def claim_limited(
    connection: BaseDatabaseWrapper, *, worker_id: str, queues: list[str], limit: int, lease_seconds: float
) -> list[Any]:
    """Lease up to ``limit`` jobs of limited queues and keyed jobs of ``queues`` within
    every limit, in one transaction (its own, or a savepoint of the caller's). Returns the
    claim's raw rows (the columns of claim_jobs); on PostgreSQL their attempts are logged,
    on SQLite the caller logs them (log_attempts)."""
    if limit <= 0 or not queues:
        return []
    postgres = connection.vendor == "postgresql"
    pack: Callable[[list[str]], Any] = list if postgres else json.dumps
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:

        def rows(name: str, **params: Any) -> list[Any]:
            cursor.execute(sql(connection, name), params)
            return list(cursor.fetchall())

        # 1. the limited (and paused) queues' rows, locked.
        controlled = rows("limited_queues", queues=pack(queues))
        paused = {r[0] for r in controlled if r[1]}
        wanted = [q for q in queues if q not in paused]
        if not wanted:
            return []
        limited = {r[0]: r for r in controlled if not r[1]}
        # 2. the keys that look free, in claim order, up to the claim's room; locked
        # (PostgreSQL) — a key another claimer holds is skipped.
        heads = rows("queued_keys", queues=pack(wanted), max_keys=MAX_KEYS if postgres else MAX_KEYS * len(wanted))
        heads = [h for h in heads if int(h[5]) < (h[4] or 1)]
        heads.sort(key=lambda h: (-h[1], h[2], h[3]))
        keys = list(dict.fromkeys(h[0] for h in heads))[:limit]  # a key's first head is its best
        if postgres and keys:
            keys = [r[0] for r in rows("lock_keys", keys=keys, lock_namespace=KEY_LOCK_NAMESPACE)]
        key_limit: dict[str, int] = {}
        for head in heads:
            key_limit.setdefault(head[0], head[4] or 1)
        # 3. running jobs, counted after the locks were granted.
        queue_room: dict[str, int] = {}
        if limited:
            running = dict(rows("running_by_queue", queues=pack(list(limited))))
            for name, row in limited.items():
                room = limit
                if row[2] is not None:
                    room = min(room, row[2] - int(running.get(name, 0)))
                if row[3] is not None:
                    room = min(room, row[3] - int(row[4]))
                queue_room[name] = max(0, room)
        key_running: dict[str, int] = {}
        if keys:
            key_running = {k: int(n) for k, n in rows("running_by_key", keys=pack(keys))}
        # 4. candidates, picked in claim order within every allowance.
        candidates: list[_Candidate] = []
        open_queues = [q for q, room in queue_room.items() if room > 0]
        # a key's room: the limit of its first job in claim order (a key's jobs normally
        # share one), less its running jobs; each job is checked against its own below.
        key_room = {k: min(limit, key_limit[k] - key_running.get(k, 0)) for k in keys}
        open_keys = [k for k in keys if key_room[k] > 0]
        if postgres:
            if open_queues:
                found = rows("queue_candidates", queues=open_queues, allowances=[queue_room[q] for q in open_queues])
                candidates += [_Candidate(*r) for r in found]
            if open_keys:
                found = rows(
                    "key_candidates", keys=open_keys, allowances=[key_room[k] for k in open_keys], queues=wanted
                )
                candidates += [_Candidate(*r) for r in found]
        else:
            for name in open_queues:
                candidates += [_Candidate(*r) for r in rows("queue_candidates", queue=name, limit=queue_room[name])]
            for key in open_keys:
                found = rows("key_candidates", key=key, queues=pack(wanted), limit=key_room[key])
                candidates += [_Candidate(*r) for r in found]
        candidates.sort(key=lambda c: (-c.priority, c.run_after, c.id))
        picked: list[int] = []
        for job in candidates:
            if len(picked) >= limit:
                break
            if job.queue in limited and queue_room.get(job.queue, 0) <= 0:
                continue
            if job.key is not None:
                if key_running.get(job.key, 0) >= (job.key_limit or 1):
                    continue
                key_running[job.key] = key_running.get(job.key, 0) + 1
            if job.queue in limited:
                queue_room[job.queue] -= 1
            picked.append(job.id)
        if not picked:
            return []
        ids: Any = picked if postgres else json.dumps(picked)
        claimed = rows("claim_limited", ids=ids, worker_id=worker_id, lease_seconds=float(lease_seconds))
        # 5. the starts in each rate-limited queue's window.
        counted: dict[str, int] = {}
        for row in claimed:
            counted[row[3]] = counted.get(row[3], 0) + 1
        for name, count in counted.items():
            queue_row = limited.get(name)
            if queue_row is not None and queue_row[3] is not None:
                cursor.execute(sql(connection, "count_rate"), {"name": name, "window": queue_row[5], "started": count})
        return claimed
