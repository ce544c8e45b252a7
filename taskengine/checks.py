"""System checks for taskengine (``manage.py check``), with stable ids and hints.

Settings checks (no database access; run by every command that runs checks):

- ``taskengine.E002`` LEASE_SECONDS shorter than three HEARTBEAT_SECONDS (a single late
  heartbeat would let another worker reclaim a job that is still running).
- ``taskengine.W004`` the engine's database is SQLite while ``DEBUG=False`` (one writer at a
  time; fine for a laptop, not for production).
- ``taskengine.W005`` ``TASKS["default"]`` is not taskengine's ``DatabaseBackend``.

Migration-state checks are tagged ``database``: Django runs them only when an alias is
named (``manage.py check --database default``, and ``migrate`` for its own alias), so a
plain ``manage.py check`` never touches the database. They read the same state as the gate
(``gate.status``; only ``django_migrations``):

- ``taskengine.E001`` conflicting migration leaves. An Error: ``migrate`` refuses them anyway,
  and ``makemigrations --merge`` (which passes no database) still runs.
- ``taskengine.W001`` pending migrations. A Warning, never an Error, because ``migrate`` runs
  these checks before it applies anything and must not be blocked by what it is about to fix.
- ``taskengine.W002`` the database is ahead of the code (applied migrations the code lacks).
- ``taskengine.W003`` the migration state could not be read (database unreachable).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

BACKEND_PATH = "taskengine.backend.DatabaseBackend"
SQLITE_ENGINES = ("sqlite3", "sqlite")


@register("taskengine")
def check_lease_and_heartbeat(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import engine_settings

    lease, heartbeat = engine_settings.LEASE_SECONDS, engine_settings.HEARTBEAT_SECONDS
    try:
        too_short = float(lease) < 3 * float(heartbeat)
    except (TypeError, ValueError):
        return [Error(
            f"TASKENGINE LEASE_SECONDS ({lease!r}) and HEARTBEAT_SECONDS ({heartbeat!r}) must be numbers.",
            hint="Set both to a number of seconds, e.g. LEASE_SECONDS=30 and HEARTBEAT_SECONDS=5.",
            id="taskengine.E002",
        )]
    if not too_short:
        return []
    return [Error(
        f"TASKENGINE LEASE_SECONDS ({lease}) is shorter than three HEARTBEAT_SECONDS ({heartbeat}).",
        hint="One late heartbeat would let another worker reclaim a running job. "
             f"Raise LEASE_SECONDS to at least {3 * float(heartbeat):g} or lower HEARTBEAT_SECONDS.",
        id="taskengine.E002",
    )]


@register("taskengine")
def check_sqlite_in_production(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import engine_settings

    alias = engine_settings.DATABASE
    engine = settings.DATABASES.get(alias, {}).get("ENGINE", "")
    if settings.DEBUG or not engine.endswith(SQLITE_ENGINES):
        return []
    return [Warning(
        f"taskengine runs on SQLite (database {alias!r}) with DEBUG=False.",
        hint="SQLite allows one writer at a time and has no LISTEN/NOTIFY: use PostgreSQL in "
             "production (DATABASE_URL=postgres://...).",
        id="taskengine.W004",
    )]


@register("taskengine")
def check_tasks_backend(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    path = (getattr(settings, "TASKS", {}) or {}).get("default", {}).get("BACKEND", "")
    if path == BACKEND_PATH or _is_engine_backend(path):
        return []
    return [Warning(
        f"TASKS['default'] uses {path or 'no backend'!r}, not taskengine's backend: "
        "tasks enqueued through django.tasks will not reach runworker.",
        hint=f'Set TASKS = {{"default": {{"BACKEND": "{BACKEND_PATH}"}}}}.',
        id="taskengine.W005",
    )]


def _is_engine_backend(path: str) -> bool:
    try:
        backend = import_string(path)
        engine_backend = import_string(BACKEND_PATH)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, engine_backend)


@register(Tags.database, "taskengine")
def check_migration_state(app_configs=None, databases: Iterable[str] | None = None,
                          **kwargs: Any) -> list[CheckMessage]:
    if not databases:
        return []
    from . import gate

    messages: list[CheckMessage] = []
    for alias in databases:
        messages.extend(_migration_messages(gate.status(alias)))
    return messages


def _migration_messages(status) -> list[CheckMessage]:
    alias, messages = status.alias, []
    if status.error:
        messages.append(Warning(
            f"Cannot read the migration state of database {alias!r}: {status.error}",
            hint="Check DATABASE_URL and that the database server is up; workers wait until it is.",
            id="taskengine.W003",
        ))
    for app, leaves in sorted(status.conflicts.items()):
        messages.append(Error(
            f"Conflicting migrations in app {app!r}: leaf nodes {', '.join(leaves)}.",
            hint="Run `manage.py makemigrations --merge` and commit the merge migration.",
            id="taskengine.E001",
        ))
    if status.unknown_applied:
        messages.append(Warning(
            f"Database {alias!r} is ahead of the code: applied migrations unknown to the code: "
            f"{', '.join(status.unknown_applied)}.",
            hint="Deploy the code that has these migrations, or migrate backwards with that code "
                 "before rolling back (docs/upgrading.md). Workers will not start meanwhile.",
            id="taskengine.W002",
        ))
    if status.pending:
        messages.append(Warning(
            f"{len(status.pending)} migration(s) pending on database {alias!r}: {', '.join(status.pending)}.",
            hint=f"Run `manage.py migrate --database {alias}`; workers wait until it has run.",
            id="taskengine.W001",
        ))
    return messages
