"""End to end with real runworker processes: a worker killed mid-job is found by
reconcile as a dead worker's job, recovered once by --apply, and run to success by
another worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import override_settings

from taskengine.models import ExecutionLog, Job, OperatorAction
from taskengine.ops import reconcile
from tests import tasks
from tests.conftest import wait_for


@pytest.mark.acceptance
@pytest.mark.django_db(transaction=True)
def test_job_of_a_killed_worker_is_recovered_once_by_reconcile_and_then_succeeds(worker_process, tmp_path):
    marker = Path(tmp_path)
    result = tasks.sleep_then_record.enqueue(str(marker), "ran", 30)
    # --no-leader: no maintenance service may recover the job; reconcile is the only path.
    victim = worker_process(
        "--no-leader", "--worker-id", "victim", "--lease-seconds", "120", "--backoff-base", "0.05", name="victim"
    )
    wait_for(
        lambda: Job.objects.filter(pk=result.id, state="running").exists(),
        timeout=60,
        message="the victim to claim the job",
    )
    victim.kill9()

    with override_settings(TASKENGINE={"WORKER_DEAD_AFTER_SECONDS": 1.0}):
        report = wait_for(
            lambda: (r := reconcile.report()).finding("dead_worker_jobs").count and r,
            timeout=30,
            message="the dead worker's job to be reported",
        )
        assert report.finding("dead_worker_jobs").sample_ids == [int(result.id)]
        assert report.finding("expired_leases").count == 0  # the 120 s lease is still live
        victim_row = next(w for w in report.workers if w["worker_id"] == "victim")
        assert victim_row["alive"] is False and victim_row["running_jobs"] == 1
        [applied] = reconcile.apply(categories=["dead_worker_jobs"])
        assert (applied.fixed, applied.ids) == (1, [int(result.id)])
        [again] = reconcile.apply(categories=["dead_worker_jobs"])
        assert again.fixed == 0

    assert ExecutionLog.objects.get(job_id=result.id, attempt=1).outcome == "lost"
    assert OperatorAction.objects.filter(action="reconcile.dead_worker_jobs", target_id=str(result.id)).count() == 1
    Job.objects.filter(pk=result.id).update(args=[str(marker), "ran", 0])  # no need to wait 30 s again
    rescuer = worker_process("--no-leader", "--burst", "--backoff-base", "0.05", name="rescuer")
    assert rescuer.wait(60) == 0, rescuer.log()
    job = Job.objects.get(pk=result.id)
    assert (job.state, job.attempts) == ("succeeded", 2)
    assert len((marker / "ran").read_text().splitlines()) == 1  # the killed attempt never finished
