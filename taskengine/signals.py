"""Sending django.tasks' signals so that a project's receiver cannot break the engine.

``enqueue`` sends ``task_enqueued`` after the job is committed (backend.py); a worker
sends ``task_started`` and ``task_finished`` (runtime/events.py). A receiver that raises
is logged with its name and the job, and changes nothing: not the committed enqueue, not
the job's outcome, not its attempts.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from taskengine.compat import TaskResult


def send_robustly(
    signal: Signal,
    name: str,
    sender: type,
    task_result: TaskResult[..., Any],
    log: logging.Logger,
    extra: dict[str, Any],
) -> None:
    """Send ``signal`` to every receiver even if some raise (``send_robust``), logging
    each receiver's error with its name and the job. A project's receiver must not stop
    a worker, spend an attempt, or make a committed enqueue look failed to its caller."""
    for receiver, response in signal.send_robust(sender, task_result=task_result):
        if isinstance(response, Exception):
            log.error(
                "%s receiver %s raised %s: %s (ignored)",
                name,
                receiver_name(receiver),
                type(response).__name__,
                response,
                exc_info=response,
                extra={**extra, "event": "signal_receiver_failed"},
            )


def receiver_name(receiver: Any) -> str:
    qualname = getattr(receiver, "__qualname__", None)
    if qualname is None:
        return repr(receiver)
    return f"{getattr(receiver, '__module__', None) or '?'}.{qualname}"
