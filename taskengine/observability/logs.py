"""Log formatting: plain text by default, JSON lines with TASKENGINE["LOG_FORMAT"] = "json"
(env TASKENGINE_LOG_FORMAT=json in project/settings.py).

Job events (claimed, succeeded, retry, failed, cancelled, timed_out, lease_lost,
released, recovered, …) are one record each, with ``extra`` fields: event, worker_id,
job_id, task_path, queue, attempt, state, outcome, error_class and the timings
(run_after, claimed_at, finished_at — database clock — and duration_ms).

Invariants:
- JSON format: exactly one line per record, always valid JSON; a traceback (``exc_info``
  or a ``traceback`` extra) is a field, never extra lines. Values that are not JSON
  types are written as strings.
- Text format: ``time level logger message key=value…`` on the first line; the
  traceback, when there is one, follows on the next lines.
- Formatting never raises: a broken argument degrades to the raw message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

JOB_FIELDS = (
    "event",
    "worker_id",
    "job_id",
    "task_path",
    "queue",
    "attempt",
    "state",
    "outcome",
    "error_class",
    "run_after",
    "claimed_at",
    "started_at",
    "finished_at",
    "duration_ms",
)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        from taskengine.conf import engine_settings

        fields = {k: getattr(record, k) for k in JOB_FIELDS if getattr(record, k, None) is not None}
        try:
            json_format = engine_settings.LOG_FORMAT == "json"
        except Exception:
            json_format = False
        if json_format:
            return self.format_json(record, fields)
        return self.format_text(record, fields)

    def format_json(self, record: logging.LogRecord, fields: dict[str, Any]) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            "pid": record.process,
            **{k: _json_value(v) for k, v in fields.items()},
        }
        tb = getattr(record, "traceback", None)
        if record.exc_info:
            tb = self.formatException(record.exc_info)
        if tb:
            payload["traceback"] = str(tb)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str)

    def format_text(self, record: logging.LogRecord, fields: dict[str, Any]) -> str:
        record.message = _message(record)
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        tb = getattr(record, "traceback", None)
        if record.exc_info:
            tb = self.formatException(record.exc_info)
        if tb:
            text += "\n" + str(tb).rstrip()
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        return str(record.msg)
