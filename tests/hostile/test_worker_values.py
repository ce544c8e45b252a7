"""Hostile values from handlers: a real ``runworker --burst`` subprocess runs a job
whose handler returns or raises each value, then an ordinary job. The hostile job
reaches a terminal state with its value stored exactly or a clear recorded reason;
the worker survives it and runs the next job."""

from __future__ import annotations

import pytest

from taskengine.compat import TaskResultStatus, default_task_backend
from taskengine.models import ExecutionLog
from taskengine.runtime.worker import Worker
from tests.conftest import wait_for

from . import tasks

pytestmark = pytest.mark.django_db(transaction=True)

# returned kind -> None (stored exactly) or a word the recorded failure must use
RETURNED = {
    "one_megabyte_string": None,
    "astral_characters": None,
    "html": None,
    "nested_100_levels": None,
    "nul": "NUL",
    "nan": "JSON",
    "nested_10000_levels": "nested too deeply",
    "unserialisable": "JSON-serialisable",
}
RETURNED_CASES = [pytest.param(kind, RETURNED[kind], id=kind) for kind in RETURNED] + [
    pytest.param("lone_surrogate", "surrogate", id="lone_surrogate")
]
STALLS_BEFORE_THE_FIX = {"lone_surrogate", "lone_surrogate_message"}  # run in a subprocess

# raised message kind -> what the recorded error message must be
RAISED_CASES = [
    pytest.param(
        "one_megabyte_message", lambda m: m == tasks.RAISED["one_megabyte_message"][:2000], id="one_megabyte_message"
    ),
    pytest.param("html_message", lambda m: m == "<script>alert('x')</script>", id="html_message"),
    pytest.param("nul_message", lambda m: m == "bad \\x00 byte", id="nul_message"),
    pytest.param("non_utf8_bytes_message", lambda m: m == "b'\\xff\\xfe'", id="non_utf8_bytes_message"),
    pytest.param(
        "lone_surrogate_message",
        lambda m: "bad " in m and " end" in m and "\udcff" not in m,
        id="lone_surrogate_message",
    ),
]


def run_hostile_then_ordinary(worker_process, hostile, *, in_subprocess: bool = False) -> None:
    """Run ``hostile`` and then an ordinary job in one burst worker (concurrency 1, so in
    that order); both must finish. In-process is the quick way; the cases a worker could
    stall on run in a ``runworker`` subprocess, which the test can give up on."""
    ordinary = tasks.echo.enqueue("after", n=1)

    def both_finished():
        hostile.refresh()
        ordinary.refresh()
        return hostile.is_finished and ordinary.is_finished

    if in_subprocess:
        worker = worker_process("--burst", "--no-leader", "--concurrency", "1", "--backoff-base", "0.05")
        wait_for(both_finished, timeout=40, message="the hostile job and the next one to finish")
        assert worker.wait(30) == 0, worker.log()
    else:
        worker = Worker(
            queues=["default"], concurrency=1, burst=True, backoff_base=0.01, max_backoff=0.05, heartbeat_seconds=0.2
        )
        worker.run()
        assert both_finished(), "a burst worker exits once the queue is drained"
        assert worker.processed == 2
    assert ordinary.status == TaskResultStatus.SUCCESSFUL and ordinary.return_value == [["after"], {"n": 1}]


@pytest.mark.parametrize("kind, failure_word", RETURNED_CASES)
def test_a_hostile_return_value_is_stored_exactly_or_fails_its_job_clearly(worker_process, kind, failure_word):
    hostile = tasks.returns.enqueue(kind)
    run_hostile_then_ordinary(worker_process, hostile, in_subprocess=kind in STALLS_BEFORE_THE_FIX)
    if failure_word is None:
        assert hostile.status == TaskResultStatus.SUCCESSFUL
        stored = default_task_backend.get_result(hostile.id).return_value
        assert stored == tasks.RETURNED[kind]
    else:
        assert hostile.status == TaskResultStatus.FAILED
        log = ExecutionLog.objects.get(job_id=hostile.id)
        assert log.outcome == "failed" and log.error_class
        assert failure_word in log.error_message, log.error_message


@pytest.mark.parametrize("kind, recorded", RAISED_CASES)
def test_a_hostile_exception_message_fails_its_job_with_the_message_recorded(worker_process, kind, recorded):
    hostile = tasks.raises.enqueue(kind)
    run_hostile_then_ordinary(worker_process, hostile, in_subprocess=kind in STALLS_BEFORE_THE_FIX)
    assert hostile.status == TaskResultStatus.FAILED
    log = ExecutionLog.objects.get(job_id=hostile.id)
    assert log.error_class == "tests.hostile.tasks.HostileError"
    assert recorded(log.error_message), log.error_message[:200]
    assert 0 < len(log.traceback) <= 20000
    # The traceback keeps its last 20,000 characters: a megabyte message fills them.
    assert "HostileError" in log.traceback or len(tasks.RAISED[kind]) > 20000
    assert [e.exception_class_path for e in hostile.errors] == ["tests.hostile.tasks.HostileError"]


def test_a_unicode_error_about_a_surrogate_fails_its_job_with_the_error_recorded(worker_process):
    hostile = tasks.encodes_a_surrogate.enqueue()
    run_hostile_then_ordinary(worker_process, hostile)
    assert hostile.status == TaskResultStatus.FAILED
    log = ExecutionLog.objects.get(job_id=hostile.id)
    assert log.error_class == "builtins.UnicodeEncodeError" and "surrogates not allowed" in log.error_message
    assert "encodes_a_surrogate" in log.traceback
