"""The fault suite's task (importable by worker subprocesses).

Each execution leaves a marker row — job id, attempt, pid, start and end on the database
clock — written on its own short connection (``FAULTS_MARKER_DSN``, the throwaway
server's superuser, so exhausting the ordinary connection slots never blinds it). Two
markers of one job whose intervals overlap mean the job ran twice at once.
"""

from __future__ import annotations

import os
import time
import uuid

import psycopg

from taskengine.compat import TaskContext, task

MARKER_TABLE = "fault_markers"
CREATE_MARKER_TABLE = f"""
CREATE TABLE {MARKER_TABLE} (
    token uuid PRIMARY KEY,
    run_id text NOT NULL,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz
)"""
WRITE_PATIENCE = 60.0  # seconds a marker write retries through an outage before the attempt fails


def _write(dsn: str, query: str, params: dict) -> None:
    deadline = time.monotonic() + WRITE_PATIENCE
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(query, params)
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _start(dsn: str, params: dict) -> None:
    # Idempotent on the token: a retry after a commit whose answer was lost adds nothing.
    _write(
        dsn,
        f"INSERT INTO {MARKER_TABLE} (token, run_id, job_id, attempt, pid, started_at) "
        "VALUES (%(token)s, %(run_id)s, %(job_id)s, %(attempt)s, %(pid)s, clock_timestamp()) "
        "ON CONFLICT (token) DO NOTHING",
        params,
    )


def _end(dsn: str, params: dict) -> None:
    query = f"UPDATE {MARKER_TABLE} SET ended_at = clock_timestamp() WHERE token = %(token)s AND ended_at IS NULL"
    try:
        _write(dsn, query, params)
    except psycopg.Error:
        raise
    except BaseException:
        # The worker's interrupt (lease lost, timeout) landed during this write: the
        # handler is still running, so its end is still to be recorded; then go on.
        _write(dsn, query, params)
        raise


@task(max_attempts=10, retry_backoff=0.2, takes_context=True)
def mark(context: TaskContext, run_id: str, work_seconds: float) -> None:
    dsn = os.environ["FAULTS_MARKER_DSN"]
    params = dict(
        token=uuid.uuid4(), run_id=run_id, job_id=int(context.task_result.id), attempt=context.attempt, pid=os.getpid()
    )
    try:
        _start(dsn, params)
        time.sleep(work_seconds)
    finally:
        _end(dsn, params)
