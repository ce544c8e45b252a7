"""Tasks for the leadership tests (importable by worker subprocesses)."""

from __future__ import annotations

import os
from pathlib import Path

from taskengine.compat import task


@task
def tick(marker_dir: str, slot_name: str = "tick") -> None:
    """Append one line per execution."""
    with open(Path(marker_dir) / slot_name, "a") as f:
        f.write(f"{os.getpid()}\n")


not_a_task = "plain string"
