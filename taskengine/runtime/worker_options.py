"""A worker's options, resolved once: runworker's arguments over TASKENGINE settings.

Invariants:
- Built only through ``WorkerOptions.build``, which validates: at least one queue (the
  list deduplicated, order kept), a concurrency of at least 1, ``max_stuck_threads`` of
  at least 0. A built value is frozen: the running loop never re-reads the settings.
- An argument left out (or None) takes the TASKENGINE setting; ``lease_seconds`` and
  ``heartbeat_seconds`` also treat 0 as unset. An unset heartbeat is the setting's but
  at most a third of the lease, so two missed heartbeats still leave the lease held.
  ``max_stuck_threads`` unset everywhere is half the concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from taskengine.conf import engine_settings
from taskengine.runtime import heartbeats

PREFETCH_MIN_BOUND = 32  # the prefetch limit is the larger of this and the concurrency


class WorkerArguments(TypedDict, total=False):
    """What runworker (or a test) may pass to a Worker besides its queues."""

    concurrency: int
    lease_seconds: float | None
    backoff_base: float | None
    max_backoff: float | None
    burst: bool
    worker_id: str | None
    database: str | None
    shutdown_grace: float | None
    heartbeat_seconds: float | None
    use_advisory_locks: bool | None
    poll_only: bool | None
    max_stuck_threads: int | None
    completer: bool | None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    queues: list[str]  # deduplicated, in the order given
    concurrency: int
    lease_seconds: float
    backoff_base: float
    max_backoff: float
    burst: bool
    worker_id: str
    database: str
    shutdown_grace: float
    heartbeat_seconds: float
    use_advisory_locks: bool
    poll_only: bool
    max_stuck_threads: int
    use_completer: bool
    prefetch_limit: int  # at most this many claimed jobs wait for a slot

    @classmethod
    def build(cls, queues: Sequence[str], **arguments: Unpack[WorkerArguments]) -> WorkerOptions:
        s = engine_settings
        concurrency = arguments.get("concurrency", 8)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        lease_seconds = float(arguments.get("lease_seconds") or s.LEASE_SECONDS)
        stuck = _given(arguments.get("max_stuck_threads"), s.MAX_STUCK_THREADS)
        max_stuck_threads = concurrency // 2 if stuck is None else int(stuck)
        if max_stuck_threads < 0:
            raise ValueError("max_stuck_threads must be at least 0")
        return cls(
            queues=list(dict.fromkeys(queues)),
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            backoff_base=float(_given(arguments.get("backoff_base"), s.POLL_BACKOFF_BASE)),
            max_backoff=float(_given(arguments.get("max_backoff"), s.POLL_MAX_BACKOFF)),
            burst=arguments.get("burst", False),
            worker_id=arguments.get("worker_id") or heartbeats.new_worker_id(),
            database=arguments.get("database") or s.DATABASE,
            shutdown_grace=float(_given(arguments.get("shutdown_grace"), s.SHUTDOWN_GRACE_SECONDS)),
            heartbeat_seconds=float(arguments.get("heartbeat_seconds") or min(s.HEARTBEAT_SECONDS, lease_seconds / 3)),
            use_advisory_locks=_given(arguments.get("use_advisory_locks"), s.USE_ADVISORY_LOCKS),
            poll_only=_given(arguments.get("poll_only"), s.POLL_ONLY),
            max_stuck_threads=max_stuck_threads,
            use_completer=_given(arguments.get("completer"), s.COMPLETER),
            prefetch_limit=max(concurrency, PREFETCH_MIN_BOUND),
        )


def _given[T](argument: T | None, setting: T) -> T:
    return setting if argument is None else argument
