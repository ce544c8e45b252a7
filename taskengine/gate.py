"""Migration gate: nothing runs against a schema that is not at the head of the code's migrations.

The gate for a database alias is *open* only when all three hold, computed the way
``showmigrations`` / ``migrate --plan`` compute them (Django's ``MigrationExecutor``):

1. the migration plan to the graph's leaf nodes is empty (nothing pending);
2. no app has two leaf nodes (conflicting "heads": ``makemigrations --merge`` fixes it);
3. no migration recorded in ``django_migrations`` for an app the code has migrations for is
   unknown to the code (the database is *ahead* of the code, e.g. after a code rollback).
   Rows of apps that are no longer installed are ignored, as ``migrate`` ignores them.

Invariants:

- The gate reads only ``django_migrations`` (through Django's ``MigrationRecorder``); it never
  queries taskengine's own tables, so it cannot fail with ``UndefinedColumn`` while a schema
  is half-migrated.
- No exception escapes ``status``/``is_ready``/``wait_until_ready``: an unreachable database or
  a broken migration module closes the gate and is reported in ``GateStatus.error``.
- An open gate is cached per alias for the life of the process (``reset()`` clears it), so
  a process that started against a ready schema keeps dispatching through a later deploy's
  ``migrate`` (deploys are expand/contract: see docs/upgrading.md). A closed gate is never
  cached: every call re-checks.

Which caller uses what:

- ``runworker`` -> ``wait_until_ready`` (live checks with backoff until open; then cached).
- maintenance tick -> ``is_ready`` (cached: free once open; a live check while closed);
  ``GateWatch`` wraps that with one log line per state change for any periodic loop.
- ``/readyz``, ``manage.py checkready`` -> ``is_ready`` for the decision, ``status`` for the reason.
- console banner, ``manage.py reconcile``, system checks -> ``status`` (always live).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from django.core.signals import setting_changed
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.dispatch import receiver

logger = logging.getLogger("taskengine.gate")

# wait_until_ready re-checks after 0.2s, doubling up to 2s between checks.
BACKOFF_START_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 2.0

_open: set[str] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class GateStatus:
    """Why the gate for ``alias`` is open or closed. ``pending`` and ``unknown_applied`` are
    ``"app.migration_name"`` strings in plan order; ``conflicts`` maps an app label to its
    leaf migration names; ``error`` is set when the state could not be read at all."""

    alias: str
    ready: bool
    pending: list[str] = field(default_factory=list)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    unknown_applied: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def reason(self) -> str:
        """One human line saying why the gate is closed ("" when open)."""
        if self.ready:
            return ""
        parts = []
        if self.error:
            parts.append(f"cannot read migration state of database {self.alias!r}: {self.error}")
        if self.conflicts:
            heads = "; ".join(f"{app}: {', '.join(names)}" for app, names in sorted(self.conflicts.items()))
            parts.append(f"conflicting migration leaves ({heads}); run `manage.py makemigrations --merge`")
        if self.unknown_applied:
            parts.append(
                f"database {self.alias!r} is ahead of the code; applied but unknown: {', '.join(self.unknown_applied)}"
            )
        if self.pending:
            parts.append(f"{', '.join(self.pending)} pending on database {self.alias!r}; run `manage.py migrate`")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


def status(alias: str = "default") -> GateStatus:
    """Read the migration state of ``alias`` now (never cached). Opens the cache when ready."""
    try:
        result = _read_status(alias)
    except Exception as exc:
        logger.debug("gate check on %r failed", alias, exc_info=True)
        _close_broken_connection(alias)
        detail = " ".join(str(exc).split())  # driver errors span lines; the reason is one line
        result = GateStatus(alias=alias, ready=False, error=f"{type(exc).__name__}: {detail}".rstrip(": "))
    if result.ready:
        with _lock:
            _open.add(alias)
    return result


def _read_status(alias: str) -> GateStatus:
    executor = MigrationExecutor(connections[alias])
    loader = executor.loader
    conflicts = {app: sorted(names) for app, names in loader.detect_conflicts().items()}
    known = set(loader.disk_migrations)
    for migration in loader.disk_migrations.values():
        known.update(migration.replaces or ())
    unknown = sorted(
        f"{app}.{name}"
        for app, name in loader.applied_migrations
        if app in loader.migrated_apps and (app, name) not in known
    )
    plan = executor.migration_plan(loader.graph.leaf_nodes())
    pending = [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]
    ready = not (pending or conflicts or unknown)
    return GateStatus(alias=alias, ready=ready, pending=pending, conflicts=conflicts, unknown_applied=unknown)


def _close_broken_connection(alias: str) -> None:
    """Drop a failed connection so the next check reconnects (never inside a transaction)."""
    try:
        connection = connections[alias]
        if not connection.in_atomic_block:
            connection.close()
    except Exception:
        pass


def is_ready(alias: str = "default", *, use_cache: bool = True) -> bool:
    """True when the gate for ``alias`` is open. Once true, cached (no query) unless
    ``use_cache=False``; while closed every call is a live check."""
    if use_cache and alias in _open:
        return True
    return status(alias).ready


def reset() -> None:
    """Forget every cached open gate (tests; settings changes)."""
    with _lock:
        _open.clear()


class StopEvent(Protocol):
    """What wait_until_ready needs of its ``stop``: a threading.Event, or runworker's
    signal-safe StartUpStop."""

    def wait(self, timeout: float | None = None) -> bool: ...


def wait_until_ready(alias: str = "default", *, timeout: float | None = None, stop: StopEvent | None = None) -> bool:
    """Block until the gate for ``alias`` opens; True when it does, False when ``timeout``
    seconds pass or ``stop`` is set first.

    Logs one "waiting for migrations: ..." warning, and another only when the reason
    changes (a pending list that merely shrinks while ``migrate`` runs is not a change);
    each re-check is a DEBUG line. Re-checks back off from 0.2s to 2s.
    """
    if alias in _open:
        return True
    deadline = None if timeout is None else time.monotonic() + timeout
    delay, logged, checks = BACKOFF_START_SECONDS, None, 0
    while True:
        current = status(alias)
        checks += 1
        if current.ready:
            if logged is not None:
                logger.info("migration gate open on database %r after %d checks", alias, checks)
            return True
        if not _same_reason(current, logged):
            logged = current
            logger.warning("waiting for migrations: %s", current.reason)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        pause = delay if remaining is None else min(delay, remaining)
        logger.debug("gate still closed on %r (check %d); next check in %.1fs", alias, checks, pause)
        if stop is not None:
            if stop.wait(pause):
                return False
        else:
            time.sleep(pause)
        delay = min(delay * 2, BACKOFF_MAX_SECONDS)


def _same_reason(current: GateStatus, logged: GateStatus | None) -> bool:
    """Whether ``current`` closes the gate for the reason already logged. A pending list
    that only shrank (a ``migrate`` in progress) is the same reason, not news."""
    if logged is None:
        return False
    return (
        current.error == logged.error
        and current.conflicts == logged.conflicts
        and current.unknown_applied == logged.unknown_applied
        and bool(current.pending) == bool(logged.pending)
        and set(current.pending) <= set(logged.pending)
    )


class GateWatch:
    """A periodic loop's view of the gate (maintenance ticks, schedulers): call ``is_open()``
    once per tick and skip the tick when it returns False.

    Uses ``is_ready`` (free once open; a live check each tick while closed) and logs one
    line per state change, never one per tick.
    """

    def __init__(self, alias: str = "default", *, what: str = "maintenance", log: logging.Logger | None = None) -> None:
        self.alias = alias
        self.what = what
        self.log = log or logger
        self._open: bool | None = None

    def is_open(self) -> bool:
        if is_ready(self.alias):
            if self._open is False:
                self.log.info("%s resumed: migration gate open on database %r", self.what, self.alias)
            self._open = True
            return True
        if self._open is not False:
            self.log.warning("%s paused until migrations are applied: %s", self.what, status(self.alias).reason)
        self._open = False
        return False


@receiver(setting_changed)
def _reset_on_setting_change(*, setting: str, **kwargs: Any) -> None:
    # A different migration graph or database means a different answer.
    if setting in {"MIGRATION_MODULES", "DATABASES", "INSTALLED_APPS"}:
        reset()
