"""Sustained load: a producer enqueuing at a fixed rate while a steady pool of
``runworker`` processes (as shipped) consumes, reported per window: pickup latency
(started_at − max(enqueued_at, run_after), database clock), throughput, and the job
table's and claim index's dead tuples and size. PostgreSQL only (the statistics views
and relation sizes are PostgreSQL's)."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from typing import Any

from .base import BenchBase, LeaderVacuum, stop_workers

CLAIM_INDEX = "taskengine_job_claim_idx"  # migrations/0001_initial.py

TABLE_STATS = f"""
SELECT clock_timestamp(), n_live_tup, n_dead_tup, autovacuum_count,
       pg_relation_size('taskengine_job'), pg_relation_size('{CLAIM_INDEX}')
  FROM pg_stat_user_tables WHERE relid = 'taskengine_job'::regclass
"""
# pgstattuple, where the extension is installed: the claim index's dead entries
# (items already marked dead) and free space; the benchmark never installs it.
INDEX_STATS = f"SELECT dead_tuple_count, free_percent FROM pgstattuple('{CLAIM_INDEX}')"

WINDOW_PICKUP = """
SELECT least(floor(extract(epoch FROM enqueued_at - %(t0)s) / %(window)s)::int, %(last)s) AS w, count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY pickup)
  FROM (SELECT enqueued_at,
               extract(epoch FROM started_at - greatest(enqueued_at, run_after)) * 1000 AS pickup
          FROM taskengine_job WHERE queue = %(queue)s AND started_at IS NOT NULL) AS jobs
 GROUP BY 1 ORDER BY 1
"""
# Jobs finished after the producer stopped are the backlog's drain: counted apart.
WINDOW_FINISHED = """
SELECT CASE WHEN finished_at < %(t0)s + make_interval(secs => %(seconds)s)
            THEN floor(extract(epoch FROM finished_at - %(t0)s) / %(window)s)::int END, count(*)
  FROM taskengine_job WHERE queue = %(queue)s AND finished_at IS NOT NULL GROUP BY 1
"""
BACKLOG = """
SELECT extract(epoch FROM max(finished_at) - (%(t0)s + make_interval(secs => %(seconds)s)))
  FROM taskengine_job WHERE queue = %(queue)s
"""
OVERALL_PICKUP = """
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - greatest(enqueued_at, run_after)) * 1000)
  FROM taskengine_job WHERE queue = %(queue)s AND started_at IS NOT NULL
"""


class Sustained(BenchBase):
    def sustained(self, seconds: float, rate: float, workers: int, window: float) -> dict[str, Any]:
        """``rate`` jobs a second for ``seconds`` into a pool of ``workers`` runworker
        processes at their defaults; one row of figures per ``window`` seconds. The
        leader's vacuum of the job tables runs meanwhile, as in a deployment."""
        if not self.postgres:
            return {"sustained": "not available on SQLite (PostgreSQL statistics views)"}
        self.vacuum()
        procs = self._start_workers(workers, [], tuned=False)
        try:
            with LeaderVacuum(self.database) as vacuums:
                t0, stats, sent = self._produce(seconds, rate, window, procs)
                self._wait_until_drained(sent, procs)
            stats.append(self._table_stats())
        finally:
            codes = stop_workers(procs)
        if any(codes):
            raise RuntimeError(f"a sustained-load worker exited with {codes}")
        windows, backlog = self._windows(t0, seconds, window, stats)
        figures = {
            **self._sustained_summary(windows, seconds, rate, sent),
            **backlog,
            "sustained_vacuums": vacuums.vacuums,
        }
        self.clear()
        return figures

    def _produce(
        self, seconds: float, rate: float, window: float, procs: list[subprocess.Popen[bytes]]
    ) -> tuple[datetime, list[dict[str, Any]], int]:
        """Enqueue at ``rate`` (autocommit; the jobs due since the last turn, in one
        call), sampling the table statistics at every window's end."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            (t0,) = cursor.fetchone()
        stats = [self._table_stats()]
        started, sent, next_sample = time.monotonic(), 0, window
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due == 1:
                self.backend.enqueue(self.task, (), {})
            elif due > 1:
                self.backend.enqueue_many([(self.task, (), {})] * due)
            sent += max(due, 0)
            if elapsed >= next_sample:
                stats.append(self._table_stats())
                next_sample += window
                self._check_alive(procs, float("inf"), "")
            time.sleep(max(0.0, min((sent + 1) / rate - (time.monotonic() - started), 0.01)))
        return t0, stats, sent

    def _table_stats(self) -> dict[str, Any]:
        with self.connection.cursor() as cursor:
            cursor.execute(TABLE_STATS)
            at, live, dead, autovacuums, table_bytes, index_bytes = cursor.fetchone()
            row = {
                "at": at,
                "job_live_tuples": live,
                "job_dead_tuples": dead,
                "job_autovacuums": autovacuums,
                "job_table_mb": table_bytes / 2**20,
                "claim_index_kb": index_bytes / 1024,
            }
            cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple'")
            if cursor.fetchone():
                cursor.execute(INDEX_STATS)
                row["claim_index_dead_tuples"], row["claim_index_free_percent"] = cursor.fetchone()
        return row

    def _windows(
        self, t0: datetime, seconds: float, window: float, stats: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One row per window, and the backlog's figures (jobs finished after the
        producer stopped, and how long after it the last one finished)."""
        count = max(1, int(-(-seconds // window)))
        params: dict[str, datetime | float | str] = {
            "t0": t0,
            "window": window,
            "last": count - 1,
            "queue": self.queue,
            "seconds": seconds,
        }
        with self.connection.cursor() as cursor:
            cursor.execute(WINDOW_PICKUP, params)
            pickup = {w: (n, p) for w, n, p in cursor.fetchall()}
            cursor.execute(WINDOW_FINISHED, params)
            finished = dict(cursor.fetchall())
            cursor.execute(BACKLOG, params)
            (backlog,) = cursor.fetchone()
        backlog_figures = {
            "sustained_finished_after": finished.get(None, 0),
            "sustained_backlog_drain_s": float(backlog) if backlog is not None else None,
        }
        rows: list[dict[str, Any]] = []
        for w in range(count):
            n, (p50, p95, p99) = pickup.get(w, (0, (None, None, None)))
            sample = stats[min(w + 1, len(stats) - 1)]  # taken at the window's end
            rows.append(
                {
                    "window": w,
                    "enqueued": n,
                    "finished_per_s": finished.get(w, 0) / window,
                    "pickup_p50_ms": p50,
                    "pickup_p95_ms": p95,
                    "pickup_p99_ms": p99,
                    **{k: v for k, v in sample.items() if k != "at"},
                }
            )
        return rows, backlog_figures

    def _sustained_summary(
        self, windows: list[dict[str, Any]], seconds: float, rate: float, sent: int
    ) -> dict[str, Any]:
        with self.connection.cursor() as cursor:
            cursor.execute(OVERALL_PICKUP, {"queue": self.queue})
            (overall,) = cursor.fetchone()
        p50, p95, p99 = overall or (None, None, None)
        first, last = windows[0], windows[-1]
        return {
            "sustained_seconds": seconds,
            "sustained_rate_per_s": rate,
            "sustained_enqueued_per_s": sent / seconds,
            "sustained_jobs": sent,
            "sustained_pickup_p50_ms": p50,
            "sustained_pickup_p95_ms": p95,
            "sustained_pickup_p99_ms": p99,
            "sustained_p99_last_vs_first": ratio(last["pickup_p99_ms"], first["pickup_p99_ms"]),
            "sustained_claim_index_last_vs_first": ratio(last["claim_index_kb"], first["claim_index_kb"]),
            "sustained_windows": windows,
        }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
