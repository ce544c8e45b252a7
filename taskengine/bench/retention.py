"""Retention at scale: N terminal jobs loaded in one INSERT … SELECT, pruned by the
engine's own retention (taskengine.leader.retention.run_once, under a maintenance
lease of the benchmark's own) while a claimer claims from the same table; the pruning
rate and the claim's p99 with and without pruning. PostgreSQL only.

The loaded jobs finished in the year 2000 and the benchmark's retention cutoff is
2001-01-01, so a run against a live database prunes only its own rows."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from taskengine.leader import retention
from taskengine.leader.election import Elector

from .base import BenchBase, percentile

CLAIMER_QUEUED = 10_000  # queued jobs the claimer claims from (each claim rolled back)
CUTOFF = "2001-01-01 00:00:00+00"

# The terminal jobs and their one attempt row each, as a worker leaves them.
LOAD_TERMINAL = """
WITH jobs AS (
    INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after, enqueued_at,
                                started_at, finished_at, attempts, max_attempts, on_lease_expired)
    SELECT %(task_path)s, 'benchmark', %(queue)s, 0, '[]', '{}', 'succeeded', t, t, t, t, 1, 1, 'retry'
      FROM (SELECT timestamptz '2000-01-01 00:00:00+00' + g * interval '1 millisecond' AS t
              FROM generate_series(1, %(rows)s) AS g) AS times
    RETURNING id, started_at, finished_at
)
INSERT INTO task_execution_logs (job_id, attempt, worker_id, started_at, finished_at, outcome, error_message, traceback)
SELECT id, 1, 'benchmark-retention', started_at, finished_at, 'succeeded', '', '' FROM jobs
"""


class Retention(BenchBase):
    def retention(self, terminal: int, baseline_seconds: float = 5.0) -> dict[str, Any]:
        if not self.postgres:
            return {"retention": "not available on SQLite (PostgreSQL bulk load and concurrent claims)"}
        self.clear()
        started = time.perf_counter()
        with self.connection.cursor() as cursor:
            cursor.execute(LOAD_TERMINAL, {"task_path": self.task.module_path, "queue": self.queue, "rows": terminal})
        load_seconds = time.perf_counter() - started
        self.fill_queued(CLAIMER_QUEUED)
        self.vacuum()
        _, quiet = self._claims_while(lambda: time.sleep(baseline_seconds))
        (pruned, prune_seconds), busy = self._claims_while(self._prune_all)
        if pruned != terminal:
            raise RuntimeError(f"retention pruned {pruned} of the {terminal} terminal jobs loaded")
        self.clear()
        p99_quiet, p99_busy = percentile(quiet, 0.99) * 1000, percentile(busy, 0.99) * 1000
        return {
            "retention_jobs": terminal,
            "retention_load_per_s": terminal / load_seconds,
            "retention_prune_per_s": pruned / prune_seconds,
            "retention_prune_seconds": prune_seconds,
            "retention_claim_p99_ms_without": p99_quiet,
            "retention_claim_p99_ms_during": p99_busy,
            "retention_claims_without": len(quiet),
            "retention_claims_during": len(busy),
            "retention_claim_p99_ratio": p99_busy / p99_quiet,
        }

    def _claims_while[T](self, work: Callable[[], T]) -> tuple[T, list[float]]:
        """Run ``work()`` here while a thread claims 50 jobs (rolled back) in a loop on
        its own connection; ``work``'s result and the claims' durations."""
        stop = threading.Event()
        timings: list[float] = []
        errors: list[BaseException] = []

        def claimer() -> None:
            try:
                while not stop.is_set():
                    timings.append(self.claim_once())
            except BaseException as exc:  # reported by the caller below
                errors.append(exc)
            finally:
                connections[self.database].close()

        thread = threading.Thread(target=claimer, name="benchmark-claimer", daemon=True)
        thread.start()
        try:
            result = work()
        finally:
            stop.set()
            thread.join(60)
        if errors:
            raise RuntimeError(f"the claimer failed: {errors[0]}")
        if not timings:
            raise RuntimeError("the claimer made no claim")
        return result, timings

    def _prune_all(self) -> tuple[int, float]:
        """retention.run_once until nothing is left older than CUTOFF; jobs and seconds."""
        elector = Elector(self.database, f"benchmark-retention-{os.getpid()}")
        if not elector.step():
            raise RuntimeError("another process holds the maintenance lease; retention needs it")
        elector.start()
        quiet = logging.getLogger("taskengine.retention")  # it logs a line per 10,000 jobs
        level = quiet.level
        quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT extract(epoch FROM now() - %s::timestamptz)", [CUTOFF])
                (age,) = cursor.fetchone()
            days: dict[str, float | None] = {"succeeded": float(age) / 86400}
            sweep = retention.RetentionSweep(self.database)  # as the leader's service keeps one
            total, started = 0, time.perf_counter()
            while True:
                lease = elector.lease()
                if lease is None:
                    raise RuntimeError("the benchmark lost its maintenance lease while pruning")
                deleted = sum(sweep.run_once(lease, days=days).values())
                total += deleted
                if not deleted:
                    return total, time.perf_counter() - started
        finally:
            quiet.setLevel(level)
            elector.stop()
