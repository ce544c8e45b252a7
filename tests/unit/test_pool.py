"""The worker's job threads: every item runs once, its result or exception reaches
``done`` on the thread that ran it, the pool never grows past its size, and no item
waits for a thread while the caller keeps within ``size`` items in flight."""

from __future__ import annotations

import threading
import time

import pytest

from taskengine.runtime.pool import JobThreads


def test_every_item_runs_once_and_its_result_or_error_reaches_done():
    results: dict[int, tuple] = {}
    lock = threading.Lock()

    def run(item: int) -> int:
        if item % 7 == 0:
            raise ValueError(f"bad {item}")
        return item * 2

    def done(item, result, error):
        with lock:
            assert item not in results
            results[item] = (result, error, threading.current_thread().name)

    pool = JobThreads(4, run, done)
    for item in range(1, 101):
        pool.submit(item)
    pool.shutdown(wait=True)
    assert sorted(results) == list(range(1, 101))
    for item, (result, error, thread) in results.items():
        if item % 7 == 0:
            assert result is None and isinstance(error, ValueError) and str(error) == f"bad {item}"
        else:
            assert result == item * 2 and error is None
        assert thread.startswith("taskengine-job_")


def test_items_in_flight_up_to_size_all_run_at_once_and_threads_never_exceed_size():
    size = 6
    started = threading.Barrier(size + 1)
    release = threading.Event()
    done_count = []

    def run(item):
        started.wait(timeout=10)  # every item must be running at the same time
        release.wait(timeout=10)
        return item

    pool = JobThreads(size, run, lambda item, result, error: done_count.append(error))
    for round_ in range(3):
        release.clear()
        for item in range(size):
            pool.submit((round_, item))
        started.wait(timeout=10)  # raises BrokenBarrierError if an item waited for a thread
        release.set()
        deadline = time.monotonic() + 10
        while len(done_count) < size * (round_ + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        started.reset()
    pool.shutdown(wait=True)
    assert done_count == [None] * size * 3
    assert len(pool._threads) <= size


def test_a_base_exception_from_a_handler_is_reported_not_raised_in_the_thread():
    seen = []

    def run(item):
        raise SystemExit(3)

    pool = JobThreads(1, run, lambda item, result, error: seen.append(type(error)))
    pool.submit("x")
    pool.submit("y")
    pool.shutdown(wait=True)
    assert seen == [SystemExit, SystemExit]


@pytest.mark.parametrize("wait", [True, False])
def test_shutdown_stops_the_threads(wait):
    pool = JobThreads(3, lambda item: item, lambda *a: None)
    for item in range(3):
        pool.submit(item)
    pool.shutdown(wait=wait)
    for thread in pool._threads:
        thread.join(5)
        assert not thread.is_alive()
