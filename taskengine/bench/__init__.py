"""The benchmark behind ``manage.py benchmark``, one module per figure:

- ``raw``: the machine's raw limits in the same run, by the project's own scripts
  (pgbench claim-and-finish, pgbench single insert, plain COPY), so results are read as
  ratios that survive noisy shared machines;
- ``drain``: throughput of real runworker processes — configured, as shipped (default
  concurrency and 32), with real work (``io``/``cpu``) against the ideal, long drains;
- ``latency``: enqueue→start latency to an idle worker, claim time versus table size;
- ``sustained``: a fixed-rate producer against a steady pool, per window;
- ``retention``: the engine's own pruning of many terminal jobs under claims;
- ``pgqueuer_drain``: pgqueuer's defaults draining the same no-op jobs in the same run
  (``--compare pgqueuer``; the optional package of the ``bench`` extra), by the program
  ``pgqueuer_consumer``.

All timings of jobs come from the database clock (enqueued_at, started_at,
finished_at; pgqueuer's log table for pgqueuer), never from this process. The benchmark works on its own queue
("benchmark" unless told otherwise) and deletes its own jobs when done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import RssSampler, database_url
from .drain import Drains, ideal_rate
from .latency import Latency
from .pgqueuer_drain import CompareRefused, PgqueuerDrain, require_pgqueuer
from .raw import RAW_CLAIM_BATCH, RAW_CLAIM_ROWS, RawLimits
from .retention import Retention
from .sustained import Sustained
from .tasks import noop, sleep_5ms, spin_1ms

__all__ = [
    "RAW_CLAIM_BATCH",
    "RAW_CLAIM_ROWS",
    "Benchmark",
    "CompareRefused",
    "Report",
    "RssSampler",
    "database_url",
    "ideal_rate",
    "noop",
    "require_pgqueuer",
    "sleep_5ms",
    "spin_1ms",
]


@dataclass
class Report:
    database: str
    jobs: int
    workers: int
    concurrency: int
    figures: dict[str, Any] = field(default_factory=dict)


class Benchmark(RawLimits, Drains, PgqueuerDrain, Latency, Sustained, Retention):
    """Every phase of ``manage.py benchmark`` on one database and queue."""
