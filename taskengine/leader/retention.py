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
from datetime import UTC, datetime

from django.db import connections

from taskengine.conf import engine_settings
from taskengine.db import store_for
from taskengine.leader.election import LeaderLease, fenced_transaction
from taskengine.states import TERMINAL_STATES

logger = logging.getLogger("taskengine.retention")


EARLIEST = datetime(1, 1, 1, tzinfo=UTC)  # a pass's first batch starts at the oldest job


def run_once(
    database: str,
    lease: LeaderLease,
    *,
    days: dict[str, float | None] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> dict[str, int]:
    """One run of a new sweep (tests, one-off calls); returns {state: jobs deleted}."""
    return RetentionSweep(database).run_once(lease, days=days, batch_size=batch_size, max_batches=max_batches)


class RetentionSweep:
    """The leader's retention service. A *pass* over a state's expired jobs goes oldest
    first, batch after batch, and may span several runs (each at most max_batches); the
    sweep remembers where the pass's last batch stopped (the latest ``finished_at`` it
    deleted), so the next batch's index scan starts there instead of stepping over the
    entries of every row deleted since the last vacuum. A batch that comes back short
    ends the pass: the next one starts from the oldest again, so a job passed over
    because another transaction held it (SKIP LOCKED) is pruned by a later pass."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.resume_at: dict[str, datetime] = {}  # state -> where its pass goes on

    def run_once(
        self,
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
            deleted[state] = self._prune_state(lease, state, float(keep_days) * 86400, batch_size, max_batches)
            if deleted[state]:
                logger.info("retention: deleted %d %s job(s) older than %s day(s)", deleted[state], state, keep_days)
        return deleted

    def _prune_state(
        self, lease: LeaderLease, state: str, age_seconds: float, batch_size: int, max_batches: int
    ) -> int:
        connection = connections[self.database]
        store = store_for(connection)
        total = 0
        for _ in range(max_batches):
            after = self.resume_at.get(state, EARLIEST)
            params = {"state": state, "age_seconds": age_seconds, "batch_size": batch_size, "after": after}
            with fenced_transaction(self.database, lease):
                batch = store.prune_terminal(connection, params)
            total += batch.deleted
            if batch.deleted < batch_size or batch.last_finished_at is None:
                self.resume_at.pop(state, None)  # the pass is over
                break
            self.resume_at[state] = batch.last_finished_at
        return total
