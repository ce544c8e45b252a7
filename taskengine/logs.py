"""Log formatting: plain text by default, JSON lines with TASKENGINE["LOG_FORMAT"] = "json".

Job log records carry ``extra`` fields (worker_id, job_id, task_path, queue, attempt,
timings); both formats print them.
"""
from __future__ import annotations

import json
import logging

JOB_FIELDS = ("worker_id", "job_id", "task_path", "queue", "attempt", "claimed_at", "started_at", "finished_at", "duration_ms")


class Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        from .conf import engine_settings

        fields = {k: getattr(record, k) for k in JOB_FIELDS if getattr(record, k, None) is not None}
        if engine_settings.LOG_FORMAT == "json":
            payload = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                **{k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in fields.items()},
            }
            if record.exc_info:
                payload["traceback"] = self.formatException(record.exc_info)
            return json.dumps(payload)
        text = super().format(record)
        if fields:
            suffix = " ".join(f"{k}={v}" for k, v in fields.items())
            first, _, rest = text.partition("\n")
            text = f"{first} {suffix}" + (f"\n{rest}" if rest else "")
        return text
