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
