"""System checks for taskengine (``manage.py check``), with stable ids and hints.

Settings checks (no database access; run by every command that runs checks):

- ``taskengine.E002`` LEASE_SECONDS shorter than three HEARTBEAT_SECONDS (a single late
  heartbeat would let another worker reclaim a job that is still running).
- ``taskengine.W004`` the engine's database is SQLite while ``DEBUG=False`` (one writer at a
  time; fine for a laptop, not for production).
- ``taskengine.W005`` ``TASKS["default"]`` is not taskengine's ``DatabaseBackend``.
- ``taskengine.E006`` a ``TASKENGINE["SCHEDULES"]`` entry that is invalid (one error per
  entry, with the message a leader-eligible ``runworker`` would exit with): a bad cron
  or interval, time zone, task path, queue, name, tenant or priority (enqueue's limits), or
  arguments enqueue would refuse.
- ``taskengine.E007`` a ``TASKENGINE["QUEUES"]`` entry ``runworker`` would refuse (an
  unknown option, a ``paused`` that is not a bool, a bad name or tenant).

Deployment checks (``manage.py check --deploy``; settings only, no database access). They
look at every database the engine uses: ``TASKENGINE["DATABASE"]`` and the
``OPTIONS["database"]`` of each ``TASKS`` entry that is taskengine's backend:

- ``taskengine.E003`` a SQLite database without ``OPTIONS["transaction_mode"] = "IMMEDIATE"``.
  The claim reads, then writes: in SQLite's default DEFERRED mode two such transactions
  can each hold a read lock and then fail to upgrade it ("database is locked") instead of
  queueing for the one write lock at BEGIN.
- ``taskengine.E004`` ``TASKS["default"]`` enqueues on another database than
  ``TASKENGINE["DATABASE"]`` (where ``runworker``, the leader and the console look), or an
  engine database alias that ``DATABASES`` lacks.
- ``taskengine.W006`` ``POLL_ONLY`` is off while a PostgreSQL database's port is a known
  pooler port (6432, PgBouncer's): through a pooler in transaction mode LISTEN never
  wakes a worker and prepared statements break (a Warning: session mode is fine).
- ``taskengine.E005`` a ``CONN_MAX_AGE`` Django refuses for a worker's connections: not
  ``None`` or a number of seconds >= 0, or non-zero together with Django's own pool
  (``OPTIONS["pool"]``, "Pooling doesn't support persistent connections"): ``runworker``
  could neither claim nor LISTEN.

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

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .queues import declared_queues

if TYPE_CHECKING:
    from .gate import GateStatus

BACKEND_PATH = "taskengine.backend.DatabaseBackend"
SQLITE_ENGINES = ("sqlite3", "sqlite")
POSTGRES_ENGINES = ("postgresql", "postgresql_psycopg2", "postgis")
# Ports a connection pooler listens on by convention (PgBouncer's default).
POOLER_PORTS = frozenset({6432})


@register("taskengine")
def check_lease_and_heartbeat(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import engine_settings

    lease, heartbeat = engine_settings.LEASE_SECONDS, engine_settings.HEARTBEAT_SECONDS
    try:
        too_short = float(lease) < 3 * float(heartbeat)
    except (TypeError, ValueError):
        return [
            Error(
                f"TASKENGINE LEASE_SECONDS ({lease!r}) and HEARTBEAT_SECONDS ({heartbeat!r}) must be numbers.",
                hint="Set both to a number of seconds, e.g. LEASE_SECONDS=30 and HEARTBEAT_SECONDS=5.",
                id="taskengine.E002",
            )
        ]
    if not too_short:
        return []
    return [
        Error(
            f"TASKENGINE LEASE_SECONDS ({lease}) is shorter than three HEARTBEAT_SECONDS ({heartbeat}).",
            hint="One late heartbeat would let another worker reclaim a running job. "
            f"Raise LEASE_SECONDS to at least {3 * float(heartbeat):g} or lower HEARTBEAT_SECONDS.",
            id="taskengine.E002",
        )
    ]


@register("taskengine")
def check_queue_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        declared_queues()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint='Each entry of TASKENGINE["QUEUES"] is {"paused": bool, "tenant": str | None} (docs/queues.md).',
                id="taskengine.E007",
            )
        ]
    return []


@register("taskengine")
def check_sqlite_in_production(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import engine_settings

    alias = engine_settings.DATABASE
    engine = settings.DATABASES.get(alias, {}).get("ENGINE", "")
    if settings.DEBUG or not engine.endswith(SQLITE_ENGINES):
        return []
    return [
        Warning(
            f"taskengine runs on SQLite (database {alias!r}) with DEBUG=False.",
            hint="SQLite allows one writer at a time and has no LISTEN/NOTIFY: use PostgreSQL in "
            "production (DATABASE_URL=postgres://...).",
            id="taskengine.W004",
        )
    ]


@register("taskengine")
def check_settings_schedules(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    from django.core.exceptions import ImproperlyConfigured

    from .conf import engine_settings
    from .schedules import settings_schedules

    raw = engine_settings.SCHEDULES
    entries = [{name: entry} for name, entry in raw.items()] if isinstance(raw, Mapping) else [raw]
    messages: list[CheckMessage] = []
    for entry in entries:
        try:
            settings_schedules(entry)
        except ImproperlyConfigured as exc:
            messages.append(
                Error(
                    str(exc),
                    hint="Correct the entry: a leader-eligible runworker refuses to start with it.",
                    id="taskengine.E006",
                )
            )
    return messages


@register("taskengine")
def check_tasks_backend(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    path = (getattr(settings, "TASKS", {}) or {}).get("default", {}).get("BACKEND", "")
    if path == BACKEND_PATH or _is_engine_backend(path):
        return []
    return [
        Warning(
            f"TASKS['default'] uses {path or 'no backend'!r}, not taskengine's backend: "
            "tasks enqueued through django.tasks will not reach runworker.",
            hint=f'Set TASKS = {{"default": {{"BACKEND": "{BACKEND_PATH}"}}}}.',
            id="taskengine.W005",
        )
    ]


def _is_engine_backend(path: str) -> bool:
    try:
        backend = import_string(path)
        engine_backend = import_string(BACKEND_PATH)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, engine_backend)


@register(Tags.database, "taskengine")
def check_migration_state(
    app_configs: Sequence[AppConfig] | None = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    if not databases:
        return []
    from . import gate

    messages: list[CheckMessage] = []
    for alias in databases:
        messages.extend(_migration_messages(gate.status(alias)))
    return messages


def _migration_messages(status: GateStatus) -> list[CheckMessage]:
    alias = status.alias
    messages: list[CheckMessage] = []
    if status.error:
        messages.append(
            Warning(
                f"Cannot read the migration state of database {alias!r}: {status.error}",
                hint="Check DATABASE_URL and that the database server is up; workers wait until it is.",
                id="taskengine.W003",
            )
        )
    for app, leaves in sorted(status.conflicts.items()):
        messages.append(
            Error(
                f"Conflicting migrations in app {app!r}: leaf nodes {', '.join(leaves)}.",
                hint="Run `manage.py makemigrations --merge` and commit the merge migration.",
                id="taskengine.E001",
            )
        )
    if status.unknown_applied:
        messages.append(
            Warning(
                f"Database {alias!r} is ahead of the code: applied migrations unknown to the code: "
                f"{', '.join(status.unknown_applied)}.",
                hint="Deploy the code that has these migrations, or migrate backwards with that code "
                "before rolling back (docs/upgrading.md). Workers will not start meanwhile.",
                id="taskengine.W002",
            )
        )
    if status.pending:
        messages.append(
            Warning(
                f"{len(status.pending)} migration(s) pending on database {alias!r}: {', '.join(status.pending)}.",
                hint=f"Run `manage.py migrate --database {alias}`; workers wait until it has run.",
                id="taskengine.W001",
            )
        )
    return messages


# --- deployment checks ---------------------------------------------------------------


@register("taskengine", deploy=True)
def check_deployment_databases(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import engine_settings

    return deployment_messages(
        settings.DATABASES,
        getattr(settings, "TASKS", {}) or {},
        engine_database=engine_settings.DATABASE,
        poll_only=engine_settings.POLL_ONLY,
    )


def deployment_messages(
    databases: dict[str, dict[str, Any]], tasks: dict[str, dict[str, Any]], *, engine_database: str, poll_only: bool
) -> list[CheckMessage]:
    """The deployment checks over plain settings values (so each is testable alone)."""
    aliases = engine_aliases(tasks, engine_database)
    messages = _alias_messages(databases, tasks, aliases, engine_database)
    for alias in aliases:
        if alias in databases:
            messages.extend(_database_messages(alias, databases[alias], poll_only=poll_only))
    return messages


def engine_aliases(tasks: dict[str, dict[str, Any]], engine_database: str) -> list[str]:
    """``TASKENGINE["DATABASE"]``, then each engine backend's database, without repeats."""
    aliases = [engine_database]
    for config in tasks.values():
        if _is_engine_backend(config.get("BACKEND", "")):
            alias = (config.get("OPTIONS") or {}).get("database", "default")
            if alias not in aliases:
                aliases.append(alias)
    return aliases


def _alias_messages(
    databases: dict[str, dict[str, Any]], tasks: dict[str, dict[str, Any]], aliases: list[str], engine_database: str
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for alias in aliases:
        if alias not in databases:
            messages.append(
                Error(
                    f"taskengine uses database {alias!r}, which DATABASES does not define.",
                    hint=f"Add {alias!r} to DATABASES, or point TASKENGINE['DATABASE'] and the TASKS "
                    "OPTIONS['database'] at a database that exists.",
                    id="taskengine.E004",
                )
            )
    default = tasks.get("default") or {}
    if _is_engine_backend(default.get("BACKEND", "")):
        enqueue_alias = (default.get("OPTIONS") or {}).get("database", "default")
        if enqueue_alias != engine_database:
            messages.append(
                Error(
                    f"TASKS['default'] enqueues on database {enqueue_alias!r} but TASKENGINE['DATABASE'] is "
                    f"{engine_database!r}: runworker, the leader and the console use {engine_database!r}, "
                    f"so jobs enqueued through django.tasks would wait on {enqueue_alias!r} unseen.",
                    hint=f"Set TASKENGINE = {{'DATABASE': {enqueue_alias!r}}} or TASKS['default']['OPTIONS'] = "
                    f"{{'database': {engine_database!r}}} (the same alias in both).",
                    id="taskengine.E004",
                )
            )
    return messages


def _database_messages(alias: str, database: dict[str, Any], *, poll_only: bool) -> list[CheckMessage]:
    engine = database.get("ENGINE", "")
    options = database.get("OPTIONS") or {}
    messages: list[CheckMessage] = []
    if engine.endswith(SQLITE_ENGINES):
        if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
            messages.append(
                Error(
                    f"taskengine's SQLite database {alias!r} does not begin transactions IMMEDIATE "
                    f"(transaction_mode is {options.get('transaction_mode', 'unset (DEFERRED)')!r}).",
                    hint=f'Set DATABASES[{alias!r}]["OPTIONS"] = {{"transaction_mode": "IMMEDIATE", "timeout": 30}}: '
                    "workers and enqueues then queue for SQLite's one write lock instead of failing with "
                    "'database is locked'.",
                    id="taskengine.E003",
                )
            )
        return messages
    if not engine.endswith(POSTGRES_ENGINES):
        return messages
    port = database.get("PORT") or options.get("port")
    if not poll_only and str(port).isdigit() and int(str(port)) in POOLER_PORTS:
        messages.append(
            Warning(
                f"Database {alias!r} is on port {port}, a connection pooler's (PgBouncer), and "
                "TASKENGINE['POLL_ONLY'] is off.",
                hint="Behind PgBouncer in transaction mode set TASKENGINE = {'POLL_ONLY': True} (no LISTEN, no "
                "prepared statements, no session SET), or point runworker at PostgreSQL itself. "
                "Session mode keeps LISTEN working: then this warning can be silenced with "
                "SILENCED_SYSTEM_CHECKS = ['taskengine.W006'].",
                id="taskengine.W006",
            )
        )
    messages.extend(_conn_max_age_messages(alias, database, options))
    return messages


def _conn_max_age_messages(alias: str, database: dict[str, Any], options: dict[str, Any]) -> list[CheckMessage]:
    max_age = database.get("CONN_MAX_AGE", 0)
    valid = max_age is None or (isinstance(max_age, (int, float)) and not isinstance(max_age, bool) and max_age >= 0)
    if not valid:
        return [
            Error(
                f"CONN_MAX_AGE of database {alias!r} is {max_age!r}: Django needs None or a number of seconds >= 0.",
                hint="Use 0 (a connection per request, the default), a number of seconds, or None (keep "
                "connections); runworker keeps its own connections open either way.",
                id="taskengine.E005",
            )
        ]
    if options.get("pool") and max_age != 0:
        return [
            Error(
                f"CONN_MAX_AGE of database {alias!r} is {max_age!r} together with OPTIONS['pool']: Django "
                "refuses to open any connection (its pool does not support persistent connections), so "
                "runworker could neither claim jobs nor LISTEN.",
                hint=f'Set DATABASES[{alias!r}]["CONN_MAX_AGE"] = 0 while OPTIONS["pool"] is set, or drop the pool.',
                id="taskengine.E005",
            )
        ]
    return []
