"""Retention: prune terminal jobs older than RETENTION_DAYS[state], on the leader.

This is the ONLY place in the engine that deletes jobs. It touches terminal jobs only
(``succeeded``/``failed``/``cancelled`` with ``finished_at`` before the cutoff on the
database clock); their attempt logs go with them (ExecutionLog cascades).

Bounded: each transaction deletes at most RETENTION_BATCH_SIZE jobs, and one run does
at most RETENTION_MAX_BATCHES transactions per state, so a large backlog drains over
several runs without long locks. Each transaction holds the leader fence
(election.fenced_transaction): under a stale term it raises NotLeader and deletes
nothing. A batch is one statement on PostgreSQL (``prune_retention_batch``: the jobs
locked ``FOR UPDATE SKIP LOCKED``, deleted with their attempt rows, the state re-checked,
so an operator requeueing a job at the same moment keeps it) and three in one write
transaction on SQLite. The deletes are SQL, not the ORM: no pre_delete / post_delete
signals are sent for pruned jobs and attempts.
"""

from __future__ import annotations

import logging

from django.db import connections

from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.leader.election import LeaderLease, fenced_transaction
from taskengine.states import TERMINAL_STATES

logger = logging.getLogger("taskengine.retention")


def run_once(
    database: str,
    lease: LeaderLease,
    *,
    days: dict[str, float | None] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete expired terminal jobs; returns {state: jobs deleted}."""
    days = engine_settings.RETENTION_DAYS if days is None else days
    batch_size = int(batch_size or engine_settings.RETENTION_BATCH_SIZE)
    max_batches = int(max_batches or engine_settings.RETENTION_MAX_BATCHES)
    deleted: dict[str, int] = {}
    for state, keep_days in (days or {}).items():
        if state not in TERMINAL_STATES:
            raise ValueError(f"RETENTION_DAYS names {state!r}; only terminal states can be pruned")
        if keep_days is None:
            continue
        deleted[state] = _prune_state(database, lease, state, float(keep_days) * 86400, batch_size, max_batches)
        if deleted[state]:
            logger.info("retention: deleted %d %s job(s) older than %s day(s)", deleted[state], state, keep_days)
    return deleted


def _prune_state(
    database: str, lease: LeaderLease, state: str, age_seconds: float, batch_size: int, max_batches: int
) -> int:
    connection = connections[database]
    store = store_for(connection)
    params = {"state": state, "age_seconds": age_seconds, "batch_size": batch_size}
    total = 0
    for _ in range(max_batches):
        with fenced_transaction(database, lease):
            deleted = store.prune_terminal(connection, params)
        total += deleted
        if deleted < batch_size:
            break
    return total
