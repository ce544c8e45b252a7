"""Tasks the tests of taskengine.testing drain."""

from __future__ import annotations

import time

from django.contrib.auth.models import User

from taskengine.compat import task


@task
def create_user(username: str) -> int:
    return User.objects.create(username=username).pk


@task(max_attempts=3, retry_backoff=30, takes_context=True)
def succeed_on_third_attempt(context) -> dict:
    """Fails twice; then returns what its TaskContext showed."""
    result = context.task_result
    if context.attempt < 3:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {
        "attempt": context.attempt,
        "errors": [e.exception_class_path for e in result.errors],
        "worker_ids": result.worker_ids,
    }


@task(max_attempts=2, retry_backoff=0)
def always_fails(message: str) -> None:
    raise ValueError(message)


@task(timeout=0.2, max_attempts=1)
def spins_past_its_timeout(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "finished"


@task(timeout=0.2, max_attempts=1)
def quick_with_timeout() -> str:
    return "quick"


@task(max_attempts=1)
def creates_then_duplicates(username: str) -> None:
    """Writes one row, then violates a unique index (PostgreSQL: aborts the transaction)."""
    User.objects.create(username=f"{username}-first")
    User.objects.create(username=username)


@task
def enqueues_follow_up(n: int) -> int:
    if n > 0:
        enqueues_follow_up.enqueue(n - 1)
    return n


@task
def enqueues_itself() -> None:
    enqueues_itself.enqueue()


@task
async def async_double(x: int) -> int:
    return 2 * x
