"""A project's django.tasks signal receivers that raise: the engine logs each error with
the receiver's name and the job id, calls the receivers after it, and carries on — the
worker does not stop, the job's outcome and attempts do not change, an enqueue stands."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest
from django.db import transaction

from taskengine.compat import TaskResultStatus, task_enqueued
from taskengine.models import ExecutionLog, Job
from tests import signal_tasks, tasks
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """caplog that also sees the ``taskengine`` loggers (they do not propagate)."""
    engine = logging.getLogger("taskengine")
    engine.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="taskengine")
    try:
        yield caplog
    finally:
        engine.removeHandler(caplog.handler)


def test_raising_task_started_and_finished_receivers_do_not_stop_the_worker_or_change_outcomes(
    worker_process, tmp_path
):
    marker_dir = str(tmp_path)
    ok = signal_tasks.succeeds.enqueue(marker_dir)
    failing = signal_tasks.always_fails.enqueue(marker_dir)
    async_ok = signal_tasks.async_succeeds.enqueue(marker_dir)
    jobs = (ok, failing, async_ok)
    worker = worker_process("--backoff-base", "0.05", "--max-backoff", "0.2")
    # Every receiver after a raising one is called, every time.
    expected_markers = sorted(
        [
            f"started-{ok.id}-1",
            f"finished-successful-{ok.id}-1",
            f"started-{failing.id}-1",
            f"started-{failing.id}-2",
            f"finished-failed-{failing.id}-2",
            f"started-{async_ok.id}-1",
            f"finished-successful-{async_ok.id}-1",
        ]
    )
    # Each raising receiver's error is logged with the receiver's name and the job id.
    expected_errors = {
        (receiver, f"job_id={result.id} ")
        for result in jobs
        for receiver in ("tests.signal_tasks.raise_on_started", "tests.signal_tasks.raise_on_finished")
    }

    def markers() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".log"))

    def logged_errors() -> set[tuple[str, str]]:
        lines = [line for line in worker.log().splitlines() if "event=signal_receiver_failed" in line]
        return {
            (receiver, job)
            for receiver, job in expected_errors
            if any(receiver in line and job in line for line in lines)
        }

    wait_for(
        lambda: (
            worker.proc.poll() is not None or (markers() == expected_markers and logged_errors() == expected_errors)
        ),
        timeout=30,
        message="the jobs to finish and their signals to be sent",
    )
    assert worker.proc.poll() is None, worker.log()

    for result in jobs:
        result.refresh()
    assert (ok.status, ok.return_value, len(ok.worker_ids)) == (TaskResultStatus.SUCCESSFUL, "ok", 1)
    assert (async_ok.status, async_ok.return_value) == (TaskResultStatus.SUCCESSFUL, "async ok")
    assert failing.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in failing.errors] == ["builtins.ValueError"] * 2

    def outcomes(result) -> list[str]:
        return list(ExecutionLog.objects.filter(job_id=result.id).order_by("attempt").values_list("outcome", flat=True))

    assert outcomes(ok) == outcomes(async_ok) == ["succeeded"]
    assert outcomes(failing) == ["retry", "failed"]

    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log()


def test_a_raising_task_enqueued_receiver_is_logged_and_the_enqueue_stands(engine_log):
    seen: list[str] = []

    def broken_receiver(sender, task_result, **kwargs) -> None:
        raise RuntimeError("enqueued receiver broke")

    def recording_receiver(sender, task_result, **kwargs) -> None:
        seen.append(task_result.id)

    task_enqueued.connect(broken_receiver, weak=False, dispatch_uid="test.broken_receiver")
    task_enqueued.connect(recording_receiver, weak=False, dispatch_uid="test.recording_receiver")
    try:
        with transaction.atomic():
            inside = tasks.add.enqueue(1, 2)
        outside = tasks.add.enqueue(3, 4)
        batch = tasks.add.enqueue_many([(5, 6), (7, 8)])
    finally:
        task_enqueued.disconnect(dispatch_uid="test.broken_receiver")
        task_enqueued.disconnect(dispatch_uid="test.recording_receiver")

    ids = [inside.id, outside.id, *(r.id for r in batch)]
    assert seen == ids
    assert Job.objects.filter(pk__in=ids, state="queued").count() == 4
    failures = [r for r in engine_log.records if getattr(r, "event", None) == "signal_receiver_failed"]
    assert [r.job_id for r in failures] == [int(i) for i in ids]
    for record in failures:
        assert record.levelno == logging.ERROR and record.exc_info
        assert "task_enqueued" in record.getMessage() and "broken_receiver" in record.getMessage()
