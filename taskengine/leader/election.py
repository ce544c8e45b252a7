"""Leader election through the database (see docs/leadership.md).

One ``taskengine_leader`` row per election name holds ``holder``, a ``term`` that only
ever grows, and ``expires_at`` on the database clock. A candidate acquires the row when
it is absent or expired (term + 1); the leader renews it by compare-and-set on
(holder, term); a clean shutdown resigns it. No session-level lock is held anywhere, so
this works through PgBouncer in transaction mode and on SQLite.

Invariants:
- Trust window. The elector acts as leader only while ``sent + TTL − margin`` lies in
  the future on the local monotonic clock, where ``sent`` is when the last successful
  acquire/renew was *sent*. The database set ``expires_at = now() + TTL`` at some
  instant after ``sent``, so the local window closes before the row expires; a renew
  that answers late does not stretch trust past what was measured before sending it.
- Step down when unsure. A renew that changes no row means someone else holds the term:
  the elector steps down at once. A renew that fails (database error) leaves trust to
  run out at the end of the window; it then steps down and stops acting.
- Fencing. Every maintenance write carries the lease (election, holder, term) and checks
  it in the same statement or transaction (``leader_fence``), so a deposed leader that
  still believes it leads (paused, partitioned) changes nothing.
- Failover bound: a dead leader's row expires at most TTL after its last renew, and a
  follower tries to acquire every renew interval, so a successor acts within
  TTL + renew interval (+ one database round trip) of the death.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import Error as DatabaseError
from django.db import connections, transaction

from taskengine.conf import engine_settings
from taskengine.db.queries import sql
from taskengine.observability import metrics
from taskengine.store import to_datetime

logger = logging.getLogger("taskengine.leadership")

ELECTION = "maintenance"


class NotLeader(Exception):
    """The lease a maintenance write carried is no longer the live leader's."""


@dataclass(frozen=True, slots=True)
class LeaderLease:
    """What a leader presents with every maintenance write."""

    election: str
    holder: str
    term: int

    def params(self) -> dict[str, Any]:
        return {"election": self.election, "holder": self.holder, "term": self.term}


NO_LEASE_PARAMS: dict[str, Any] = {"election": None, "holder": None, "term": None}


def lease_params(lease: LeaderLease | None) -> dict[str, Any]:
    """SQL parameters of ``lease``; all NULL for an unfenced (operator) call."""
    return lease.params() if lease is not None else dict(NO_LEASE_PARAMS)


@contextmanager
def fenced_transaction(database: str, lease: LeaderLease) -> Iterator[None]:
    """A transaction that holds the leader row for ``lease`` (FOR SHARE on Postgres,
    the single write lock on SQLite) or raises NotLeader. Writes inside it are fenced:
    no takeover can commit until this transaction ends."""
    connection = connections[database]
    with transaction.atomic(using=database):
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, "leader_fence"), lease.params())
            if cursor.fetchone() is None:
                raise NotLeader(f"term {lease.term} of {lease.holder} is not the live leader")
        yield


def current_leader(database: str, election: str = ELECTION) -> dict[str, Any] | None:
    """{holder, term, expires_at, live} of the election's row, or None (read-only)."""
    connection = connections[database]
    with connection.cursor() as cursor:
        cursor.execute(sql(connection, "leader_current"), {"election": election})
        row = cursor.fetchone()
    if row is None:
        return None
    return {"holder": row[0], "term": row[1], "expires_at": to_datetime(row[2]), "live": bool(row[3])}


class Elector:
    """One candidate in an election. ``step()`` is one round (acquire or renew) and is
    what tests call; ``start()`` runs rounds on a thread every renew interval."""

    def __init__(
        self,
        database: str,
        holder: str,
        *,
        election: str = ELECTION,
        ttl: float | None = None,
        renew_every: float | None = None,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        s = engine_settings
        self.database = database
        self.holder = holder
        self.election = election
        self.ttl = float(ttl if ttl is not None else s.LEADER_TTL_SECONDS)
        self.renew_every = float(renew_every if renew_every is not None else s.LEADER_RENEW_SECONDS)
        self.margin = float(margin if margin is not None else s.LEADER_SAFETY_MARGIN_SECONDS)
        if not 0 < self.renew_every < self.ttl - self.margin:
            raise ValueError(
                f"leader renew interval ({self.renew_every}s) must be positive and shorter than "
                f"TTL − safety margin ({self.ttl}s − {self.margin}s)"
            )
        self.clock = clock
        self._term: int | None = None
        self._trusted_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db_error = False

    # --- state -----------------------------------------------------------------------

    def lease(self) -> LeaderLease | None:
        """The lease to act under, or None when this candidate must not act."""
        with self._lock:
            if self._term is None:
                return None
            if self.clock() >= self._trusted_until:
                self._step_down_locked("trust window ended without a successful renew")
                return None
            return LeaderLease(self.election, self.holder, self._term)

    @property
    def is_leader(self) -> bool:
        return self.lease() is not None

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"election": self.election, "holder": self.holder, "ttl": self.ttl, **more}

    def _run(self, name: str, params: dict[str, Any]) -> int | None:
        connection = connections[self.database]
        with connection.cursor() as cursor:
            cursor.execute(sql(connection, name), params)
            rows = cursor.fetchall()
        return int(rows[0][0]) if rows else None

    # --- one round -------------------------------------------------------------------

    def step(self) -> bool:
        """Renew if leading, else try to acquire. Returns whether we lead afterwards.
        Database errors propagate; trust then runs out on its own."""
        lease = self.lease()
        sent = self.clock()
        if lease is not None:
            renewed = self._run("leader_renew", self._params(term=lease.term))
            with self._lock:
                if renewed is None:
                    self._step_down_locked(f"term {lease.term} was taken over or expired")
                elif self._term == lease.term:
                    self._trusted_until = sent + self.ttl - self.margin
                    return True
                else:
                    return False  # resigned meanwhile
        acquired = self._run("leader_acquire", self._params())
        if acquired is None:
            return False
        with self._lock:
            self._term = acquired
            self._trusted_until = sent + self.ttl - self.margin
        logger.warning(
            "became leader of %r with term %d (ttl %.1fs, renew every %.1fs)",
            self.election,
            acquired,
            self.ttl,
            self.renew_every,
            extra={"worker_id": self.holder},
        )
        return True

    def resign(self) -> None:
        """Give up leadership at once (clean shutdown). Best effort."""
        with self._lock:
            term, self._term = self._term, None
        if term is None:
            return
        try:
            self._run("leader_resign", self._params(term=term))
            logger.warning("resigned leadership of %r (term %d)", self.election, term, extra={"worker_id": self.holder})
        except DatabaseError as exc:
            logger.warning(
                "could not resign term %d (%s); it expires on its own", term, exc, extra={"worker_id": self.holder}
            )

    def _step_down_locked(self, reason: str) -> None:
        if self._term is not None:
            logger.warning(
                "stepped down as leader of %r (term %d): %s",
                self.election,
                self._term,
                reason,
                extra={"worker_id": self.holder},
            )
        self._term = None
        self._trusted_until = 0.0

    # --- thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="taskengine-elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.resign()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._round()
                self._stop.wait(self._next_wait())
        finally:
            connections[self.database].close()

    def _round(self) -> None:
        try:
            self.step()
        except DatabaseError as exc:
            metrics.DB_ERRORS.labels("leadership").inc()
            if not self._db_error:
                logger.error(
                    "leader election failed (%s); retrying, trust runs out on its own",
                    exc,
                    extra={"worker_id": self.holder},
                )
            self._db_error = True
            try:
                connections[self.database].close()
            except DatabaseError:
                pass
            return
        if self._db_error:
            logger.warning("leader election reaches the database again", extra={"worker_id": self.holder})
            self._db_error = False

    def _next_wait(self) -> float:
        """Renew every interval; while leading, also wake at the end of the trust
        window so a leader that cannot renew notices and steps down on time."""
        with self._lock:
            if self._term is None:
                return self.renew_every
            return max(0.0, min(self.renew_every, self._trusted_until - self.clock()))
