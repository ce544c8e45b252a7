"""Real runworker processes with a handler that ignores its timeout (blocked in C): the
worker keeps the job leased while the thread lives, gives up past --max-stuck-threads by
draining and exiting non-zero, and leaves the stuck job's lease to expire."""

from __future__ import annotations

import signal

import pytest

from taskengine.leader import recovery
from taskengine.models import ExecutionLog, Job, WorkerProcess
from taskengine.runtime.supervision import STUCK_THREADS_EXIT_CODE
from tests import robustness_tasks, tasks
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.acceptance]


def assert_still_running_unrecorded(job_id) -> None:
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.attempts) == ("running", 1)
    assert list(ExecutionLog.objects.filter(job_id=job_id).values_list("outcome", flat=True)) == [None]


def test_a_worker_past_its_stuck_thread_limit_drains_and_exits_non_zero_leaving_the_lease_to_expire(
    worker_process, tmp_path
):
    stuck = robustness_tasks.blocks_in_c_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), 120, 0)
    worker = worker_process(
        "--no-leader",
        "--concurrency",
        "2",
        "--lease-seconds",
        "3",
        "--max-backoff",
        "0.1",
        "--max-stuck-threads",
        "0",
        "--shutdown-grace",
        "20",
        name="stuck",
    )
    wait_for(lambda: robustness_tasks.executions(tmp_path), message="attempt 1 to start")
    slow = tasks.cooperative_sleep.enqueue(2.5)  # runs in the other slot, finishes in the drain
    assert worker.wait(60) == STUCK_THREADS_EXIT_CODE, worker.log()
    assert "ignored its interrupt" in worker.log()
    assert Job.objects.get(pk=slow.id).state == "succeeded"
    assert_still_running_unrecorded(stuck.id)  # nothing is recorded for what was still running
    # Its row is not marked stopped (which would let recovery take the job at once).
    assert WorkerProcess.objects.get(pid=worker.pid).state != "stopped"
    wait_for(lambda: recovery.run_once("default"), timeout=20, message="the lease to expire and be recovered")
    assert list(ExecutionLog.objects.filter(job_id=stuck.id).values_list("outcome", flat=True)) == ["lost"]
    rerun = worker_process("--no-leader", "--burst", name="rerun")
    assert rerun.wait(60) == 0, rerun.log()
    assert Job.objects.get(pk=stuck.id).state == "succeeded"
    assert [(kind, attempt) for kind, attempt, _ in robustness_tasks.executions(tmp_path)] == [
        ("start", 1),
        ("start", 2),
        ("end", 2),
    ]


def test_sigterm_with_a_tolerated_stuck_thread_exits_non_zero_and_leaves_its_job_leased(worker_process, tmp_path):
    stuck = robustness_tasks.blocks_in_c_on_first_attempt.using(timeout=0.3).enqueue(str(tmp_path), 120, 0)
    worker = worker_process(
        "--no-leader", "--lease-seconds", "3", "--max-stuck-threads", "1", "--shutdown-grace", "1", name="tolerant"
    )
    wait_for(lambda: "ignored its interrupt" in worker.log(), timeout=20, message="the thread to count as stuck")
    assert worker.proc.poll() is None, worker.log()
    assert_still_running_unrecorded(stuck.id)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == STUCK_THREADS_EXIT_CODE, worker.log()
    assert_still_running_unrecorded(stuck.id)
