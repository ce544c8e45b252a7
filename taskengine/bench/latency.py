"""Enqueue→start latency to an idle worker, and claim time versus table size."""

from __future__ import annotations

import statistics
import time

from ..models import Job, Queue
from .base import BenchBase, stop_workers


class Latency(BenchBase):
    def latency(self, samples: int, gap: float = 0.02) -> dict[str, float]:
        """One idle worker; jobs enqueued one at a time; started_at − enqueued_at."""
        proc = self._worker("--concurrency", "1")
        try:
            time.sleep(3.0)  # let it start, register and LISTEN
            ids: list[int] = []
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
        # Every one has started (the wait above): started_at is set on each row.
        millis = sorted((s - e).total_seconds() * 1000 for e, s in rows if s is not None)
        return {
            "latency_p50_ms": statistics.median(millis),
            "latency_p95_ms": millis[int(len(millis) * 0.95) - 1],
            "latency_samples": len(millis),
        }

    def claim_scaling(self, sizes: list[int], batch: int = 50, rounds: int = 20) -> dict[str, float]:
        """Average time of one claim of ``batch`` jobs with N queued rows, each claim
        rolled back so the table keeps N rows."""
        if not self.postgres:
            return {}
        figures: dict[str, float] = {}
        for size in sizes:
            self.fill_queued(size)
            timings = [self.claim_once(batch) for _ in range(rounds)]
            figures[f"claim_ms_at_{size}"] = statistics.median(timings) * 1000
        self.clear()
        return figures

    def claim_limits(self, size: int = 100_000, batch: int = 50, rounds: int = 50) -> dict[str, float]:
        """Median time of one claim of ``batch`` jobs (rolled back) with ``size`` queued
        rows: of a queue without limits, of the same queue with a concurrency limit (one
        it never reaches) and with a rate, and of ``size`` keyed jobs over 1,000 keys
        (limit 1 each) in a queue without limits (docs/performance.md)."""
        if not self.postgres:
            return {}
        figures: dict[str, float] = {}
        rows = Queue.objects.using(self.database).filter(pk=self.queue)
        Queue.objects.using(self.database).get_or_create(pk=self.queue)
        try:
            self.fill_queued(size)
            for name, limits in (
                ("unlimited", {}),
                ("queue_limit", {"concurrency_limit": 1_000_000}),
                ("rate_limit", {"rate_limit": 1_000_000_000, "rate_period": 1}),
                ("unlimited_again", {}),
            ):
                rows.update(**{"concurrency_limit": None, "rate_limit": None, "rate_period": None, **limits})
                self.claim_once(batch)  # warm
                timings = [self.claim_once(batch) for _ in range(rounds)]
                figures[f"claim_ms_{name}"] = statistics.median(timings) * 1000
            rows.update(concurrency_limit=None, rate_limit=None, rate_period=None)
            with self.connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE taskengine_job SET concurrency_key = 'key-' || (id %% 1000), concurrency_limit = 1 "
                    "WHERE queue = %s AND state = 'queued'",
                    [self.queue],
                )
                cursor.execute("ANALYZE taskengine_job")
            self.claim_once(batch)
            timings = [self.claim_once(batch) for _ in range(rounds)]
            figures["claim_ms_keys_1000"] = statistics.median(timings) * 1000
        finally:
            rows.delete()
            self.clear()
        return figures
