"""Enqueue→start latency to an idle worker, and claim time versus table size."""

from __future__ import annotations

import statistics
import time

from ..models import Job
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
