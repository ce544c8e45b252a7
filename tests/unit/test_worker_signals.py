"""A stop signal's handler runs on the main thread at whatever bytecode it interrupted —
possibly inside ``threading.Event.wait``, with the event's (non-reentrant) lock held."""

from __future__ import annotations

import signal
import threading

from taskengine.runtime.worker import Worker
from tests.conftest import wait_for


def test_a_stop_signal_arriving_while_the_loop_holds_the_wake_lock_does_not_deadlock():
    worker = Worker(queues=["default"], shutdown_grace=5)
    handled = threading.Event()

    def interrupted_inside_wait():
        # What the main thread holds between entering Event.wait and blocking in it
        # (CPython's Event keeps its Condition as _cond); the handler then runs on this
        # same thread, as a signal handler would.
        with worker._wake._cond:
            worker._stop_signals.on_signal(signal.SIGTERM, None)
        handled.set()

    thread = threading.Thread(target=interrupted_inside_wait, daemon=True)
    thread.start()
    thread.join(5)
    assert handled.is_set(), "the signal handler deadlocked on the wake event's lock"
    assert worker._draining
    wait_for(worker._wake.is_set, timeout=5, message="the loop to be woken")


def test_a_worker_tolerates_stuck_handlers_up_to_half_its_slots_by_default():
    from django.test import override_settings

    assert Worker(queues=["default"], concurrency=8).options.max_stuck_threads == 4
    assert Worker(queues=["default"], concurrency=4).options.max_stuck_threads == 2
    assert Worker(queues=["default"], concurrency=1).options.max_stuck_threads == 0
    assert Worker(queues=["default"], concurrency=8, max_stuck_threads=0).options.max_stuck_threads == 0
    with override_settings(TASKENGINE={"MAX_STUCK_THREADS": 1}):
        assert Worker(queues=["default"], concurrency=8).options.max_stuck_threads == 1


class CompleterFinishingAWriteMeanwhile:
    """A completer holding one write that commits, queueing a retry, at the worst
    instant: just after the loop asked whether retries were queued (and was told no)."""

    def __init__(self) -> None:
        self.held = 1
        self.requeued = False

    def busy(self) -> bool:
        return self.held > 0

    def take_requeued(self) -> bool:
        requeued, self.requeued = self.requeued, False
        if self.held:  # the write commits now, under the loop's feet
            self.held, self.requeued = 0, True
        return requeued


def test_a_burst_worker_does_not_exit_while_its_completer_queues_a_retry():
    """Fails on the loop that asked for queued retries before reading whether the
    completer still held anything: both answers came back "no" and the burst worker
    exited with the retry due."""
    worker = Worker(queues=["default"], burst=True, backoff_base=0.001, max_backoff=0.001)
    worker._finishing.completer = CompleterFinishingAWriteMeanwhile()
    assert worker._wait_to_claim([]) is True  # claim again: the retry is to be claimed
    assert worker._finishing.completer.take_requeued() is True
