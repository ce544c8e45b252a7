"""Drain throughput with real ``runworker`` processes: the configured drain, the worker
as shipped (default concurrency, and ``--concurrency 32``), jobs with real work
(``--work io`` / ``--work cpu``) against their ideal, and the long drain's decay.

The workers are started first and the jobs are committed only once every worker has
registered and is waiting (one transaction, so one wake-up reaches them all): the
window then measures W workers draining, not one worker while the others are still
importing Django. Throughput is jobs / (last finish − first start), both from the
database clock."""

from __future__ import annotations

import os

from django.db import transaction

from .. import store
from .base import BenchBase, LeaderVacuum, RssSampler, stop_workers
from .tasks import CPU_SECONDS, IO_SECONDS, noop, sleep_5ms, spin_1ms

WORK_TASKS = {"io": sleep_5ms, "cpu": spin_1ms, "none": noop}
LONG_DRAIN_HEAD = 20_000  # the long drain's head: its rate is the one later rates are held to


def ideal_rate(work: str, workers: int, concurrency: int) -> float:
    """Jobs per second if the engine cost nothing.

    io: each job sleeps IO_SECONDS with the GIL released, so W workers × C slots finish
    W·C / IO_SECONDS jobs a second. cpu: each job needs CPU_SECONDS of its thread's CPU
    under one GIL per process, so a process does at most 1 / CPU_SECONDS (one core's
    worth), and W processes at most min(W, cores) cores' worth."""
    if work == "io":
        return workers * concurrency / IO_SECONDS
    if work == "cpu":
        return min(workers, os.cpu_count() or 1) / CPU_SECONDS
    raise ValueError(f"no ideal rate for work {work!r}")


class Drains(BenchBase):
    def drain(
        self, workers: int, concurrency: int | None, jobs: int, *, work: str = "none", tuned: bool = True
    ) -> dict[str, float]:
        """Throughput of ``workers`` runworker processes at ``concurrency`` each (None:
        runworker's default), draining ``jobs`` jobs of ``work``."""
        self.vacuum()
        args: list[str] = [] if concurrency is None else ["--concurrency", str(concurrency)]
        procs = self._start_workers(workers, args, tuned)
        rss = RssSampler([p.pid for p in procs])
        try:
            rss.start()
            with transaction.atomic(using=self.database):
                self.enqueue_bulk(jobs, task=self.task_for(WORK_TASKS[work]))
            self._wait_until_drained(jobs, procs)
        finally:
            codes = stop_workers(procs)
            if rss.is_alive():
                rss.stop()
        if any(codes):
            raise RuntimeError(f"a benchmark worker exited with {codes}")
        done, seconds = self._drained(jobs)
        return {
            "drain_per_s": done / seconds,
            "drain_seconds": seconds,
            "worker_rss_mb_max": rss.max_mb,
            "worker_rss_growth_mb": rss.growth_mb,
        }

    def _drained(self, jobs: int) -> tuple[int, float]:
        """Jobs succeeded and the seconds from the first start to the last finish."""
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), MIN(started_at), MAX(finished_at) FROM taskengine_job "
                "WHERE queue = %s AND state = 'succeeded'",
                [self.queue],
            )
            done, first, last = cursor.fetchone()
        if done != jobs:
            raise RuntimeError(f"drain incomplete: {done} of {jobs} jobs succeeded")
        first, last = store.to_datetime(first), store.to_datetime(last)
        return done, max((last - first).total_seconds(), 1e-6)

    def default_drains(self, jobs: int) -> dict[str, float]:
        """One runworker as shipped: default concurrency, then ``--concurrency 32``
        (no other flag either time)."""
        default = self.drain(1, None, jobs, tuned=False)
        self.clear()
        c32 = self.drain(1, 32, jobs, tuned=False)
        self.clear()
        return {
            "drain_default_per_s": default["drain_per_s"],
            "drain_default_rss_mb_max": default["worker_rss_mb_max"],
            "drain_c32_per_s": c32["drain_per_s"],
        }

    def work_drain(self, work: str, workers: int, concurrency: int, jobs: int) -> dict[str, float]:
        """``jobs`` jobs with real work drained by the configured workers, against
        ideal_rate()."""
        rate = self.drain(workers, concurrency, jobs, work=work)["drain_per_s"]
        self.clear()
        ideal = ideal_rate(work, workers, concurrency)
        return {f"work_{work}_per_s": rate, f"work_{work}_ideal_per_s": ideal, f"work_{work}_vs_ideal": rate / ideal}

    def long_drain(self, workers: int, concurrency: int, jobs: int) -> dict[str, float]:
        """``jobs`` queued in bulk, drained by the configured workers: the rate over the
        first LONG_DRAIN_HEAD jobs to finish, over the whole drain, and their ratio. The
        leader's vacuum runs meanwhile, as in a deployment (``LeaderVacuum``): it keeps the
        dead claim-index entries of the jobs done from piling up at the head of the queue."""
        with LeaderVacuum(self.database) as vacuums:
            whole = self.drain(workers, concurrency, jobs)
        head = min(LONG_DRAIN_HEAD, jobs)
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT finished_at FROM taskengine_job WHERE queue = %s ORDER BY finished_at LIMIT 1 OFFSET %s",
                [self.queue, head - 1],
            )
            (head_end,) = cursor.fetchone()
            cursor.execute("SELECT MIN(started_at) FROM taskengine_job WHERE queue = %s", [self.queue])
            (first,) = cursor.fetchone()
        head_seconds = max((store.to_datetime(head_end) - store.to_datetime(first)).total_seconds(), 1e-6)
        self.clear()
        head_rate = head / head_seconds
        return {
            "long_drain_jobs": jobs,
            "long_drain_head_per_s": head_rate,
            "long_drain_per_s": whole["drain_per_s"],
            "long_drain_seconds": whole["drain_seconds"],
            "long_drain_decay": whole["drain_per_s"] / head_rate,
            "long_drain_vacuums": vacuums.vacuums,
        }
