"""Async handlers that do not stop when cancelled, for the async cancellation tests.
Each logs "start N" / "cancelled N" / "end N" lines (N: the attempt) to
marker_dir/executions, so a test can tell whether two executions overlapped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from taskengine.compat import task


def _log(marker_dir: str, line: str) -> None:
    with open(Path(marker_dir) / "executions", "a") as f:
        f.write(f"{line} {time.time():.6f}\n")


@task(max_attempts=2, retry_backoff=0.01, takes_context=True)
async def swallows_its_cancellation_on_first_attempt(context, marker_dir: str, linger_seconds: float) -> int:
    """Attempt 1 waits to be cancelled, swallows the CancelledError, goes on for
    ``linger_seconds`` (awaiting) and returns normally. Later attempts return at once."""
    attempt = context.attempt
    _log(marker_dir, f"start {attempt}")
    try:
        if attempt == 1:
            try:
                await asyncio.sleep(120)
            except asyncio.CancelledError:
                _log(marker_dir, f"cancelled {attempt}")
                await asyncio.sleep(linger_seconds)
        return attempt
    finally:
        _log(marker_dir, f"end {attempt}")


@task(max_attempts=2, retry_backoff=0.01, takes_context=True)
async def blocks_the_event_loop_on_first_attempt(context, marker_dir: str, block_seconds: float) -> int:
    """Attempt 1 blocks in a sync call (``time.sleep``) inside the coroutine, then
    awaits: a cancellation can reach it only once the call returns."""
    attempt = context.attempt
    _log(marker_dir, f"start {attempt}")
    try:
        if attempt == 1:
            # The point of this task: a call that blocks the event loop, so a cancel cannot land.
            time.sleep(block_seconds)  # noqa: ASYNC251 - on purpose, see above
            await asyncio.sleep(0.5)
        return attempt
    finally:
        _log(marker_dir, f"end {attempt}")


@task(max_attempts=1)
async def raises_when_cancelled(marker_dir: str) -> None:
    """Turns its cancellation into another exception."""
    _log(marker_dir, "start 1")
    try:
        await asyncio.sleep(120)
    except asyncio.CancelledError:
        raise RuntimeError("cleanup failed after the cancel") from None
    finally:
        _log(marker_dir, "end 1")


def executions(marker_dir: str | Path) -> list[tuple[str, int, float]]:
    """The (kind, attempt, unix time) lines logged so far."""
    path = Path(marker_dir) / "executions"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(kind, int(attempt), float(at)) for kind, attempt, at in lines]


def logged(marker_dir: str | Path, kind: str, attempt: int) -> float | None:
    """When ``kind`` was logged for ``attempt`` (unix time), or None."""
    return next((at for k, a, at in executions(marker_dir) if (k, a) == (kind, attempt)), None)
