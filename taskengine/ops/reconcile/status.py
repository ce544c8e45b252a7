"""The facts reconcile reports beside its findings: the migration gate, the current
leader and its term, and the workers. Read straight from the Leader and WorkerProcess
tables (not through leadership.py / the registry), on the database clock.
"""

from __future__ import annotations

from typing import Any

from taskengine import gate
from taskengine.ops.reconcile.base import Context, iso
from taskengine.store import to_datetime

ELECTION = "maintenance"  # leadership.ELECTION: the election the maintenance leader wins
WORKERS_LIMIT = 100


def gate_state(database: str) -> dict[str, Any]:
    status_fn = getattr(gate, "status", None)
    if status_fn is None:  # an older gate without status(): readiness only
        return {
            "ready": bool(gate.is_ready(database)),
            "pending": [],
            "conflicts": {},
            "unknown_applied": [],
            "error": None,
            "reason": "",
        }
    state = status_fn(database)
    return {
        "ready": state.ready,
        "pending": list(state.pending),
        "conflicts": dict(state.conflicts),
        "unknown_applied": list(state.unknown_applied),
        "error": state.error,
        "reason": getattr(state, "reason", ""),
    }


def leader(ctx: Context) -> dict[str, Any] | None:
    """The maintenance election's row (or, failing that, the latest-expiring one)."""
    rows = ctx.fetch("reconcile_leaders")
    if not rows:
        return None
    name, holder, term, expires_at, expired = next((r for r in rows if r[0] == ELECTION), rows[0])
    return {
        "name": name,
        "holder": holder,
        "term": term,
        "expires_at": iso(to_datetime(expires_at)),
        "expired": bool(expired),
        "elections": len(rows),
    }


def workers(ctx: Context) -> list[dict[str, Any]]:
    return [
        {
            "worker_id": r[0],
            "host": r[1],
            "pid": r[2],
            "state": r[3],
            "last_heartbeat_at": iso(to_datetime(r[4])),
            "heartbeat_age_seconds": round(float(r[5]), 3),
            "alive": bool(r[6]),
            "running_jobs": r[7],
        }
        for r in ctx.fetch("reconcile_workers", limit=WORKERS_LIMIT)
    ]
