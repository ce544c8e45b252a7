"""Fixtures of the fault-injection suite: a throwaway PostgreSQL server for this
package's tests (migrated once, gone before the rest of the suite runs), the suite's
observer connection and enqueuer, and ``fault_case``, which starts real ``runworker``
subprocesses pointed at the throwaway server.

Nothing here skips: without server binaries, or if the server cannot start, the
session fixture raises and every case errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ROOT, WorkerProcess, subprocess_env
from tests.faults import harness
from tests.faults.harness import WORKER_APPLICATION_NAME, WORKER_ARGS, WORKER_ENV, FaultCase, Feeder
from tests.faults.server import OTHER_CLIENT_ROLE, Observer, ThrowawayPostgres
from tests.faults.tasks import CREATE_MARKER_TABLE


@pytest.fixture(scope="package")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.create()
        migrate = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=server.database_url("faults-migrate")),
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}"
        with server.connect() as admin:
            admin.execute(CREATE_MARKER_TABLE)
            admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {OTHER_CLIENT_ROLE}")
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="package")
def observer(throwaway_postgres) -> Iterator[Observer]:
    db = Observer(throwaway_postgres)
    yield db
    db.close()


@pytest.fixture(scope="package")
def feeder(throwaway_postgres, tmp_path_factory) -> Iterator[Feeder]:
    enqueuer = Feeder(throwaway_postgres, tmp_path_factory.mktemp("faults") / "feeder.log")
    yield enqueuer
    enqueuer.close()


@pytest.fixture
def fault_case(request, throwaway_postgres, observer, feeder) -> Iterator[Callable[[str], FaultCase]]:
    """``fault_case(name)``: a FaultCase whose workers are real runworker processes on
    the throwaway server; all are stopped (SIGTERM) at teardown. Their logs are kept in
    var/faults/<test>/ (replaced by the next run) for a look after a failure."""
    logs = ROOT / "var" / "faults" / request.node.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started: list[WorkerProcess] = []
    env = subprocess_env(
        DATABASE_URL=throwaway_postgres.database_url(WORKER_APPLICATION_NAME),
        FAULTS_MARKER_DSN=throwaway_postgres.conninfo(application_name="faults-marker"),
        **WORKER_ENV,
    )

    def start_worker(name: str) -> WorkerProcess:
        worker = WorkerProcess(list(WORKER_ARGS), logs / f"{name}-{len(started)}.log", env)
        started.append(worker)
        return worker

    yield lambda fault: FaultCase(fault, throwaway_postgres, observer, feeder, start_worker)
    for worker in started:
        worker.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not harness.RESULTS:
        return
    terminalreporter.section("fault injection: figures")
    terminalreporter.write_line(
        "| fault | jobs | lost | run twice | recovery time | pre-fault rate | "
        "during the fault | post-fault rate | fault lasted |"
    )
    terminalreporter.write_line("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in harness.RESULTS:
        recovery = f"{f.recovery_seconds:.1f} s" if f.recovery_seconds is not None else "not within 30 s"
        post = f"{f.post_rate:.0f}/s" if f.post_rate is not None else "-"
        terminalreporter.write_line(
            f"| {f.fault} | {f.jobs} | {f.lost} | {f.run_twice} | {recovery} | "
            f"{f.pre_rate:.0f}/s | {f.during_rate:.0f}/s | {post} | {f.fault_seconds:.1f} s |"
        )
    out = ROOT / "var" / "faults" / "figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([f.as_dict() for f in harness.RESULTS], default=str, indent=1))
    terminalreporter.write_line(f"(details: {out.relative_to(ROOT)})")
