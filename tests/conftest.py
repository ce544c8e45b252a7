"""Shared fixtures. The suite runs twice (bin/test): once on SQLite, once on PostgreSQL.

- ``@pytest.mark.postgres`` tests are *deselected* on the SQLite run (never skipped);
  on the PostgreSQL run a missing server is an error, not a skip.
- ``@pytest.mark.sqlite_only`` tests are deselected on the PostgreSQL run.
- ``worker_process`` starts real ``manage.py runworker`` subprocesses against the test
  database; they can be signalled or ``kill -9``-ed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_vendor() -> str:
    engine = settings.DATABASES["default"]["ENGINE"]
    return "postgresql" if "postgresql" in engine else "sqlite"


def pytest_collection_modifyitems(config, items):
    vendor = database_vendor()
    keep, drop = [], []
    for item in items:
        if (vendor == "sqlite" and item.get_closest_marker("postgres")) or (
            vendor == "postgresql" and item.get_closest_marker("sqlite_only")
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    db = settings.DATABASES["default"]
    return f"taskengine test database: {db['ENGINE']} {db.get('HOST') or ''} {db['NAME']}"


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, message: str = "condition"
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def subprocess_database_url() -> str:
    """A DATABASE_URL naming the *test* database the current test uses."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=subprocess_database_url(),
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="project.settings",
        TASKENGINE_TEST_DB_SUFFIX="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        # The log outlives this call: the process writes to it until stop() closes it.
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworker", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_until_started(self, timeout: float = 60) -> None:
        """Wait for the "worker starting" log line: from then on the worker's own signal
        handlers are installed, so a SIGTERM means "drain", not "stop before starting"."""
        wait_for(
            lambda: "worker starting" in self.log() or self.proc.poll() is not None,
            timeout=timeout,
            message=f"{self.log_path.stem} to start",
        )
        assert self.proc.poll() is None, f"{self.log_path.stem} exited during start-up:\n{self.log()}"

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def worker_process(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``runworker`` subprocesses; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str | None = None) -> WorkerProcess:
        name = name or f"worker{len(started)}"
        worker = WorkerProcess(list(args), tmp_path / f"{name}.log", subprocess_env(**(env or {})))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(autouse=True)
def _reset_gate():
    from taskengine import gate

    gate.reset()
    yield
    gate.reset()
