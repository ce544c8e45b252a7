"""Job events of a worker: one log line per event (worker id, job id, task path, queue,
attempt, timings; the traceback on failure), the per-job metrics, django.tasks'
``task_started`` / ``task_finished`` signals, and django.tasks' own log lines.

django.tasks logs every start and finish through receivers of those signals
(``django.tasks.signals.log_task_started`` / ``log_task_finished``: "Task id=… path=…
state=RUNNING|SUCCESSFUL|FAILED", INFO, a failure at ERROR with its exception). Building a
TaskResult per job only to feed those two receivers would cost every job (and a read
of the store after a retry), so while they are the only receivers the worker writes
their lines itself, in their format, on their logger, and only when that logger is
enabled. When a project connects a receiver of its own, the signal is sent and Django's
receivers write the lines, with the task's exception as the one being handled (as
ImmediateBackend sends task_finished inside its ``except``). A project that disconnects
Django's receivers gets no such lines, as with Django's own backends. A retried attempt
sends no task_finished and writes no finish line: the task has not finished.

A first attempt's result is built from what the worker knows; after retries, the errors
and workers of earlier attempts are read back from the store. Nothing here may break
the worker loop: signals are sent robustly (send_robustly), so a receiver that raises is
logged and changes neither the job's outcome nor its attempts.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from django.dispatch import Signal

from taskengine.compat import (
    TASKS_LOGGER,
    TaskError,
    TaskResult,
    TaskResultStatus,
    log_task_finished,
    log_task_started,
    receiver_key,
    receiver_keys,
    set_return_value,
    set_task_result_fields,
    task_finished,
    task_started,
)
from taskengine.jobs import ClaimedJob, Outcome
from taskengine.observability import metrics
from taskengine.runtime.execution import RunningJob, job_backend, task_result_for
from taskengine.signals import send_robustly
from taskengine.states import to_task_result_status

logger = logging.getLogger("taskengine.worker")
django_logger = logging.getLogger(TASKS_LOGGER)  # the framework's log receivers' logger
DJANGO_TASK_LINE = "Task id=%s path=%s state=%s"  # log_task_started/finished's (tests/unit/test_compat.py)


def listeners(signal: Signal, djangos_receiver: Any) -> tuple[bool, bool]:
    """(is django.tasks' own log receiver connected to ``signal``, is any other)."""
    djangos_key = receiver_key(djangos_receiver)
    djangos = others = False
    for key in receiver_keys(signal):
        if key == djangos_key:
            djangos = True
        else:
            others = True
    return djangos, others


def exc_info_of(error: BaseException | None) -> tuple[type[BaseException], BaseException, Any] | None:
    return (type(error), error, error.__traceback__) if error is not None else None


class JobEvents:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._metric_children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def claimed(self, job: ClaimedJob) -> None:
        self._metric(metrics.JOBS_RUNNING, job.queue).inc()
        if logger.isEnabledFor(logging.INFO):
            logger.info("claimed", extra=self.extra(job, event="claimed"))

    def unclaimed(self, job: ClaimedJob) -> None:
        """A claimed job handed back unstarted (a prefetched job released while draining)."""
        self._metric(metrics.JOBS_RUNNING, job.queue).dec()

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
            self._finished_for_django(running, state, outcome)
            return
        extra = self._finish_extra(running, outcome, state)
        if state is None:
            metrics.LEASES_LOST.labels(job.queue).inc()
            logger.warning(
                "lease lost before finishing; outcome %s discarded (the job is recovered and runs again)",
                outcome.outcome,
                extra={**extra, "event": "lease_lost"},
            )
            return
        metrics.job_finished(job.queue, job.task_path, state, outcome.outcome)
        if outcome.error_class:
            # The traceback travels as its own field: the text format prints it under the
            # line, the JSON format keeps every event on one line.
            level = logging.ERROR if state == "failed" else logging.WARNING
            retry = f" (retry in {outcome.retry_delay:.1f}s)" if state == "queued" else ""
            event = "retry" if state == "queued" else state
            logger.log(
                level,
                "attempt %s -> %s%s: %s: %s",
                outcome.outcome,
                state,
                retry,
                outcome.error_class,
                outcome.error_message,
                extra={
                    **extra,
                    "event": event,
                    "error_class": outcome.error_class,
                    "traceback": outcome.traceback.rstrip(),
                },
            )
        else:
            logger.info("succeeded", extra={**extra, "event": "succeeded"})
        if state != "queued":
            self._finished_for_django(running, state, outcome)

    def started(self, running: RunningJob) -> None:
        """task_started when a project listens; django.tasks' RUNNING line."""
        djangos, others = listeners(task_started, log_task_started)
        if not others:
            if djangos and django_logger.isEnabledFor(logging.INFO):
                django_logger.info(
                    DJANGO_TASK_LINE, str(running.job.id), running.job.task_path, TaskResultStatus.RUNNING
                )
            return
        try:
            backend = job_backend(running)
            result = task_result_for(running, [self.worker_id])
            if running.job.attempt > 1:
                result = self._stored_result(running) or result
            send_robustly(task_started, "task_started", type(backend), result, logger, self.extra(running.job))
        except Exception:
            logger.exception("could not send task_started", extra=self.extra(running.job))

    def _finished_for_django(self, running: RunningJob, state: str, outcome: Outcome) -> None:
        """task_finished when a project listens (and the task still imports); otherwise
        django.tasks' finish line, written here."""
        djangos, others = listeners(task_finished, log_task_finished)
        error, outcome.exception = outcome.exception, None  # let its frames go once reported
        if others and running.task is not None:
            self._send_finished(running, state, outcome, error)
            return
        if not djangos:
            return
        status = to_task_result_status(state)
        level = logging.ERROR if status == TaskResultStatus.FAILED else logging.INFO
        if django_logger.isEnabledFor(level):
            django_logger.log(
                level,
                DJANGO_TASK_LINE,
                str(running.job.id),
                running.job.task_path,
                status,
                exc_info=exc_info_of(error) if status == TaskResultStatus.FAILED else None,
            )

    def _send_finished(self, running: RunningJob, state: str, outcome: Outcome, error: BaseException | None) -> None:
        """A first attempt's result is known here in full; after retries, the errors
        and workers of earlier attempts are read back from the store. Sent with the
        task's exception as the one being handled, as ImmediateBackend sends it (Django's
        log receiver takes the exception from sys.exc_info())."""
        try:
            backend = job_backend(running)
            if running.job.attempt > 1:
                result = self._stored_result(running)
                if result is None:
                    return
            else:
                result = task_result_for(running, [self.worker_id])
                status = to_task_result_status(state)
                set_task_result_fields(result, status=status, finished_at=outcome.finished_at)
                if outcome.error_class:
                    result.errors.append(
                        TaskError(exception_class_path=outcome.error_class, traceback=outcome.traceback)
                    )
                if status == TaskResultStatus.SUCCESSFUL:
                    assert outcome.return_value is not None  # a success always stores its JSON
                    set_return_value(result, json.loads(outcome.return_value))
            extra = self.extra(running.job)
            if error is None:
                send_robustly(task_finished, "task_finished", type(backend), result, logger, extra)
                return
            saved_traceback = error.__traceback__
            try:
                raise error
            except BaseException:
                send_robustly(task_finished, "task_finished", type(backend), result, logger, extra)
            finally:
                error.__traceback__ = saved_traceback
        except Exception:
            logger.exception("could not send task_finished", extra=self.extra(running.job))

    def _stored_result(self, running: RunningJob) -> TaskResult[..., Any] | None:
        try:
            result: TaskResult[..., Any] = job_backend(running).get_result(str(running.job.id))
            return result
        except Exception:
            logger.exception("could not load the stored result for a task signal", extra=self.extra(running.job))
            return None

    def _finish_extra(self, running: RunningJob, outcome: Outcome, state: str | None) -> dict[str, Any]:
        return self.extra(
            running.job,
            duration_ms=round((time.monotonic() - running.monotonic_start) * 1000, 3),
            outcome=str(outcome.outcome),
            state=state,
            finished_at=outcome.finished_at.isoformat() if outcome.finished_at else None,
        )

    def _metric(self, metric: Any, *labels: str) -> Any:
        """A labelled child of ``metric``, cached (labels() is costly per job)."""
        key = (metric, labels)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = metric.labels(*labels)
        return child

    def extra(self, job: ClaimedJob, **more: Any) -> dict[str, Any]:
        """The fields every job log line carries."""
        return {
            "worker_id": self.worker_id,
            "job_id": job.id,
            "task_path": job.task_path,
            "queue": job.queue,
            "attempt": job.attempt,
            "claimed_at": job.last_attempted_at.isoformat(),
            "run_after": job.run_after.isoformat() if job.run_after else None,
            **more,
        }
