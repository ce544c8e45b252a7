import pytest

from tests import tasks


@pytest.mark.django_db(transaction=True)
def test_burst_worker_runs_a_job_to_success(worker_process):
    result = tasks.add.enqueue(2, 3)
    worker = worker_process("--burst", "--backoff-base", "0.05")
    assert worker.wait(60) == 0, worker.log()
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == 5
