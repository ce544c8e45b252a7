"""One fault case: real workers drain a backlog on the throwaway server, a fault is
injected mid-drain, and afterwards the case proves what the engine promises.

The measurement, all on the database clock:

- **pre-fault rate**: jobs finished in the ``WINDOW`` seconds before the fault began,
  with the same workers that face the fault (both already claiming);
- **recovery time**: seconds from the end of the fault to the start of the first
  ``WINDOW``-second window whose finished jobs reach ``RECOVERY_RATIO`` of the pre-fault
  window's; such a window counts only if the backlog had not run dry before it ended
  (the case tops the backlog up after the fault until it has recovered);
- **run twice**: jobs with two execution markers whose [start, end] overlap; a marker a
  ``kill -9`` cut short ends, at the latest, when the kill was seen to have happened;
- **lost**: jobs that never reached a terminal state.
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, WorkerProcess, subprocess_env, wait_for
from tests.faults.server import Observer, ThrowawayPostgres

WINDOW = 3.0  # seconds per throughput window
RECOVERY_RATIO = 0.7  # "within 30 % of the pre-fault rate"
RECOVERY_LIMIT = 30.0  # seconds after the fault ends
WORK_SECONDS = 0.03  # each job's work between its start and end markers
INITIAL_JOBS = 1200
TOP_UP_SECONDS = 6.0  # backlog kept queued after the fault, in seconds of pre-fault rate
MAX_JOBS_PER_CASE = 9000
DRAIN_TIMEOUT = 90.0

WORKER_APPLICATION_NAME = "taskengine-worker"
WORKER_ARGS = ("--concurrency", "4", "--lease-seconds", "5", "--max-backoff", "0.5")
WORKER_ENV = {
    # Short leadership and maintenance cadences, so a killed leader's successor and the
    # recovery of killed workers' leases come within a case's minute.
    "TASKENGINE_LEADER_TTL_SECONDS": "3",
    "TASKENGINE_LEADER_RENEW_SECONDS": "0.5",
    "TASKENGINE_LEADER_SAFETY_MARGIN_SECONDS": "0.5",
    "TASKENGINE_MAINTENANCE_INTERVAL_SECONDS": "1",
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESULTS: list[CaseFigures] = []  # every case's figures this session (printed at the end)


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


class Feeder:
    """A long-lived enqueuing subprocess (tests/faults/feeder.py)."""

    def __init__(self, server: ThrowawayPostgres, log_path: Path) -> None:
        # The log outlives this call: the feeder writes to it until stop() closes it.
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.feeder"],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=server.database_url("faults-feeder"), TASKENGINE_LOG_LEVEL="WARNING"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def enqueue(self, run_id: str, count: int, work_seconds: float = WORK_SECONDS) -> list[int]:
        self.proc.stdin.write(f"{run_id} {count} {work_seconds}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the feeder exited ({self.proc.poll()}); see its log {self._log.name}")
        return json.loads(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class CaseFigures:
    fault: str
    jobs: int
    lost: int
    failed: int
    run_twice: int
    executions: int
    fault_seconds: float
    pre_rate: float
    during_rate: float
    post_rate: float | None
    recovery_seconds: float | None
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Marker:
    job_id: int
    attempt: int
    pid: int
    started_at: datetime
    ended_at: datetime | None


def overlapping_jobs(markers: list[Marker], killed_at: dict[int, datetime]) -> dict[int, list[Marker]]:
    """Jobs with two executions at once. A marker without an end is cut short by a
    kill: it ended at the latest when the kill was seen (``killed_at[pid]``)."""
    by_job: dict[int, list[Marker]] = {}
    for m in markers:
        by_job.setdefault(m.job_id, []).append(m)
    twice: dict[int, list[Marker]] = {}
    for job_id, runs in by_job.items():
        runs.sort(key=lambda m: m.started_at)
        latest_end: datetime | None = None
        for m in runs:
            if latest_end is not None and m.started_at < latest_end:
                twice[job_id] = runs
                break
            end = m.ended_at or killed_at[m.pid]
            latest_end = end if latest_end is None else max(latest_end, end)
    return twice


def recovery_after(finished: list[float], pre_count: int, backlog_until: float) -> tuple[float, int] | None:
    """(recovery time, jobs in that window) for finish times in seconds after the fault
    ended: the first window start (0.1 s steps, up to RECOVERY_LIMIT) whose WINDOW holds
    at least RECOVERY_RATIO × ``pre_count`` finishes and ends before ``backlog_until``."""
    needed = RECOVERY_RATIO * pre_count
    steps = int(RECOVERY_LIMIT * 10)
    for step in range(steps + 1):
        start = step / 10
        if start + WINDOW > backlog_until:
            return None
        count = bisect.bisect_left(finished, start + WINDOW) - bisect.bisect_left(finished, start)
        if count >= needed:
            return start, count
    return None


class FaultCase:
    """A drain on the throwaway server with one fault in the middle of it."""

    def __init__(
        self,
        fault: str,
        server: ThrowawayPostgres,
        observer: Observer,
        feeder: Feeder,
        start_worker: Callable[[str], WorkerProcess],
    ) -> None:
        self.fault = fault
        self.run_id = fault.replace(" ", "_")
        self.server = server
        self.db = observer
        self.feeder = feeder
        self._start_worker = start_worker
        self.ids: list[int] = []
        self.workers: dict[str, WorkerProcess] = {}
        self.killed_at: dict[int, datetime] = {}
        self.notes: dict[str, Any] = {}
        self.fault_started: datetime | None = None
        self.fault_ended: datetime | None = None
        self.pre_rate = 0.0

    # --- jobs and workers ------------------------------------------------------------

    def enqueue(self, count: int) -> None:
        count = min(count, MAX_JOBS_PER_CASE - len(self.ids))
        if count > 0:
            self.ids += self.feeder.enqueue(self.run_id, count)

    def start_worker(self, name: str) -> WorkerProcess:
        worker = self._start_worker(name)
        self.workers[name] = worker
        return worker

    def kill9(self, name: str) -> None:
        worker = self.workers.pop(name)
        worker.kill9()  # returns once the process is gone
        self.killed_at[worker.pid] = self.db.now()

    def worker_ids(self, worker: WorkerProcess) -> list[str]:
        return [r[0] for r in self.db.rows("SELECT worker_id FROM taskengine_worker WHERE pid = %s", [worker.pid])]

    def attempts_by(self, worker: WorkerProcess, since: datetime | None = None) -> int:
        return self.db.value(
            "SELECT count(*) FROM task_execution_logs l JOIN taskengine_worker w ON w.worker_id = l.worker_id "
            "WHERE w.pid = %s AND l.job_id = ANY(%s) AND l.started_at > %s",
            [worker.pid, self.ids, since or EPOCH],
        )

    def finished_between(self, start: datetime, end: datetime) -> int:
        return self.db.value(
            "SELECT count(*) FROM taskengine_job WHERE id = ANY(%s) AND state = 'succeeded' "
            "AND finished_at >= %s AND finished_at < %s",
            [self.ids, start, end],
        )

    def queued(self) -> int:
        return self.db.value("SELECT count(*) FROM taskengine_job WHERE id = ANY(%s) AND state = 'queued'", [self.ids])

    def terminate_engine_connections(self) -> int:
        return self.db.value(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [WORKER_APPLICATION_NAME],
        )

    # --- the phases ------------------------------------------------------------------

    def start(self, workers: int = 2) -> None:
        """Enqueue the first backlog, start the workers, and measure the pre-fault rate
        once every worker is claiming."""
        self.enqueue(INITIAL_JOBS)
        for n in range(workers):
            self.start_worker(f"worker{n}")
        for name, worker in self.workers.items():
            wait_for(
                lambda w=worker: w.proc.poll() is not None or self.attempts_by(w) > 0,
                timeout=60,
                interval=0.2,
                message=f"{name} to claim",
            )
            assert worker.proc.poll() is None, f"{name} exited:\n{worker.log()[-3000:]}"
        window_start = self.db.now()
        time.sleep(WINDOW)  # the measurement window itself
        self.pre_rate = self.finished_between(window_start, self.db.now()) / WINDOW
        assert self.pre_rate > 0, "nothing finished before the fault"

    @contextmanager
    def injected(self, expected_seconds: float) -> Iterator[None]:
        """The fault's window: the backlog is topped up to outlast it, its start and end
        are read from the database clock."""
        wanted = int(self.pre_rate * (expected_seconds + 2 * TOP_UP_SECONDS))
        self.enqueue(wanted - self.queued())
        self.fault_started = self.db.now()
        yield
        self.fault_ended = self.db.now()

    def await_recovery(self) -> None:
        """Keep the backlog from running dry until throughput is back (or the limit
        has passed), then let every job finish (within DRAIN_TIMEOUT)."""
        assert self.fault_ended is not None
        while True:
            now = self.db.now()
            since = _seconds(now - self.fault_ended)
            if since >= WINDOW and self.finished_between(now - timedelta(seconds=WINDOW), now) >= (
                RECOVERY_RATIO * self.pre_rate * WINDOW
            ):
                break
            if since > RECOVERY_LIMIT + WINDOW + 1:
                break  # the figures below report it
            if self.queued() < self.pre_rate * TOP_UP_SECONDS:
                self.enqueue(int(self.pre_rate * TOP_UP_SECONDS))
            time.sleep(0.25)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and self.db.value(
            "SELECT count(*) FROM taskengine_job WHERE id = ANY(%s) AND finished_at IS NOT NULL", [self.ids]
        ) < len(self.ids):
            time.sleep(0.5)  # what is still not terminal then is reported as lost

    # --- what it proves --------------------------------------------------------------

    def figures(self) -> CaseFigures:
        states = dict(
            self.db.rows("SELECT state, count(*) FROM taskengine_job WHERE id = ANY(%s) GROUP BY state", [self.ids])
        )
        terminal = sum(states.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        markers = [
            Marker(*row)
            for row in self.db.rows(
                "SELECT job_id, attempt, pid, started_at, ended_at FROM fault_markers WHERE run_id = %s", [self.run_id]
            )
        ]
        unfinished = [m for m in markers if m.ended_at is None and m.pid not in self.killed_at]
        assert not unfinished, f"executions with a start marker and no end, by live workers: {unfinished[:5]}"
        twice = overlapping_jobs(markers, self.killed_at)
        pre_count = self.finished_between(self.fault_started - timedelta(seconds=WINDOW), self.fault_started)
        finished = [
            _seconds(r[0] - self.fault_ended)
            for r in self.db.rows(
                "SELECT finished_at FROM taskengine_job WHERE id = ANY(%s) AND state = 'succeeded' "
                "AND finished_at >= %s ORDER BY finished_at",
                [self.ids, self.fault_ended],
            )
        ]
        last_claim = self.db.value("SELECT max(started_at) FROM task_execution_logs WHERE job_id = ANY(%s)", [self.ids])
        recovered = recovery_after(finished, pre_count, _seconds(last_claim - self.fault_ended))
        figures = CaseFigures(
            fault=self.fault,
            jobs=len(self.ids),
            lost=len(self.ids) - terminal,
            failed=states.get("failed", 0) + states.get("cancelled", 0),
            run_twice=len(twice),
            executions=len(markers),
            fault_seconds=round(_seconds(self.fault_ended - self.fault_started), 1),
            pre_rate=round(pre_count / WINDOW, 1),
            during_rate=round(
                self.finished_between(self.fault_started, self.fault_ended)
                / _seconds(self.fault_ended - self.fault_started),
                1,
            ),
            post_rate=round(recovered[1] / WINDOW, 1) if recovered else None,
            recovery_seconds=recovered[0] if recovered else None,
            notes=self.notes,
        )
        figures.notes["overlaps"] = {
            job: [(m.pid, m.started_at.isoformat(), m.ended_at and m.ended_at.isoformat()) for m in runs]
            for job, runs in list(twice.items())[:3]
        }
        figures.notes["jobs without an execution marker"] = self.db.value(
            "SELECT count(*) FROM unnest(%s::bigint[]) AS j(id) WHERE NOT EXISTS "
            "(SELECT 1 FROM fault_markers m WHERE m.job_id = j.id AND m.ended_at IS NOT NULL)",
            [self.ids],
        )
        RESULTS.append(figures)
        return figures

    def assert_promises_kept(self) -> CaseFigures:
        """Every job terminal (and succeeded: the task only fails when its markers cannot
        be written), none ran twice at once, the workers that were not killed are alive
        and claimed after the fault, throughput back within the limit."""
        survivors = dict(self.workers)
        for name, worker in survivors.items():
            assert worker.proc.poll() is None, f"{name} (never killed) died:\n{worker.log()[-3000:]}"
            assert self.attempts_by(worker, since=self.fault_ended) > 0, f"{name} claimed nothing after the fault"
        figures = self.figures()
        detail = json.dumps(figures.as_dict(), default=str, indent=1)
        assert figures.lost == 0, f"jobs lost: {detail}"
        assert figures.failed == 0, f"jobs failed: {detail}"
        assert figures.run_twice == 0, f"jobs ran twice at once: {detail}"
        assert figures.notes["jobs without an execution marker"] == 0, detail
        assert figures.recovery_seconds is not None, (
            f"throughput did not return to {RECOVERY_RATIO:.0%} of its pre-fault rate within "
            f"{RECOVERY_LIMIT:.0f}s of the fault's end: {detail}"
        )
        return figures
