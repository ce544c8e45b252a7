"""taskengine's tables, one module per group (jobs, workers, schedules, operators, queues, bulk). The state machine lives in states.py and is mirrored here as
CHECK constraints, so no write path (ORM, raw SQL, a console action, psql) can store a
job in a state the engine could not have produced.

Rows are never deleted except by retention (terminal jobs only) — see
maintenance/retention.py.
"""

from __future__ import annotations

from .bulk import BulkOperation, BulkOperationState
from .jobs import LIVE, STATE_VALUES, TERMINAL, ExecutionLog, Job, JobQuerySet, LeaseExpiryPolicy
from .operators import OperatorAction, TenantMembership
from .queues import Queue
from .schedules import MisfirePolicy, MissedSlot, Schedule
from .workers import Leader, WorkerProcess, WorkerState

__all__ = [
    "LIVE",
    "STATE_VALUES",
    "TERMINAL",
    "BulkOperation",
    "BulkOperationState",
    "ExecutionLog",
    "Job",
    "JobQuerySet",
    "Leader",
    "LeaseExpiryPolicy",
    "MisfirePolicy",
    "MissedSlot",
    "OperatorAction",
    "Queue",
    "Schedule",
    "TenantMembership",
    "WorkerProcess",
    "WorkerState",
]
