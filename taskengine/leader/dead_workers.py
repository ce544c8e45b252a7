"""Dead-worker cleanup, on the leader.

A worker whose heartbeat is older than WORKER_DEAD_AFTER_SECONDS is marked ``dead``;
recovery (recovery.py, the one recovery path) then hands its running jobs back without
waiting for their leases. A dead worker that was only paused re-registers on its next
heartbeat (registry.heartbeat refuses a dead row) and its late finishes are fenced out.
Rows of stopped or dead workers are deleted WORKER_PRUNE_AFTER_SECONDS after their
last heartbeat, unless a running job still names them.

Every write carries the leader's lease; under a stale term nothing changes. Database
errors propagate to the ticker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import connections

from taskengine.conf import engine_settings
from taskengine.db.queries import sql
from taskengine.leader.election import LeaderLease

logger = logging.getLogger("taskengine.workers")


@dataclass(frozen=True, slots=True)
class DeadWorkerReport:
    marked_dead: list[str]
    pruned: list[str]


def run_once(
    database: str, lease: LeaderLease, *, dead_after: float | None = None, prune_after: float | None = None
) -> DeadWorkerReport:
    params = {
        **lease.params(),
        "dead_after": float(dead_after if dead_after is not None else engine_settings.WORKER_DEAD_AFTER_SECONDS),
        "prune_after": float(prune_after if prune_after is not None else engine_settings.WORKER_PRUNE_AFTER_SECONDS),
    }
    connection = connections[database]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "mark_dead_workers"), params)
        dead = cursor.fetchall()
        cursor.execute(sql(connection, "prune_workers"), params)
        pruned = [row[0] for row in cursor.fetchall()]
    for worker_id, host, pid, last_heartbeat in dead:
        logger.warning(
            "worker %s (host %s, pid %s) is dead: no heartbeat since %s; its jobs are recovered",
            worker_id,
            host,
            pid,
            last_heartbeat,
            extra={"worker_id": worker_id},
        )
    if pruned:
        logger.info("forgot %d long-gone worker(s)", len(pruned))
    return DeadWorkerReport([row[0] for row in dead], pruned)
