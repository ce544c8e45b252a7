"""Tasks whose module connects django.tasks signal receivers that raise for this
module's jobs, and receivers after them that record what they were sent (marker files
in the job's ``marker_dir`` argument). Only a worker that runs one of these tasks
imports the module, so no other test's worker sees the receivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from taskengine.compat import task, task_finished, task_started


def _ours(task_result) -> bool:
    return task_result.task.module_path.startswith(f"{__name__}.")


def _mark(task_result, event: str) -> None:
    attempt = len(task_result.worker_ids)
    Path(task_result.args[0], f"{event}-{task_result.id}-{attempt}").touch()


def raise_on_started(sender, task_result, **kwargs) -> None:
    if _ours(task_result):
        raise RuntimeError(f"started receiver broke on job {task_result.id}")


def raise_on_finished(sender, task_result, **kwargs) -> None:
    if _ours(task_result):
        raise RuntimeError(f"finished receiver broke on job {task_result.id}")


def record_started(sender, task_result, **kwargs) -> None:
    if _ours(task_result):
        _mark(task_result, "started")


def record_finished(sender, task_result, **kwargs) -> None:
    if _ours(task_result):
        _mark(task_result, f"finished-{task_result.status.lower()}")


# Raising receivers first: the ones after them must still be called.
task_started.connect(raise_on_started, weak=False, dispatch_uid="signal_tasks.raise_on_started")
task_started.connect(record_started, weak=False, dispatch_uid="signal_tasks.record_started")
task_finished.connect(raise_on_finished, weak=False, dispatch_uid="signal_tasks.raise_on_finished")
task_finished.connect(record_finished, weak=False, dispatch_uid="signal_tasks.record_finished")


@task(max_attempts=1)
def succeeds(marker_dir: str) -> str:
    return "ok"


@task(max_attempts=2, retry_backoff=0)
def always_fails(marker_dir: str) -> None:
    raise ValueError("the handler's own failure")


@task(max_attempts=1)
async def async_succeeds(marker_dir: str) -> str:
    await asyncio.sleep(0)
    return "async ok"
