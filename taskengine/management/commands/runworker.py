"""manage.py runworker — run jobs. Thin: parses options and hands over to worker.Worker."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskengine import gate
from taskengine.compat import task_backends
from taskengine.conf import engine_settings
from taskengine.observability import metrics
from taskengine.queues import declared_queues
from taskengine.runtime.leader_service import build_services
from taskengine.runtime.worker import Worker

logger = logging.getLogger("taskengine.worker")
START_UP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartUpStop:
    """Until the worker installs its own handlers, SIGTERM/SIGINT mean "stop before
    starting": Python's default action would kill the process (exit -15) in the middle of
    the gate wait or Django's set-up, and a start-up that is asked to stop claims nothing.

    The handler only sets a flag, which the main thread sees as soon as the handler
    returns. (Setting a threading.Event in a handler could deadlock: the handler runs on
    the main thread, which may hold that event's lock inside ``Event.wait``.) ``wait`` lets
    ``gate.wait_until_ready`` use this as its ``stop`` event."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self.requested = False
        for signum in START_UP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.requested:
            left = self.POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, self.POLL_SECONDS))
        return self.requested


def queue_list(value: str) -> list[str]:
    queues = [q.strip() for q in value.split(",") if q.strip()]
    if not queues:
        raise ValueError("empty queue list")
    return queues


class Command(BaseCommand):
    help = "Run a taskengine worker: claim due jobs from the given queues and run them."

    def add_arguments(self, parser: CommandParser) -> None:
        self._add_work_arguments(parser)
        self._add_process_arguments(parser)

    @staticmethod
    def _add_work_arguments(parser: CommandParser) -> None:
        """What the worker claims and how: queues, slots, leases, polling."""
        parser.add_argument(
            "--queues",
            type=queue_list,
            default=["default"],
            help="Comma-separated queues to work ('*' = every queue in TASKS QUEUES). Default: default.",
        )
        parser.add_argument("--concurrency", type=int, default=8, help="Execution slots (threads). Default: 8.")
        parser.add_argument(
            "--lease-seconds",
            type=float,
            default=None,
            help=f"Lease per claimed job. Default: {engine_settings.LEASE_SECONDS}.",
        )
        parser.add_argument(
            "--backoff-base", type=float, default=None, help="First idle poll interval in seconds; doubles while idle."
        )
        parser.add_argument("--max-backoff", type=float, default=None, help="Longest idle poll interval in seconds.")
        parser.add_argument("--burst", action="store_true", help="Drain what is due, then exit 0.")

    @staticmethod
    def _add_process_arguments(parser: CommandParser) -> None:
        """The process around it: identity, shutdown, start-up gate, leadership, metrics."""
        parser.add_argument("--worker-id", default=None, help="Stable id for this worker (default: host-pid-random).")
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=None,
            help="Seconds running jobs get to finish after SIGTERM before they are released.",
        )
        parser.add_argument(
            "--max-stuck-threads",
            type=int,
            default=None,
            help="Handlers still running past their interrupt this worker tolerates; past "
            "this many it drains and exits 3 (default: TASKENGINE MAX_STUCK_THREADS, "
            "or half the concurrency, rounded down, when that is None).",
        )
        parser.add_argument(
            "--gate-timeout",
            type=float,
            default=None,
            help="Exit non-zero if migrations are still pending after this many seconds.",
        )
        parser.add_argument(
            "--no-leader",
            action="store_true",
            help="Never stand for leader (no recovery, schedules or pruning on this worker).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve this worker's Prometheus metrics on 127.0.0.1:PORT/metrics.",
        )
        parser.add_argument("--metrics-host", default="127.0.0.1", help="Address for --metrics-port.")
        parser.add_argument("--database", default=None, help="Database alias (default: TASKENGINE DATABASE).")

    def handle(self, *args: Any, **options: Any) -> None:
        start_up_stop = StartUpStop()
        database = options["database"] or engine_settings.DATABASE
        self._check_options(options)
        if options["metrics_port"]:
            # Served before the gate wait, so a worker waiting on migrations is scrapeable
            # (taskengine_worker_gate_open 0) rather than looking down.
            metrics.serve(options["metrics_host"], options["metrics_port"])
        gate_open = gate.wait_until_ready(database, timeout=options["gate_timeout"], stop=start_up_stop)
        if start_up_stop.is_set():
            self.exit_before_starting()
            return
        if not gate_open:
            raise CommandError(
                f"migrations still pending on database {database!r} after {options['gate_timeout']}s; "
                "run `manage.py migrate` and start the worker again"
            )
        metrics.WORKER_GATE_OPEN.set(1)
        worker = self._build_worker(database, options)
        worker.install_signal_handlers()
        if start_up_stop.is_set():  # the signal came before the worker's handlers took over
            self.exit_before_starting()
            return
        code = worker.run()
        if worker.stuck_threads:
            # Handlers ignoring their interrupts would keep the interpreter alive.
            for handler in logging.getLogger("taskengine").handlers + logging.getLogger().handlers:
                handler.flush()
            os._exit(code)
        if code:
            sys.exit(code)

    @staticmethod
    def _check_options(options: dict[str, Any]) -> None:
        """Refuse bad options and a bad TASKENGINE["QUEUES"] before anything starts."""
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["max_stuck_threads"] is not None and options["max_stuck_threads"] < 0:
            raise CommandError("--max-stuck-threads must be at least 0")
        try:
            declared_queues()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc

    @staticmethod
    def _build_worker(database: str, options: dict[str, Any]) -> Worker:
        queues = options["queues"]
        if queues == ["*"]:
            queues = sorted(task_backends["default"].queues) or ["default"]
        worker = Worker(
            queues=queues,
            concurrency=options["concurrency"],
            lease_seconds=options["lease_seconds"],
            backoff_base=options["backoff_base"],
            max_backoff=options["max_backoff"],
            burst=options["burst"],
            worker_id=options["worker_id"],
            database=database,
            shutdown_grace=options["shutdown_grace"],
            max_stuck_threads=options["max_stuck_threads"],
        )
        if not options["no_leader"]:
            try:
                worker.services = build_services(worker)
            except ImproperlyConfigured as exc:  # e.g. a bad TASKENGINE["SCHEDULES"] entry
                raise CommandError(str(exc)) from exc
        return worker

    def exit_before_starting(self) -> None:
        logger.info(
            "received a stop signal during start-up: exiting before starting (nothing registered, nothing claimed)"
        )
