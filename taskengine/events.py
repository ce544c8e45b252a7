"""Job events of a worker: one log line per event (worker id, job id, task path, queue,
attempt, timings; the traceback on failure), the per-job metrics, and django.tasks'
``task_started`` / ``task_finished`` signals.

Signals carry a TaskResult only when a project connects a receiver: the worker's own
log lines replace django.tasks' log receivers in the worker process. A first attempt's
result is built from what the worker knows; after retries, the errors and workers of
earlier attempts are read back from the store. Nothing here may break the worker loop:
signals are sent robustly (send_robustly), so a receiver that raises is logged and
changes neither the job's outcome nor its attempts.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from django.dispatch import Signal
from django.tasks import TaskResult, TaskResultStatus, task_backends
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started

from . import metrics, store
from .execution import RunningJob, task_result_for
from .states import to_task_result_status
from .store import Outcome

logger = logging.getLogger("taskengine.worker")


def send_robustly(signal: Signal, name: str, sender: type, task_result: TaskResult,
                  log: logging.Logger, extra: dict[str, Any]) -> None:
    """Send ``signal`` to every receiver even if some raise (``send_robust``), logging
    each receiver's error with its name and the job. A project's receiver must not stop
    a worker, spend an attempt, or make a committed enqueue look failed to its caller."""
    for receiver, response in signal.send_robust(sender, task_result=task_result):
        if isinstance(response, Exception):
            log.error("%s receiver %s raised %s: %s (ignored)", name, receiver_name(receiver),
                      type(response).__name__, response, exc_info=response,
                      extra={**extra, "event": "signal_receiver_failed"})


def receiver_name(receiver: Any) -> str:
    qualname = getattr(receiver, "__qualname__", None)
    if qualname is None:
        return repr(receiver)
    return f"{getattr(receiver, '__module__', None) or '?'}.{qualname}"


def replace_django_task_log_receivers() -> None:
    """django.tasks logs every task start and finish through signal receivers; the
    worker logs the same events itself, with worker id, attempt and timings. Dropping
    the duplicates means a TaskResult is built for task_started / task_finished only
    when a project connects its own receiver."""
    from django.tasks import signals

    task_started.disconnect(signals.log_task_started)
    task_finished.disconnect(signals.log_task_finished)


class JobEvents:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._metric_children: dict[tuple, Any] = {}

    def claimed(self, job: store.ClaimedJob) -> None:
        self._metric(metrics.JOBS_RUNNING, job.queue).inc()
        if logger.isEnabledFor(logging.INFO):
            logger.info("claimed", extra=self.extra(job, event="claimed"))

    def collected(self, running: RunningJob) -> None:
        """The attempt's handler returned (its outcome is not written yet)."""
        self._metric(metrics.JOBS_RUNNING, running.job.queue).dec()
        self._metric(metrics.JOB_DURATION, running.job.queue).observe(time.monotonic() - running.monotonic_start)

    def finished(self, running: RunningJob, outcome: Outcome, state: str | None) -> None:
        """Log, count and signal one written (or discarded: ``state`` None) outcome."""
        job = running.job
        if state == "succeeded" and not outcome.error_class:
            metrics.job_finished(job.queue, job.task_path, state, outcome.outcome)
            if logger.isEnabledFor(logging.INFO):
                logger.info("succeeded", extra={**self._finish_extra(running, outcome, state), "event": "succeeded"})
            self._send_finished(running, state, outcome)
            return
        extra = self._finish_extra(running, outcome, state)
        if state is None:
            metrics.LEASES_LOST.labels(job.queue).inc()
            logger.warning("lease lost before finishing; outcome %s discarded (the job is recovered and runs again)",
                           outcome.outcome, extra={**extra, "event": "lease_lost"})
            return
        metrics.job_finished(job.queue, job.task_path, state, outcome.outcome)
        if outcome.error_class:
            # The traceback travels as its own field: the text format prints it under the
            # line, the JSON format keeps every event on one line.
            level = logging.ERROR if state == "failed" else logging.WARNING
            retry = f" (retry in {outcome.retry_delay:.1f}s)" if state == "queued" else ""
            event = "retry" if state == "queued" else state
            logger.log(level, "attempt %s -> %s%s: %s: %s", outcome.outcome, state, retry,
                       outcome.error_class, outcome.error_message,
                       extra={**extra, "event": event, "error_class": outcome.error_class,
                              "traceback": outcome.traceback.rstrip()})
        else:
            logger.info("succeeded", extra={**extra, "event": "succeeded"})
        if state != "queued" and running.task is not None:
            self._send_finished(running, state, outcome)

    def started(self, running: RunningJob) -> None:
        """task_started, when a project listens."""
        if not task_started.has_listeners():
            return
        try:
            backend = task_backends[running.task.backend]
            result = task_result_for(running, [self.worker_id], backend.alias)
            if running.job.attempt > 1:
                result = self._stored_result(running) or result
            send_robustly(task_started, "task_started", type(backend), result, logger, self.extra(running.job))
        except Exception:  # noqa: BLE001 - a signal must not break the loop or the attempt
            logger.exception("could not send task_started", extra=self.extra(running.job))

    def _send_finished(self, running: RunningJob, state: str, outcome: Outcome) -> None:
        """A first attempt's result is known here in full; after retries, the errors
        and workers of earlier attempts are read back from the store."""
        if not task_finished.has_listeners():
            return
        try:
            backend = task_backends[running.task.backend]
            if running.job.attempt > 1:
                result = self._stored_result(running)
                if result is None:
                    return
            else:
                result = task_result_for(running, [self.worker_id], backend.alias)
                status = to_task_result_status(state)
                object.__setattr__(result, "status", status)
                object.__setattr__(result, "finished_at", outcome.finished_at)
                if outcome.error_class:
                    result.errors.append(TaskError(exception_class_path=outcome.error_class,
                                                   traceback=outcome.traceback))
                if status == TaskResultStatus.SUCCESSFUL:
                    object.__setattr__(result, "_return_value", json.loads(outcome.return_value))
            send_robustly(task_finished, "task_finished", type(backend), result, logger, self.extra(running.job))
        except Exception:  # noqa: BLE001 - a signal must not break the loop
            logger.exception("could not send task_finished", extra=self.extra(running.job))

    def _stored_result(self, running: RunningJob):
        try:
            return task_backends[running.task.backend].get_result(str(running.job.id))
        except Exception:  # noqa: BLE001 - a signal must not break the loop
            logger.exception("could not load the stored result for a task signal",
                             extra=self.extra(running.job))
            return None

    def _finish_extra(self, running: RunningJob, outcome: Outcome, state: str | None) -> dict[str, Any]:
        return self.extra(
            running.job, duration_ms=round((time.monotonic() - running.monotonic_start) * 1000, 3),
            outcome=str(outcome.outcome), state=state,
            finished_at=outcome.finished_at.isoformat() if outcome.finished_at else None)

    def _metric(self, metric, *labels: str):
        """A labelled child of ``metric``, cached (labels() is costly per job)."""
        key = (metric, labels)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = metric.labels(*labels)
        return child

    def extra(self, job: store.ClaimedJob, **more: Any) -> dict[str, Any]:
        """The fields every job log line carries."""
        return {"worker_id": self.worker_id, "job_id": job.id, "task_path": job.task_path,
                "queue": job.queue, "attempt": job.attempt, "claimed_at": job.last_attempted_at.isoformat(),
                "run_after": job.run_after.isoformat() if job.run_after else None, **more}
