"""reconcile: find inconsistencies between what the engine's tables say and what must
hold, report them, and — only when asked — fix them.

``report()`` only reads (GET-safe: zero writes). ``apply()`` makes each category's
explicit fixes; every fix is a compare-and-set write (or an insert-if-absent on a
unique index) with its audit row in the same transaction, so two reconciles at once do
each fix once, a second apply changes nothing, and a failure rolls back only the fix in
flight. Both need the migration gate open: with migrations pending the report holds
only the gate (no query touches a half-migrated table) and ``apply()`` refuses.

Categories (see docs/reconcile.md): expired_leases, dead_worker_jobs, stale_queued_jobs,
blocked_unique_keys (jobs.py); missed_slots, duplicate_slots, overdue_schedules
(slots.py); user_id_str_mismatch, user_id_str_missing (userids.py); plus the
migration_gate finding. Job-, schedule- and log-level reads and fixes are scoped to
``tenants`` (None: every tenant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from taskengine.ops.reconcile import jobs, slots, status, userids
from taskengine.ops.reconcile.base import SYSTEM_ACTOR, Applied, Check, Context, Finding

CHECKS: list[Check] = [*jobs.CHECKS, *slots.CHECKS, *userids.CHECKS]
BY_NAME: dict[str, Check] = {check.name: check for check in CHECKS}
CATEGORIES: list[str] = [check.name for check in CHECKS]
FIXABLE: list[str] = [check.name for check in CHECKS if check.fix is not None]
GATE_CATEGORY = "migration_gate"

__all__ = ["CATEGORIES", "FIXABLE", "SYSTEM_ACTOR", "Applied", "Finding", "GateClosed", "Report", "apply", "report"]


class GateClosed(Exception):
    """apply() refused: the database is not at the head of the migrations."""


@dataclass
class Report:
    gate: dict[str, Any]
    leader: dict[str, Any] | None
    workers: list[dict[str, Any]]
    findings: list[Finding]
    applied: list[Applied] | None = field(default=None)

    @property
    def found(self) -> int:
        """Total count over all findings (0: nothing to report)."""
        return sum(f.count for f in self.findings)

    def finding(self, category: str) -> Finding:
        return next(f for f in self.findings if f.category == category)

    def as_dict(self) -> dict[str, Any]:
        data = {
            "gate": self.gate,
            "leader": self.leader,
            "workers": self.workers,
            "findings": [f.as_dict() for f in self.findings],
        }
        if self.applied is not None:
            data["applied"] = [a.as_dict() for a in self.applied]
        return data


def _selected(categories: Iterable[str] | None) -> list[Check]:
    if categories is None:
        return list(CHECKS)
    wanted = list(dict.fromkeys(categories))
    unknown = [name for name in wanted if name not in BY_NAME]
    if unknown:
        raise ValueError(
            f"unknown reconcile categor{'y' if len(unknown) == 1 else 'ies'}: "
            f"{', '.join(unknown)} (known: {', '.join(CATEGORIES)})"
        )
    return [BY_NAME[name] for name in wanted]


def _gate_finding(gate: dict[str, Any]) -> Finding:
    closed = not gate["ready"]
    return Finding(
        GATE_CATEGORY,
        int(closed),
        [*gate["pending"], *gate["unknown_applied"]] if closed else [],
        "none (report only): run `manage.py migrate` (or fix the migration graph); while "
        "the gate is closed reconcile checks nothing else and --apply refuses",
        "The database is not at the head of the code's migrations.",
        fixable=False,
        detail={"reason": gate.get("reason", "")} if closed else {},
    )


def _noop(message: str) -> None:
    pass


def report(
    database: str = "default",
    *,
    tenants: list[str] | None = None,
    categories: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
    sample_size: int = 10,
) -> Report:
    """Read-only: the gate, the leader, the workers and one finding per category."""
    checks = _selected(categories)
    gate = status.gate_state(database)
    findings = [_gate_finding(gate)]
    if not gate["ready"]:
        return Report(gate, None, [], findings)
    ctx = Context(database, tenants, progress=progress or _noop, sample_size=sample_size)
    for check in checks:
        ctx.progress(f"checking {check.name}")
        findings.append(check.inspect(ctx, check))
    return Report(gate, status.leader(ctx), status.workers(ctx), findings)


def apply(
    database: str = "default",
    *,
    categories: Iterable[str] | None = None,
    actor: Any = SYSTEM_ACTOR,
    tenants: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int = 500,
) -> list[Applied]:
    """Make the fixes of the selected (default: all) fixable categories; returns what
    this call changed — rows another reconcile fixed first are not counted."""
    checks = [check for check in _selected(categories) if check.fix is not None]
    gate = status.gate_state(database)
    if not gate["ready"]:
        raise GateClosed(gate.get("reason") or "migrations are not at head")
    ctx = Context(database, tenants, actor=actor, progress=progress or _noop, batch_size=batch_size)
    applied = []
    for check in checks:
        ctx.progress(f"applying {check.name}")
        assert check.fix is not None  # selected above
        applied.append(check.fix(ctx))
    return applied
