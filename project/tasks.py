"""Demo tasks for the quick start: see README "Quick start"."""

from __future__ import annotations

import asyncio
import time

from taskengine.compat import task  # Django 6.1: from django.tasks import task (6.0's takes no max_attempts=)


@task(queue_name="demo")
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="demo", takes_context=True, max_attempts=3, retry_backoff=0.5)
def fails_twice(context) -> str:
    if context.attempt < 3:
        raise RuntimeError(f"deliberate failure on attempt {context.attempt}")
    return f"succeeded on attempt {context.attempt}"


@task(queue_name="demo", max_attempts=1)
def always_fails() -> None:
    raise ValueError("this demo task always fails; see its traceback in the console")


@task(queue_name="demo")
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task(queue_name="demo", timeout=1, max_attempts=1)
def too_slow() -> None:
    time.sleep(5)
