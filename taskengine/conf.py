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
    # Sync handler threads that ignored an interrupt (timeout, cancellation, lost lease)
    # for the 2-second grace and still run ("stuck") a worker tolerates. Their jobs stay
    # leased and their slots taken while they run; past this many the worker drains and
    # exits with status 3 so that its supervisor starts a fresh process. None: half the
    # worker's concurrency, rounded down (0 at concurrency 1) — replaced once more than
    # half its slots are held by handlers that will not stop.
    "MAX_STUCK_THREADS": None,
    # Claim through pg_try_advisory_xact_lock instead of FOR UPDATE SKIP LOCKED.
    "USE_ADVISORY_LOCKS": False,
    # PgBouncer in transaction mode: never LISTEN (poll instead), never prepare a
    # statement or SET a session setting (the next transaction may be another session).
    "POLL_ONLY": False,
    # PostgreSQL: write finished attempts on a second connection, from a thread of the
    # worker's own (taskengine/runtime/completer.py), while the loop claims on its connection.
    # SQLite (one writer) always writes them on the loop's connection.
    "COMPLETER": True,
    # How long after its last heartbeat a worker counts as dead: the leader marks it
    # dead and recovers its running jobs without waiting for their leases. Keep it well
    # above HEARTBEAT_SECONDS (a live worker must never look dead).
    "WORKER_DEAD_AFTER_SECONDS": 60.0,
    # Rows of stopped/dead workers are deleted this long after their last heartbeat.
    "WORKER_PRUNE_AFTER_SECONDS": 7 * 86400.0,
    # Leader election (docs/leadership.md). The leader's row lives LEADER_TTL_SECONDS
    # after each renew; it renews every LEADER_RENEW_SECONDS and trusts itself only
    # until (local time the renew was sent + TTL - LEADER_SAFETY_MARGIN_SECONDS).
    # Failover bound after a leader dies: TTL + renew interval. Needs
    # 0 < RENEW < TTL - MARGIN.
    "LEADER_TTL_SECONDS": 15.0,
    "LEADER_RENEW_SECONDS": 5.0,
    "LEADER_SAFETY_MARGIN_SECONDS": 2.0,
    # Leader-only maintenance cadence: recovery + dead workers every
    # MAINTENANCE_INTERVAL_SECONDS, schedules every SCHEDULER_INTERVAL_SECONDS,
    # retention every RETENTION_INTERVAL_SECONDS.
    "MAINTENANCE_INTERVAL_SECONDS": 5.0,
    "SCHEDULER_INTERVAL_SECONDS": 1.0,
    "RETENTION_INTERVAL_SECONDS": 300.0,
    # PostgreSQL: the leader vacuums (VACUUM (SKIP_LOCKED, ANALYZE)) the job table and
    # the attempt table once one has VACUUM_DEAD_TUPLES dead tuples, looking every
    # VACUUM_INTERVAL_SECONDS, unless a vacuum is already at work on it
    # (leader/vacuum.py). None: never; autovacuum alone keeps them.
    "VACUUM_DEAD_TUPLES": 10000,
    "VACUUM_INTERVAL_SECONDS": 10.0,
    # ... paced as autovacuum is: the VACUUM sleeps this many milliseconds after each
    # vacuum_cost_limit's worth of page work (PostgreSQL's autovacuum_vacuum_cost_delay
    # default). None or 0: full speed. Not applied behind PgBouncer (POLL_ONLY).
    "VACUUM_COST_DELAY_MS": 2.0,
    # Most running jobs one recovery statement takes.
    "RECOVERY_BATCH_SIZE": 500,
    # Retention deletes at most RETENTION_BATCH_SIZE jobs per transaction and
    # RETENTION_MAX_BATCHES transactions per state per run.
    "RETENTION_BATCH_SIZE": 1000,
    "RETENTION_MAX_BATCHES": 10,
    # A schedule slot due less than this long ago is on time and always enqueued; older
    # unenqueued slots are misfires, handled by the schedule's misfire policy.
    "SCHEDULE_MISFIRE_GRACE_SECONDS": 60.0,
    # reconcile: a queued job whose run_after is older than this is reported as stale,
    # and a schedule whose next slot has been due this long without a job as overdue.
    "STALE_QUEUED_SECONDS": 600.0,
    # reconcile: how far back schedule slots are checked for gaps and duplicates. Keep it
    # below the shortest RETENTION_DAYS, or pruned jobs would read as missed slots.
    "RECONCILE_SLOT_LOOKBACK_SECONDS": 86400.0,
    # Terminal jobs older than this many days are pruned by retention (None: keep).
    "RETENTION_DAYS": {"succeeded": 7, "failed": 30, "cancelled": 30},
    # Periodic schedules defined in settings, validated when a leader-eligible worker
    # starts (a bad entry stops it with a clear error) and synced into Schedule rows
    # (from_settings=True) by the leader; entries removed here are disabled, not deleted.
    # {"name": {"task": "app.tasks.fn",            # import path of a @task (required)
    #           "cron": "*/5 * * * *",            # or "interval": seconds (one of both)
    #           "timezone": "Europe/Paris",       # IANA zone of the slots (default "UTC")
    #           "args": [], "kwargs": {}, "queue": "default", "priority": 0,
    #           "tenant": None, "enabled": True,
    #           "misfire_policy": "run_once",     # skip | run_once | catch_up
    #           "catch_up_limit": 10}}            # most missed slots catch_up runs
    "SCHEDULES": {},
    # Queues declared in settings (docs/queues.md): {"emails": {"paused": False}}. Their
    # rows are created when a worker starts; a change of a declared "paused" is applied
    # once (then an operator's pause or resume stands until the next change of either).
    "QUEUES": {},
    # PostgreSQL: a single enqueue() outside a transaction sends its INSERT through
    # libpq's own blocking call instead of psycopg's cursor (db/postgresql/libpq.py).
    # Off by default: it re-implements parameter encoding, re-preparation and locking,
    # and django-prometheus's database counters do not see its statements
    # (docs/performance.md has the measured gain, docs/observability.md the counters).
    "LIBPQ_FAST_PATH": False,
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
        self.generation = 0  # grows on every reload, for caches of values derived from settings

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
        self.generation += 1


engine_settings = EngineSettings()


@receiver(setting_changed)
def _reload_engine_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "TASKENGINE":
        engine_settings.reload()


def dedicated_queue_problem(queue: str, tenant: str | None) -> str | None:
    """Why a job of ``tenant`` may not go into ``queue``, or None. A queue the settings
    dedicate to a tenant (``TASKENGINE["QUEUES"][queue]["tenant"]``) takes that tenant's
    jobs only: its tenant's operators may pause it (docs/queues.md), and must not halt
    jobs they cannot see. Enqueue checks it once per task object and settings (the job
    template) and a schedule at its definition; the entry itself is checked by
    taskengine.E007."""
    declared = engine_settings.QUEUES
    options = declared.get(queue) if isinstance(declared, dict) else None
    dedicated_to = options.get("tenant") if isinstance(options, dict) else None
    if dedicated_to is None or dedicated_to == tenant:
        return None
    whose = f"tenant {tenant!r}" if tenant is not None else "no tenant"
    return (
        f'queue {queue!r} is dedicated to tenant {dedicated_to!r} (TASKENGINE["QUEUES"]); '
        f"a job of {whose} cannot be enqueued into it"
    )
