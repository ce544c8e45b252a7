"""Tasks for the worker robustness tests (importable by worker subprocesses)."""

from __future__ import annotations

import time
from pathlib import Path

from taskengine.compat import task

# A file name as os.listdir() returns it for bytes that are not UTF-8 (surrogateescape).
UNDECODABLE_NAME = b"report-\xff.csv".decode("utf-8", "surrogateescape")


@task(max_attempts=1)
def returns_undecodable_file_name() -> str:
    return UNDECODABLE_NAME


@task(max_attempts=1)
def raises_with_undecodable_file_name() -> None:
    raise FileNotFoundError(f"no such file: {UNDECODABLE_NAME}")


def _log(marker_dir: str, line: str) -> None:
    with open(Path(marker_dir) / "executions", "a") as f:
        f.write(f"{line} {time.time():.6f}\n")


@task(max_attempts=2, retry_backoff=0.01, takes_context=True)
def blocks_in_c_on_first_attempt(context, marker_dir: str, first_seconds: float, later_seconds: float) -> int:
    """Attempt 1 blocks in C (``time.sleep``: an interrupt is noticed only when it returns);
    later attempts sleep cooperatively. Logs "start N" / "end N" lines to marker_dir/executions."""
    attempt = context.attempt
    _log(marker_dir, f"start {attempt}")
    try:
        if attempt == 1:
            time.sleep(first_seconds)
        else:
            deadline = time.monotonic() + later_seconds
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        _log(marker_dir, f"end {attempt}")
    return attempt


def executions(marker_dir: str | Path) -> list[tuple[str, int, float]]:
    """The ("start"|"end", attempt, unix time) lines logged so far."""
    path = Path(marker_dir) / "executions"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(kind, int(attempt), float(at)) for kind, attempt, at in lines]
