"""The benchmark's tasks: a no-op, and two with real work (``--work io`` / ``--work cpu``)."""

from __future__ import annotations

import time

from ..compat import task

IO_SECONDS = 0.005  # each --work io job sleeps this long (I/O-like: releases the GIL)
CPU_SECONDS = 0.001  # each --work cpu job spins this much CPU time of its own thread


@task
def noop() -> None:
    """The benchmark's no-op task."""


@task
def sleep_5ms() -> None:
    """I/O-like work: 5 ms asleep, the GIL released."""
    time.sleep(IO_SECONDS)


@task
def spin_1ms() -> None:
    """CPU-like work: spins until its own thread has used 1 ms of CPU (thread time, so
    waiting for the GIL does not count as work)."""
    end = time.thread_time() + CPU_SECONDS
    while time.thread_time() < end:
        pass
