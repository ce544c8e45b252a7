"""Structured logs: a real worker with TASKENGINE_LOG_FORMAT=json writes only JSON lines,
one per job event, carrying worker id, job id, task path, queue, attempt and timings, and
the traceback of a failure as a field; the text format carries the same fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from taskengine.observability.logs import Formatter
from tests import tasks

JOB_KEYS = {"event", "worker_id", "job_id", "task_path", "queue", "attempt", "claimed_at", "run_after"}


@pytest.mark.django_db(transaction=True)
def test_json_worker_logs_are_one_json_object_per_line_with_job_fields(worker_process):
    ok = tasks.add.enqueue(2, 3)
    bad = tasks.boom.enqueue()
    worker = worker_process(
        "--burst", "--backoff-base", "0.05", env={"TASKENGINE_LOG_FORMAT": "json", "TASKENGINE_LOG_LEVEL": "INFO"}
    )
    assert worker.wait(60) == 0, worker.log()
    lines = [line for line in worker.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, not just the job events
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    events = {(r.get("job_id"), r.get("event")): r for r in records if "event" in r}

    claimed, succeeded = events[(int(ok.id), "claimed")], events[(int(ok.id), "succeeded")]
    assert claimed.keys() >= JOB_KEYS and succeeded.keys() >= JOB_KEYS
    assert succeeded["task_path"] == "tests.tasks.add" and succeeded["queue"] == "default"
    assert succeeded["attempt"] == 1 and succeeded["state"] == "succeeded"
    assert succeeded["duration_ms"] >= 0 and succeeded["finished_at"] >= succeeded["claimed_at"]
    assert succeeded["worker_id"] == claimed["worker_id"]

    failed = events[(int(bad.id), "failed")]
    assert failed["level"] == "ERROR" and failed["error_class"] == "builtins.ValueError"
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert "ValueError: boom" in failed["traceback"]
    assert "\n" not in failed["message"]


def record(**extra) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {
            "name": "taskengine.worker",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "attempt %s -> %s",
            "args": ("failed", "failed"),
            **extra,
        }
    )
    return rec


def test_text_logs_put_job_fields_on_the_line_and_the_traceback_below(settings):
    settings.TASKENGINE = {**settings.TASKENGINE, "LOG_FORMAT": "text"}
    text = Formatter().format(
        record(
            event="failed",
            job_id=7,
            queue="default",
            attempt=2,
            traceback="Traceback (most recent call last):\nValueError: x",
        )
    )
    first, rest = text.split("\n", 1)
    assert "attempt failed -> failed" in first and "job_id=7" in first and "attempt=2" in first
    assert rest.endswith("ValueError: x")


def test_json_logs_keep_exceptions_on_one_line(settings):
    settings.TASKENGINE = {**settings.TASKENGINE, "LOG_FORMAT": "json"}
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        rec = record(exc_info=sys.exc_info(), job_id=9, duration_ms=1.5)
    line = Formatter().format(rec)
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["job_id"] == 9 and payload["duration_ms"] == 1.5
    assert "RuntimeError: kaput" in payload["traceback"]
