"""What every benchmark phase shares: the queue and its clean-up, enqueueing, filling
the queue and timing one claim, starting real ``runworker`` processes and waiting for
them, and the connection strings the project's own pgbench and COPY scripts run with.

Each phase (``drain``, ``latency``, ``raw``, ``retention``, ``sustained``) is a subclass
of BenchBase that adds its own methods; ``Benchmark`` (in ``__init__``) combines them."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import store
from ..backend import DatabaseBackend
from ..compat import Task, clone_task
from ..conf import engine_settings
from ..db import store_for
from ..leader import vacuum
from ..models import Job, WorkerProcess, WorkerState
from .tasks import noop


class BenchBase:
    def __init__(self, *, database: str, queue: str, log: Callable[[str], None] = print) -> None:
        self.database = database
        self.queue = queue
        self.log = log
        self.backend = DatabaseBackend("benchmark", {"QUEUES": [], "OPTIONS": {"database": database}})
        self.task: Task[..., Any] = clone_task(noop, queue_name=queue)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    @property
    def postgres(self) -> bool:
        return store_for(self.connection).server

    def task_for(self, function: Task[..., Any]) -> Task[..., Any]:
        """``function`` (a @task) on the benchmark's queue."""
        return clone_task(function, queue_name=self.queue)

    def clear(self) -> None:
        """Delete the benchmark queue's jobs and their attempt rows (in SQL: the ORM's
        cascade would load every row first) and settle the tables."""
        with transaction.atomic(using=self.database), self.connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM task_execution_logs WHERE job_id IN (SELECT id FROM taskengine_job WHERE queue = %s)",
                [self.queue],
            )
            cursor.execute("DELETE FROM taskengine_job WHERE queue = %s", [self.queue])
        self.vacuum()

    def vacuum(self) -> None:
        """Settle the tables between phases, as the raw limit's script does after
        loading: without it each phase pays for the dead rows of the one before."""
        if not self.postgres:
            return
        with self.connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE taskengine_job")
            cursor.execute("VACUUM ANALYZE task_execution_logs")
            try:  # a forced checkpoint now rather than a WAL-size one mid-phase
                cursor.execute("CHECKPOINT")
            except DatabaseError:
                self.log("note: no CHECKPOINT privilege; expect more variance")

    # --- enqueue ---------------------------------------------------------------------

    def enqueue_single(self, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            self.backend.enqueue(self.task, (), {})
        return count / (time.perf_counter() - started)

    def enqueue_bulk(self, count: int, batch: int = 10_000, task: Task[..., Any] | None = None) -> float:
        task = task or self.task
        started = time.perf_counter()
        done = 0
        while done < count:
            n = min(batch, count - done)
            self.backend.enqueue_many([(task, (), {})] * n)
            done += n
        return count / (time.perf_counter() - started)

    # --- claims ----------------------------------------------------------------------

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

    # --- workers ---------------------------------------------------------------------

    def _worker(self, *args: str, tuned: bool = True) -> subprocess.Popen[bytes]:
        """A ``runworker`` on the benchmark queue. ``tuned`` adds a short idle backoff
        (the existing phases' setting); ``tuned=False`` runs it as shipped."""
        # `python -m django` with this process's settings module and import path: the
        # same project whether it was started through its manage.py or not (an
        # installed taskengine has no manage.py of its own).
        env = dict(
            os.environ,
            TASKENGINE_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            DJANGO_SETTINGS_MODULE=settings.SETTINGS_MODULE,
            PYTHONPATH=os.pathsep.join(path for path in sys.path if path),
        )
        env["DATABASE_URL"] = database_url(self.connection.settings_dict)
        backoff = ["--backoff-base", "0.01", "--max-backoff", "0.5"] if tuned else []
        return subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", "--queues", self.queue, "--no-leader", *backoff, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _start_workers(self, count: int, args: list[str], tuned: bool) -> list[subprocess.Popen[bytes]]:
        """``count`` workers, returned once every one has registered and gone idle."""
        tag = f"bench-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        ids = [f"{tag}-{i}" for i in range(count)]
        procs = [self._worker(*args, "--worker-id", worker_id, tuned=tuned) for worker_id in ids]
        try:
            self._wait_until_registered(ids, procs)
        except BaseException:
            stop_workers(procs)
            raise
        time.sleep(1.0)  # registered workers start LISTENing and go idle
        return procs

    def _wait_until_registered(self, worker_ids: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 120
        while WorkerProcess.objects.using(self.database).filter(
            worker_id__in=worker_ids, state=WorkerState.RUNNING
        ).count() < len(worker_ids):
            self._check_alive(procs, deadline, "the benchmark workers did not start")
            time.sleep(0.05)

    def _wait_until_drained(self, jobs: int, procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + 60 + jobs / 100
        while Job.objects.using(self.database).filter(queue=self.queue, state__in=["queued", "running"]).exists():
            self._check_alive(procs, deadline, "the drain did not finish")
            time.sleep(0.2)

    @staticmethod
    def _check_alive(procs: list[subprocess.Popen[bytes]], deadline: float, message: str) -> None:
        exited = [p.returncode for p in procs if p.poll() is not None]
        if exited:
            raise RuntimeError(f"a benchmark worker exited early with {exited}")
        if time.monotonic() > deadline:
            raise RuntimeError(message)

    def _conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string for ``dbname`` (default: the engine's database) on
        the engine's server, with the engine's own connection parameters (host, port,
        user, password, sslmode, ...)."""
        from psycopg import pq
        from psycopg.conninfo import make_conninfo

        keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
        params = self.connection.get_connection_params()  # also psycopg's own: context, ...
        libpq = {k: v for k, v in params.items() if k in keywords and v is not None}
        if dbname is not None:
            libpq["dbname"] = dbname
        return make_conninfo(**libpq)

    @contextmanager
    def scratch_database(self, prefix: str) -> Iterator[str]:
        """A scratch database on the engine's server, ``<prefix>_<pid>`` (an earlier one of
        the same name dropped first), dropped afterwards whatever happens; its name."""
        import psycopg

        scratch = f"{prefix}_{os.getpid()}"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{scratch}"')
            try:
                yield scratch
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every worker (a graceful stop) and wait; their exit codes."""
    for proc in procs:
        proc.terminate()
    return [proc.wait(60) for proc in procs]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class LeaderVacuum(threading.Thread):
    """The leader's vacuum service (leader/vacuum.py) on its cadence, in this process,
    while a phase's workers run: the benchmark's workers run without a leader (a leader
    would also run retention, recovery and schedules on whatever else the database
    holds), but a shipped deployment's leader vacuums the job tables, and the long-drain
    and sustained figures are about what that does. ``vacuums`` counts the tables
    vacuumed."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True, name="benchmark-vacuum")
        self.database = database
        self.vacuums = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(float(engine_settings.VACUUM_INTERVAL_SECONDS)):
                self.vacuums += len(vacuum.run_once(self.database))
        finally:
            connections[self.database].close()

    def __enter__(self) -> LeaderVacuum:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join()


class RssSampler(threading.Thread):
    """Samples the resident memory of the worker processes every 0.2 s."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[int, list[float]] = {pid: [] for pid in pids}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            for pid in self.pids:
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.samples[pid].append(int(line.split()[1]) / 1024)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    @property
    def max_mb(self) -> float:
        return max((max(s) for s in self.samples.values() if s), default=0.0)

    @property
    def growth_mb(self) -> float:
        """Last-quarter mean minus second-quarter mean (start-up excluded), worst worker."""
        growths: list[float] = []
        for s in self.samples.values():
            if len(s) >= 8:
                q = len(s) // 4
                growths.append(statistics.mean(s[-q:]) - statistics.mean(s[q : 2 * q]))
        return max(growths, default=0.0)


def database_url(s: Mapping[str, Any]) -> str:
    if "sqlite" in s["ENGINE"]:
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or "postgres"
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
