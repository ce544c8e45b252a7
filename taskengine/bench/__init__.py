"""The benchmark behind ``manage.py benchmark``: enqueue rates, drain throughput with
real runworker processes, enqueue→start latency, claim time versus table size, worker
memory — and, in the same run, the machine's raw SQL limit (pgbench running this
package's raw_claim.pgbench.sql against a scratch table loaded by raw_claim.setup.sql),
so results are read as ratios that survive noisy shared machines. Both SQL files ship
inside the package, so ``manage.py benchmark`` measures the same from an installed wheel.

All timings of jobs come from the database clock (enqueued_at, started_at,
finished_at), never from this process. The benchmark works on its own queue
("benchmark" unless told otherwise) and deletes its own jobs when done.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import queries, store
from ..backend import DatabaseBackend
from ..compat import clone_task, task
from ..models import Job, WorkerProcess, WorkerState

# The raw limit's defaults: the batch a claim takes and the queued rows it starts from
# (enough that 2 clients do not run dry in a 15-second run on a fast machine).
RAW_CLAIM_BATCH = 50
RAW_CLAIM_ROWS = 1_000_000


@task
def noop() -> None:
    """The benchmark's no-op task."""


@dataclass
class Report:
    database: str
    jobs: int
    workers: int
    concurrency: int
    figures: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    def __init__(self, *, database: str, queue: str, log: Callable[[str], None] = print) -> None:
        self.database = database
        self.queue = queue
        self.log = log
        self.backend = DatabaseBackend("benchmark", {"QUEUES": [], "OPTIONS": {"database": database}})
        self.task = clone_task(noop, queue_name=queue)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

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
        if self.connection.vendor != "postgresql":
            return
        from django.db import DatabaseError

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

    def enqueue_bulk(self, count: int, batch: int = 10_000) -> float:
        started = time.perf_counter()
        done = 0
        while done < count:
            n = min(batch, count - done)
            self.backend.enqueue_many([(self.task, (), {})] * n)
            done += n
        return count / (time.perf_counter() - started)

    # --- drain -----------------------------------------------------------------------

    def drain(self, workers: int, concurrency: int, jobs: int) -> dict[str, float]:
        """Throughput of ``workers`` runworker processes at ``concurrency`` each.

        The workers are started first and the jobs are committed only once every
        worker has registered and is waiting (one transaction, so one wake-up reaches
        them all): the window then measures W workers draining, not one worker while
        the others are still importing Django. Throughput is jobs / (last finish −
        first start), both from the database clock."""
        self.vacuum()
        tag = f"bench-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        ids = [f"{tag}-{i}" for i in range(workers)]
        procs = [self._worker("--concurrency", str(concurrency), "--worker-id", worker_id) for worker_id in ids]
        rss = RssSampler([p.pid for p in procs])
        try:
            self._wait_until_registered(ids, procs)
            time.sleep(1.0)  # registered workers start LISTENing and go idle
            rss.start()
            with transaction.atomic(using=self.database):
                self.enqueue_bulk(jobs)
            self._wait_until_drained(jobs, procs)
        finally:
            for proc in procs:
                proc.terminate()
            codes = [proc.wait(60) for proc in procs]
            if rss.is_alive():
                rss.stop()
        if any(codes):
            raise RuntimeError(f"a benchmark worker exited with {codes}")
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), MIN(started_at), MAX(finished_at) FROM taskengine_job "
                "WHERE queue = %s AND state = 'succeeded'",
                [self.queue],
            )
            done, first, last = cursor.fetchone()
        first, last = store.to_datetime(first), store.to_datetime(last)
        if done != jobs:
            raise RuntimeError(f"drain incomplete: {done} of {jobs} jobs succeeded")
        seconds = max((last - first).total_seconds(), 1e-6)
        return {
            "drain_per_s": done / seconds,
            "drain_seconds": seconds,
            "worker_rss_mb_max": rss.max_mb,
            "worker_rss_growth_mb": rss.growth_mb,
        }

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

    # --- latency ---------------------------------------------------------------------

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
            proc.terminate()
            proc.wait(30)
        rows = Job.objects.using(self.database).filter(pk__in=ids).values_list("enqueued_at", "started_at")
        millis = sorted((s - e).total_seconds() * 1000 for e, s in rows)  # type: ignore[operator]  # the loop above saw each start
        return {
            "latency_p50_ms": statistics.median(millis),
            "latency_p95_ms": millis[int(len(millis) * 0.95) - 1],
            "latency_samples": len(millis),
        }

    # --- claim time versus table size --------------------------------------------------

    def claim_scaling(self, sizes: list[int], batch: int = 50, rounds: int = 20) -> dict[str, float]:
        """Average time of one claim of ``batch`` jobs with N queued rows, each claim
        rolled back so the table keeps N rows."""
        if self.connection.vendor != "postgresql":
            return {}
        from django.db import transaction

        figures = {}
        for size in sizes:
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
            timings = []
            for _ in range(rounds):
                with transaction.atomic(using=self.database):
                    started = time.perf_counter()
                    store.claim_jobs(
                        self.connection, worker_id="bench", queues=[self.queue], limit=batch, lease_seconds=30
                    )
                    timings.append(time.perf_counter() - started)
                    transaction.set_rollback(True, using=self.database)
            figures[f"claim_ms_at_{size}"] = statistics.median(timings) * 1000
        self.clear()
        return figures

    # --- the raw limit -------------------------------------------------------------------

    def raw_single_insert(self, seconds: int) -> float | None:
        """The machine's limit for enqueue_single: pgbench (C, libpq, prepared) inserting
        one job per transaction into the same table, with the same trigger and indexes,
        on this queue. None where there is no PostgreSQL or no pgbench."""
        if self.connection.vendor != "postgresql" or shutil.which("pgbench") is None:
            return None
        queue = self.queue.replace("'", "''")
        statement = (  # the columns insert_job writes, as literals
            "INSERT INTO taskengine_job (task_path, backend, queue, priority, args, kwargs, state, run_after, "
            "enqueued_at, attempts, max_attempts, on_lease_expired) "
            f"VALUES ('{self.task.module_path}', 'benchmark', '{queue}', 0, '[]', '{{}}', 'queued', now(), "
            "now(), 0, 3, 'retry') RETURNING id, enqueued_at;\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(statement)
            script.flush()
            out = subprocess.run(
                [
                    "pgbench",
                    "-n",
                    "-M",
                    "prepared",
                    "-f",
                    script.name,
                    "-c",
                    "1",
                    "-T",
                    str(seconds),
                    database_url(self.connection.settings_dict),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        tps = re.search(r"^tps = ([0-9.]+)", out.stdout, re.MULTILINE)
        if tps is None:
            raise RuntimeError(f"pgbench printed no tps: {out.stdout[-500:]}")
        return float(tps.group(1))

    def raw_limit(
        self,
        seconds: int,
        script: Path | None = None,
        *,
        clients: int = 2,
        batch: int = RAW_CLAIM_BATCH,
        rows: int = RAW_CLAIM_ROWS,
    ) -> float | None:
        """The machine's limit for the drain: ``clients`` pgbench clients running
        ``script`` (default: this package's raw_claim.pgbench.sql, claim ``batch`` jobs
        with FOR UPDATE SKIP LOCKED and finish them in one transaction) for ``seconds``
        against ``rows`` queued jobs in a scratch database created beside the engine's
        and dropped afterwards. Jobs per second; None where there is no PostgreSQL or no
        pgbench."""
        if self.connection.vendor != "postgresql" or shutil.which("pgbench") is None:
            return None
        import psycopg

        scratch = f"taskengine_raw_claim_{os.getpid()}"
        self.log(f"raw claim limit: {rows} queued jobs in the scratch database {scratch}")
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{scratch}"')
            try:
                return self._run_raw_claim(scratch, seconds, script, clients=clients, batch=batch, rows=rows)
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

    def _run_raw_claim(
        self, scratch: str, seconds: int, script: Path | None, *, clients: int, batch: int, rows: int
    ) -> float:
        import psycopg

        setup = queries.parse_blocks(resources.files(__package__).joinpath("raw_claim.setup.sql").read_text())
        with psycopg.connect(self._conninfo(scratch), autocommit=True) as conn:
            conn.execute(setup["create_table"])
            conn.execute(setup["load_queued"], {"rows": rows})
            conn.execute(setup["create_claim_index"])
            conn.execute(setup["settle"])
            with resources.as_file(resources.files(__package__).joinpath("raw_claim.pgbench.sql")) as packaged:
                out = subprocess.run(
                    [
                        "pgbench",
                        "--no-vacuum",
                        "--file",
                        str(script or packaged),
                        "--define",
                        f"batch={batch}",
                        "--client",
                        str(clients),
                        "--jobs",
                        str(clients),
                        "--time",
                        str(seconds),
                        self._conninfo(scratch),
                    ],
                    capture_output=True,
                    text=True,
                )
            if out.returncode != 0:
                raise RuntimeError(f"pgbench failed ({out.returncode}): {(out.stderr or out.stdout)[-1000:]}")
            row = conn.execute(setup["count_queued"]).fetchone()
            assert row is not None  # a count has its row
            queued: int
            (queued,) = row
        tps = re.search(r"^tps = ([0-9.]+)", out.stdout, re.MULTILINE)
        transactions = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.MULTILINE)
        if tps is None or transactions is None or int(transactions.group(1)) == 0:
            raise RuntimeError(f"pgbench reported no transactions: {out.stdout[-1000:]}")
        if queued < clients * batch:
            raise RuntimeError(f"the raw claim ran out of its {rows} queued jobs in {seconds}s: load more rows")
        # Jobs per transaction from the rows actually finished, not the nominal batch.
        return float(tps.group(1)) * (rows - queued) / int(transactions.group(1))

    def _conninfo(self, dbname: str) -> str:
        """A libpq connection string for ``dbname`` on the engine's server, with the
        engine's own connection parameters (host, port, user, password, sslmode, ...)."""
        from psycopg import pq
        from psycopg.conninfo import make_conninfo

        keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
        params = self.connection.get_connection_params()  # also psycopg's own: context, ...
        libpq = {k: v for k, v in params.items() if k in keywords and v is not None}
        libpq["dbname"] = dbname
        return make_conninfo(**libpq)

    def _worker(self, *args: str) -> subprocess.Popen[bytes]:
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
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runworker",
                "--queues",
                self.queue,
                "--no-leader",
                "--backoff-base",
                "0.01",
                "--max-backoff",
                "0.5",
                *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


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
        growths = []
        for s in self.samples.values():
            if len(s) >= 8:
                q = len(s) // 4
                growths.append(statistics.mean(s[-q:]) - statistics.mean(s[q : 2 * q]))
        return max(growths, default=0.0)


def database_url(s: dict[str, Any]) -> str:
    if "sqlite" in s["ENGINE"]:
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or "postgres"
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
