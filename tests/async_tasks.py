"""Async tasks for the async-handler tests (importable by worker subprocesses)."""

from __future__ import annotations

import asyncio

from taskengine.compat import task


@task(max_attempts=2, retry_backoff=0, takes_context=True)
async def async_context_fails_first_attempt(context) -> dict:
    """Fails its first attempt; the second returns what its context says about the
    earlier ones."""
    await asyncio.sleep(0)
    if context.attempt == 1:
        raise RuntimeError("first attempt fails")
    result = context.task_result
    return {
        "attempt": context.attempt,
        "result_id": result.id,
        "errors": [error.exception_class_path for error in result.errors],
        "first_error_mentions": "first attempt fails" in result.errors[0].traceback,
        "worker_ids": result.worker_ids,
    }


@task(max_attempts=1)
async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"
