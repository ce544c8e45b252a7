"""Test helpers for projects that use taskengine (see docs/testing.md).

- ``enqueued_jobs``, ``assert_enqueued``, ``assert_not_enqueued``: what was enqueued
  (task, arguments, queue, unique key, run_after, ...), with failure messages that list
  what there is.
- ``drain``: run due jobs inline, in the test's thread and transaction, through the
  engine's real claim and finish statements (retries, timeouts, takes_context and
  fencing behave as in a worker).
- ``advance_clock`` / ``advance_clock_to``: move the engine's clock forward (delayed jobs, retries, leases,
  schedules) without sleeping; ``run_schedules``: the leader's schedule pass, once.
- ``taskengine.testing.pytest_plugin``: pytest fixtures over the same functions.

Everything works on PostgreSQL and SQLite, inside a test's transaction or outside one.
"""

from .assertions import assert_enqueued, assert_not_enqueued, describe_job, enqueued_jobs
from .clock import TEST_LEADER_ID, TIMESTAMP_COLUMNS, advance_clock, advance_clock_to, engine_now, run_schedules
from .drain import TEST_WORKER_ID, DrainedAttempt, DrainLimitReached, DrainResult, drain

__all__ = [
    "TEST_LEADER_ID",
    "TEST_WORKER_ID",
    "TIMESTAMP_COLUMNS",
    "DrainLimitReached",
    "DrainResult",
    "DrainedAttempt",
    "advance_clock",
    "advance_clock_to",
    "assert_enqueued",
    "assert_not_enqueued",
    "describe_job",
    "drain",
    "engine_now",
    "enqueued_jobs",
    "run_schedules",
]
