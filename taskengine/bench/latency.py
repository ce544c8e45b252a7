"""Enqueue→start latency to an idle worker, and claim time versus table size."""

from __future__ import annotations

import statistics
import time

from django.db import transaction

from .. import store
from ..models import Job
from .base import stop_workers


class Latency:
    def latency(self, samples: int, gap: float = 0.02) -> dict[str, float]:
        """One idle worker; jobs enqueued one at a time; started_at − enqueued_at."""
        proc = self._worker("--concurrency", "1")
        try:
            time.sleep(3.0)  # let it start, register and LISTEN
            ids = []
            for _ in range(samples):
                ids.append(int(self.backend.enqueue(self.task, (), {}).id))
                time.sleep(gap)
            deadline = time.monotonic() + 60
            while Job.objects.using(self.database).filter(pk__in=ids, started_at__isnull=True).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("latency jobs did not start")
                time.sleep(0.05)
        finally:
            stop_workers([proc])
        rows = Job.objects.using(self.database).filter(pk__in=ids).values_list("enqueued_at", "started_at")
        millis = sorted((s - e).total_seconds() * 1000 for e, s in rows)
        return {
            "latency_p50_ms": statistics.median(millis),
            "latency_p95_ms": millis[int(len(millis) * 0.95) - 1],
            "latency_samples": len(millis),
        }

    def fill_queued(self, size: int) -> None:
        """Top the benchmark queue up to ``size`` queued jobs in one INSERT … SELECT."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, "
                "run_after, enqueued_at, attempts, max_attempts, on_lease_expired) "
                "SELECT %s, 'benchmark', %s, 0, '[]', '{}', 'queued', now(), now(), 0, 1, 'retry' "
                "FROM generate_series(1, %s - (SELECT count(*) FROM taskengine_job WHERE queue = %s "
                "AND state = 'queued'))",
                [self.task.module_path, self.queue, size, self.queue],
            )
            cursor.execute("ANALYZE taskengine_job")

    def claim_once(self, batch: int = 50) -> float:
        """Seconds one claim of ``batch`` jobs takes, rolled back so the queue keeps its rows."""
        with transaction.atomic(using=self.database):
            started = time.perf_counter()
            store.claim_jobs(self.connection, worker_id="bench", queues=[self.queue], limit=batch, lease_seconds=30)
            seconds = time.perf_counter() - started
            transaction.set_rollback(True, using=self.database)
        return seconds

    def claim_scaling(self, sizes: list[int], batch: int = 50, rounds: int = 20) -> dict[str, float]:
        """Average time of one claim of ``batch`` jobs with N queued rows, each claim
        rolled back so the table keeps N rows."""
        if not self.postgres:
            return {}
        figures = {}
        for size in sizes:
            self.fill_queued(size)
            timings = [self.claim_once(batch) for _ in range(rounds)]
            figures[f"claim_ms_at_{size}"] = statistics.median(timings) * 1000
        self.clear()
        return figures
