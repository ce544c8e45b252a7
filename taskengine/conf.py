"""The ``TASKENGINE`` settings dict, with defaults.

Read values through ``engine_settings.NAME``. The cache is dropped on Django's
``setting_changed`` signal, so ``override_settings(TASKENGINE=...)`` works in tests.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Database alias the engine's own queries run on (the backend's OPTIONS["database"]
    # wins for enqueue).
    "DATABASE": "default",
    # Lease: how long a claimed job belongs to its worker without a heartbeat.
    "LEASE_SECONDS": 30.0,
    # How often a worker extends the leases of its running jobs (and its own row).
    "HEARTBEAT_SECONDS": 5.0,
    # Retry policy defaults; a task overrides them with @task(max_attempts=..., ...).
    "MAX_ATTEMPTS": 3,
    "RETRY_BACKOFF_SECONDS": 2.0,
    "RETRY_BACKOFF_MAX_SECONDS": 3600.0,
    "RETRY_JITTER": 0.2,
    # Default handler timeout in seconds (None: no timeout).
    "TIMEOUT_SECONDS": None,
    # Polling backoff when idle (LISTEN/NOTIFY wakes the worker earlier on Postgres).
    "POLL_BACKOFF_BASE": 0.05,
    "POLL_MAX_BACKOFF": 2.0,
    # SIGTERM: how long in-flight jobs may run before they are released.
    "SHUTDOWN_GRACE_SECONDS": 25.0,
    # Claim through pg_try_advisory_xact_lock instead of FOR UPDATE SKIP LOCKED.
    "USE_ADVISORY_LOCKS": False,
    # Never LISTEN (PgBouncer in transaction mode drops LISTEN); poll instead.
    "POLL_ONLY": False,
    "NOTIFY_CHANNEL": "taskengine_jobs",
    # How long after its last heartbeat a worker counts as dead.
    "WORKER_DEAD_AFTER_SECONDS": 60.0,
    # Terminal jobs older than this many days are pruned by retention (None: keep).
    "RETENTION_DAYS": {"succeeded": 7, "failed": 30, "cancelled": 30},
    # Periodic schedules defined in settings, synced on worker start.
    "SCHEDULES": {},
    # "text" or "json".
    "LOG_FORMAT": "text",
    # /metrics database gauges (taskengine.collectors): seconds a reading is reused, so
    # frequent or parallel scrapes cost one set of queries.
    "METRICS_CACHE_SECONDS": 5.0,
    # Queue depth is counted exactly up to this many jobs per queue; deeper queues
    # report the PostgreSQL planner's estimate (SQLite: the cap).
    "METRICS_DEPTH_EXACT_LIMIT": 10000,
    # At most this many queues get per-queue gauges (bounded label cardinality).
    "METRICS_MAX_QUEUES": 50,
    # Callable path: (user) -> iterable of tenant names a staff user may see, or None
    # to use TenantMembership rows.
    "TENANT_RESOLVER": None,
}


class EngineSettings:
    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._cache is None:
            user = getattr(settings, "TASKENGINE", {}) or {}
            unknown = set(user) - set(DEFAULTS)
            if unknown:
                from django.core.exceptions import ImproperlyConfigured

                raise ImproperlyConfigured(
                    f"Unknown TASKENGINE setting(s): {', '.join(sorted(unknown))}. "
                    f"Known: {', '.join(sorted(DEFAULTS))}."
                )
            self._cache = {**DEFAULTS, **user}
        return self._cache

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._load()
        if name not in values:
            raise AttributeError(f"Unknown TASKENGINE setting {name!r}")
        return values[name]

    def reload(self) -> None:
        self._cache = None


engine_settings = EngineSettings()


@receiver(setting_changed)
def _reload_engine_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKENGINE":
        engine_settings.reload()
