"""Tasks used by the test suite (importable by worker subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from django.db import connection

from taskengine.compat import task


@task
def noop() -> None:
    return None


@task
def planner_settings() -> list[str]:
    """The planner settings of the handler's own connection (a worker's connections have
    their own: tests/integration/test_worker_robustness.py)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('enable_seqscan'), current_setting('enable_bitmapscan'), current_setting('jit')"
        )
        return list(cursor.fetchone())


@task
def add(a: int, b: int) -> int:
    return a + b


@task(priority=0)
def record(marker_dir: str, name: str) -> str:
    """Append this process's pid to marker_dir/name (one line per execution)."""
    with open(Path(marker_dir) / name, "a") as f:
        f.write(f"{os.getpid()}\n")
    return name


@task
def sleep_then_record(marker_dir: str, name: str, seconds: float) -> str:
    Path(marker_dir, f"{name}.started").write_text(str(os.getpid()))
    time.sleep(seconds)
    with open(Path(marker_dir) / name, "a") as f:
        f.write(f"{os.getpid()}\n")
    return name


@task(max_attempts=3, retry_backoff=0.1, takes_context=True)
def fail_until(context, succeed_on_attempt: int) -> int:
    if context.attempt < succeed_on_attempt:
        raise RuntimeError(f"failing attempt {context.attempt}")
    return context.attempt


@task(max_attempts=1)
def boom() -> None:
    raise ValueError("boom <script>alert(1)</script>")


@task(timeout=0.5, max_attempts=1)
def busy_loop_forever() -> None:
    while True:
        pass


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@task(timeout=0.3, max_attempts=1)
async def async_too_slow() -> None:
    await asyncio.sleep(10)


@task
def returns_unserialisable() -> object:
    return object()


@task
def write_row_in_transaction(value: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return value


@task
def cooperative_sleep(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


@task(max_attempts=1)
def fails_with_nul() -> None:
    raise ValueError("bad byte \x00 in the message")


@task
def returns_nul() -> str:
    return "text with \x00 inside"


@task
def span(marker_dir: str, name: str, seconds: float) -> str:
    """Write marker_dir/name.span: this execution's start and end (time.time()), one line."""
    started = time.time()
    time.sleep(seconds)
    with open(Path(marker_dir) / f"{name}.span", "a") as f:
        f.write(f"{started} {time.time()}\n")
    return name
