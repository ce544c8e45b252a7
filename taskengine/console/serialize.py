"""Plain-dict shapes of jobs, attempts, audit rows, workers and leaders.

These dicts are the JSON API's contract (docs/api.md, pinned by
tests/console/test_api_contract.py) and the context the HTML pages render, so the
pages and the API can never disagree. Datetimes are ISO 8601 strings in UTC (or null).
Tracebacks are truncated to their last ``TRACEBACK_LIMIT`` characters (the end of a
traceback is where the error is); escaping is the renderer's job (Django templates
autoescape, JSON is JSON). The pages show a job's arguments and return value as JSON
text (``payload_text``), cut to ``PAYLOAD_LIMIT`` characters; the API returns them whole.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from taskengine.ops import operations
from taskengine.ops.tenancy import RequestUser

from ..limits import format_rate
from ..models import ExecutionLog, Job, Leader, OperatorAction, WorkerProcess

TRACEBACK_LIMIT = 4000
PAYLOAD_LIMIT = 100_000  # characters of one argument list or return value a page shows
_SURROGATE = re.compile("[\ud800-\udfff]")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def truncate_traceback(text: str, limit: int = TRACEBACK_LIMIT) -> dict[str, Any]:
    if len(text) <= limit:
        return {"text": text, "truncated": False, "length": len(text)}
    return {"text": "…" + text[-limit:], "truncated": True, "length": len(text)}


def payload_text(value: Any, limit: int = PAYLOAD_LIMIT) -> dict[str, Any]:
    """A stored JSON value as a page shows it: JSON text, its first ``limit`` characters;
    indented unless indenting would more than double it (deep nesting indents
    quadratically) or go deeper than the indenting (pure Python) encoder can — a worker
    stores return values as deep as the C encoder goes. Surrogates (SQLite can hold
    them in JSON from before enqueue refused them) are shown as their JSON escapes: a
    page must encode as UTF-8."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:
        text = "(nested too deeply to show here; the JSON API returns it)"
    else:
        try:
            indented = json.dumps(value, indent=1, ensure_ascii=False)
        except RecursionError:
            indented = text
        if len(indented) <= 2 * len(text) + 200:
            text = indented
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    if len(text) <= limit:
        return {"text": text, "truncated": False, "length": len(text)}
    return {"text": text[:limit] + "…", "truncated": True, "length": len(text)}


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.pk,
        "task_path": job.task_path,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state,
        "tenant": job.tenant,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "enqueued_at": iso(job.enqueued_at),
        "run_after": iso(job.run_after),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "cancel_requested_at": iso(job.cancel_requested_at),
        "locked_by": job.locked_by,
        "lease_expires_at": iso(job.lease_expires_at),
    }


def attempt_row(log: ExecutionLog) -> dict[str, Any]:
    return {
        "attempt": log.attempt,
        "worker_id": log.worker_id,
        "started_at": iso(log.started_at),
        "finished_at": iso(log.finished_at),
        "outcome": log.outcome,
        "error_class": log.error_class,
        "error_message": log.error_message,
        "traceback": truncate_traceback(log.traceback or ""),
    }


def audit_row(row: OperatorAction) -> dict[str, Any]:
    return {
        "id": row.pk,
        "actor": row.actor_repr,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "tenant": row.tenant,
        "state_before": row.state_before,
        "state_after": row.state_after,
        "reason": row.reason,
        "created_at": iso(row.created_at),
    }


def job_actions(job: Job, user: RequestUser) -> dict[str, bool]:
    """Which operator actions this user may take on this job in its current state."""
    return {
        action: operations.has_permission(user, action) and operations.allowed(job, action)
        for action in operations.PERMISSIONS
    }


def job_detail(
    job: Job, user: RequestUser, *, attempts: list[ExecutionLog], audit: list[OperatorAction]
) -> dict[str, Any]:
    return {
        **job_summary(job),
        "backend": job.backend,
        "args": job.args,
        "kwargs": job.kwargs,
        "return_value": job.return_value,
        "unique_key": job.unique_key,
        "timeout_seconds": job.timeout_seconds,
        "schedule": job.schedule.name if job.schedule is not None else None,
        "slot": iso(job.slot),
        "acting_user_id": job.acting_user_id,
        "attempt_log": [attempt_row(a) for a in attempts],
        "audit": [audit_row(a) for a in audit],
        "actions": job_actions(job, user),
    }


def worker_row(worker: WorkerProcess, alive: bool) -> dict[str, Any]:
    return {
        "worker_id": worker.worker_id,
        "host": worker.host,
        "pid": worker.pid,
        "queues": worker.queues,
        "concurrency": worker.concurrency,
        "state": worker.state,
        "alive": alive,
        "started_at": iso(worker.started_at),
        "last_heartbeat_at": iso(worker.last_heartbeat_at),
        "stopped_at": iso(worker.stopped_at),
    }


def leader_row(leader: Leader, now: datetime) -> dict[str, Any]:
    return {
        "name": leader.name,
        "holder": leader.holder,
        "term": leader.term,
        "acquired_at": iso(leader.acquired_at),
        "renewed_at": iso(leader.renewed_at),
        "expires_at": iso(leader.expires_at),
        "live": leader.expires_at > now,
    }


def queue_status(row: Any) -> dict[str, Any]:
    """A ``queues.QueueStatus`` as the console and the API show it (docs/api.md)."""
    return {
        "name": row.name,
        "state": row.state,
        "paused": row.paused,
        "paused_at": iso(row.paused_at),
        "paused_by": row.paused_by or None,
        "pause_reason": row.pause_reason,
        "declared_in_settings": row.declared,
        "tenant": row.tenant,
        "queued": row.queued.as_dict(),
        "running": row.running.as_dict(),
        "concurrency_limit": row.concurrency_limit,
        "rate": row.rate or None,
    }


def queue_record(queue: Any) -> dict[str, Any]:
    """A Queue row after a change (the API's answer to pause / resume)."""
    return {
        "name": queue.name,
        "state": "paused" if queue.paused else "active",
        "paused": queue.paused,
        "paused_at": iso(queue.paused_at),
        "paused_by": queue.paused_by or None,
        "pause_reason": queue.pause_reason,
        "concurrency_limit": queue.concurrency_limit,
        "rate": format_rate(queue.rate_limit, queue.rate_period) or None,
        "tenant": queue.tenant,
    }
