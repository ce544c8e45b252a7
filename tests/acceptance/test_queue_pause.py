"""Pause and resume against a real ``runworker`` process: on PostgreSQL woken by NOTIFY,
on PostgreSQL with POLL_ONLY (PgBouncer) and on SQLite by polling.

A job of the queue that is running when the pause commits finishes normally; enqueue into
the paused queue goes on; for five seconds the worker claims nothing from it while it keeps
draining another queue; after ``manage.py queues resume``, given while the worker is busy
on one of its slots, its jobs start within a second (measured on the database clock: the
resume's audit row against the jobs' start)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest

from taskengine.models import Job, OperatorAction
from tests import tasks
from tests.conftest import ROOT, subprocess_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.acceptance]

START_UP = 60  # a bound for a loaded machine's start-up, not a promise
PAUSED_FOR = 5.0


def queues_command(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "queues", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def pause_then_resume(worker_process, tmp_path, env: dict[str, str]) -> None:
    worker = worker_process("--queues", "default,demo", "--concurrency", "4", "--no-leader", env=env)
    slow = tasks.sleep_then_record.using(queue_name="demo").enqueue(str(tmp_path), "slow", 2.0)
    wait_for(lambda: (tmp_path / "slow.started").exists(), timeout=START_UP, message="the slow job to start")

    assert queues_command("pause", "demo", "--reason", "acceptance").startswith("Paused queue demo.")
    held = [int(tasks.record.using(queue_name="demo").enqueue(str(tmp_path), f"held{i}").id) for i in range(5)]

    # For five seconds: nothing of demo is claimed, default keeps draining, the running
    # job finishes normally.
    drained: list[int] = []
    until = time.monotonic() + PAUSED_FOR
    while time.monotonic() < until:
        drained.append(int(tasks.add.enqueue(1, len(drained)).id))
        time.sleep(0.25)
        assert not Job.objects.filter(pk__in=held).exclude(state="queued", attempts=0).exists(), worker.log()
    wait_for(
        lambda: Job.objects.filter(pk__in=drained, state="succeeded").count() == len(drained),
        timeout=30,
        message="the other queue to drain",
    )
    late = Job.objects.filter(pk__in=drained).order_by("-enqueued_at").values_list("enqueued_at", "started_at")[0]
    assert late[1] - late[0] < timedelta(seconds=2), "the other queue was not drained as it went"
    assert Job.objects.get(pk=slow.id).state == "succeeded"
    assert Job.objects.filter(pk__in=held, state="queued", attempts=0).count() == len(held)

    # Resumed while the worker is busy on one slot and has three free.
    tasks.sleep_then_record.enqueue(str(tmp_path), "busy", 4.0)
    wait_for(lambda: (tmp_path / "busy.started").exists(), timeout=30, message="the busy job to start")
    queues_command("resume", "demo")
    resumed_at = OperatorAction.objects.get(action="queue.resume").created_at
    wait_for(
        lambda: Job.objects.filter(pk__in=held, state="succeeded").count() == len(held),
        timeout=30,
        message="the held jobs to run after the resume",
    )
    first_start = min(Job.objects.filter(pk__in=held).values_list("started_at", flat=True))
    assert first_start - resumed_at < timedelta(seconds=1), (first_start - resumed_at, worker.log())


@pytest.mark.postgres
def test_pause_and_resume_with_a_listening_worker(worker_process, tmp_path):
    pause_then_resume(worker_process, tmp_path, env={})


@pytest.mark.postgres
def test_pause_and_resume_with_a_polling_worker_behind_pgbouncer(worker_process, tmp_path):
    pause_then_resume(worker_process, tmp_path, env={"TASKENGINE_POLL_ONLY": "1"})


@pytest.mark.sqlite_only
def test_pause_and_resume_on_sqlite(worker_process, tmp_path):
    pause_then_resume(worker_process, tmp_path, env={})
