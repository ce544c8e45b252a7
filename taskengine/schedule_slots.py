"""Schedule slot arithmetic: which instants are a schedule's slots. No I/O, no settings.

A schedule has either a cron expression (parsed by croniter, evaluated in the
schedule's IANA time zone, so DST is honoured by Vixie cron's convention — see
``cron_slot_kept``) or a fixed interval in seconds. Interval slots are the multiples of
the interval since midnight 1970-01-01 in the schedule's time zone (one fixed instant),
so every node computes the same slots. Slots are aware UTC datetimes; the database keeps
one job per (schedule, slot) through a unique index. The leader's scheduler
(maintenance/schedules.py), the console's "next slots" and the reconciliation of missed
slots all use these functions, so they agree on every slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter


class SlotFields(Protocol):
    """What slots depend on: a Schedule row, or a settings definition read into one."""

    @property
    def cron(self) -> str | None: ...
    @property
    def interval_seconds(self) -> int | None: ...
    @property
    def timezone(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SlotSpec:
    cron: str | None
    interval_seconds: int | None
    timezone: str = "UTC"

    @classmethod
    def of(cls, schedule: SlotFields) -> SlotSpec:
        return cls(schedule.cron or None, schedule.interval_seconds, schedule.timezone or "UTC")


def recent_slots(spec: SlotSpec, *, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
    """The newest ``limit`` slots in (after, until], oldest first, and whether older
    slots in that range were left out. Walks backwards from ``until``, so a long outage
    costs ``limit`` steps, not one per missed slot."""
    slots: list[datetime] = []
    for slot in _backwards(spec, until):
        if slot <= after:
            return slots[::-1], False
        if len(slots) == limit:
            return slots[::-1], True
        slots.append(slot)
    return slots[::-1], False


def interval_anchor(spec: SlotSpec) -> datetime:
    """Interval slots are ``anchor + k × interval``: midnight of 1970-01-01 in the
    schedule's time zone, so an hourly schedule in Asia/Kolkata (+05:30) runs on the
    local hour. The anchor is one fixed instant; DST does not move the grid."""
    return datetime(1970, 1, 1, tzinfo=ZoneInfo(spec.timezone or "UTC")).astimezone(UTC)


# Vixie cron's shorthands, by what they expand to (@hourly is a wildcard job).
_CRON_ALIASES = {
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


@dataclass(frozen=True, slots=True)
class CronRule:
    """What a cron expression's DST handling depends on."""

    zone: ZoneInfo
    time_of_day: bool  # minute and hour fields both fixed (neither starts with "*")
    minutes: frozenset[int] | None  # None: every minute
    hours: frozenset[int] | None  # None: every hour


@cache
def cron_rule(cron: str, timezone: str) -> CronRule:
    fields = _CRON_ALIASES.get(cron.strip().lower(), cron).split()
    minutes, hours = croniter(cron).expanded[:2]
    return CronRule(
        zone=ZoneInfo(timezone),
        time_of_day=not fields[0].startswith("*") and not fields[1].startswith("*"),
        # croniter's stubs say str; an expanded field is ["*"] or its ints.
        minutes=None if minutes == ["*"] else frozenset(minutes),  # type: ignore[arg-type]  # ints
        hours=None if hours == ["*"] else frozenset(hours),  # type: ignore[arg-type]  # ints
    )


def cron_slot_kept(rule: CronRule, slot: datetime) -> bool:
    """Whether an instant croniter produced is a slot, by Vixie cron's DST convention.

    A job at a time of day (fixed minute and hour) runs once per matching local day:
    when the clocks go back, a local time that occurs twice is a slot only at its first
    instant (the second has ``fold=1``); when they go forward, croniter moves a skipped
    time to the first valid instant after the gap, which is kept. A wildcard job (minute
    or hour field starting with ``*``) runs on elapsed time: both instants of a repeated
    local time are slots, and croniter's moved-to-after-the-gap instants — whose local
    time the expression does not name — are not.
    """
    local = slot.astimezone(rule.zone)
    if rule.time_of_day:
        return local.fold == 0
    return (rule.minutes is None or local.minute in rule.minutes) and (rule.hours is None or local.hour in rule.hours)


def _backwards(spec: SlotSpec, until: datetime) -> Iterator[datetime]:
    if spec.interval_seconds:
        step, anchor = spec.interval_seconds, interval_anchor(spec)
        k = math.floor((until - anchor).total_seconds() / step)
        while True:
            yield anchor + timedelta(seconds=k * step)
            k -= 1
    else:
        rule = cron_rule(spec.cron, spec.timezone)
        # croniter's get_prev is strictly before its start; start just after ``until``'s
        # whole second so a slot exactly at ``until`` is included. The second is added in
        # UTC: local wall-clock arithmetic drops ``fold`` and, inside a repeated hour,
        # would start the walk an hour early.
        start = (until.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)).astimezone(rule.zone)
        assert spec.cron is not None  # a schedule has a cron expression or an interval
        it = croniter(spec.cron, start)
        previous = None
        while True:
            slot = it.get_prev(datetime).astimezone(UTC)
            if slot != previous and cron_slot_kept(rule, slot):
                yield slot
            previous = slot


def next_slot(spec: SlotSpec, after: datetime) -> datetime:
    """The first slot strictly after ``after``."""
    if spec.interval_seconds:
        anchor = interval_anchor(spec)
        k = math.floor((after - anchor).total_seconds() / spec.interval_seconds) + 1
        return anchor + timedelta(seconds=k * spec.interval_seconds)
    assert spec.cron is not None  # a schedule has a cron expression or an interval
    rule = cron_rule(spec.cron, spec.timezone)
    it = croniter(spec.cron, after.astimezone(rule.zone))
    while True:
        slot = it.get_next(datetime).astimezone(UTC)
        if slot > after and cron_slot_kept(rule, slot):
            return slot
