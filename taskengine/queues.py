"""Queues as records: the queues the settings declare, their rows, and which are held.

A row per queue (``models.Queue``) holds whether it is paused (by whom, when, why), its
fleet-wide concurrency limit and rate limit (docs/queues.md). ``TASKENGINE["QUEUES"]``
declares queues and their options (``declared_queues`` checks them); a queue also gets a
row on first use (``ensure``). The claim (db/<vendor>/jobs.sql) drops paused queues
inside its own statement, so no worker keeps a copy of the paused set; ``held_among``
tells a polling worker to keep its idle waits short while a queue of its is held.

Changing a queue is an operator's write, in ``taskengine.ops``: ``queue_control`` (pause,
resume, limits, with permission and tenant scope), ``queue_settings`` (applying
``TASKENGINE["QUEUES"]``), both through ``queue_changes`` (the audited compare-and-set).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q

from taskengine import limits
from taskengine.conf import engine_settings
from taskengine.models import Queue
from taskengine.values import text_problem

# the keys a TASKENGINE["QUEUES"] entry may have
SETTING_KEYS = frozenset({"paused", "tenant", "concurrency", "rate"})


MAX_NAME_LENGTH = 64  # Job.queue's length


PAUSED_POLL_SECONDS = 0.5  # a polling worker's longest idle wait while one of its queues is paused


def declared_queues() -> dict[str, dict[str, Any]]:
    """``TASKENGINE["QUEUES"]``, checked: {name: {"paused": bool, "tenant": str | None}}. Raises
    ImproperlyConfigured naming the entry for anything else."""
    raw = engine_settings.QUEUES
    if not isinstance(raw, dict):
        raise ImproperlyConfigured('TASKENGINE["QUEUES"] must be a dict of queue name -> options')
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        where = f'TASKENGINE["QUEUES"][{name!r}]'
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise ImproperlyConfigured(f"{where}: a queue name is a non-empty string of at most 64 characters")
        if problem := text_problem(name):
            raise ImproperlyConfigured(f"{where}: the queue name cannot be stored: {problem}")
        if not isinstance(options, dict):
            raise ImproperlyConfigured(f"{where} must be a dict of options")
        unknown = set(options) - SETTING_KEYS
        if unknown:
            raise ImproperlyConfigured(
                f"{where}: unknown option(s) {', '.join(sorted(map(str, unknown)))}; "
                f"known: {', '.join(sorted(SETTING_KEYS))}"
            )
        paused = options.get("paused", False)
        if not isinstance(paused, bool):
            raise ImproperlyConfigured(f'{where}["paused"] must be True or False')
        tenant = options.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant or len(tenant) > 64):
            raise ImproperlyConfigured(f'{where}["tenant"] must be a tenant name (at most 64 characters) or None')
        if tenant is not None and (problem := text_problem(tenant)):
            raise ImproperlyConfigured(f'{where}["tenant"] cannot be stored: {problem}')
        concurrency = options.get("concurrency")
        try:
            concurrency = limits.parse_concurrency(concurrency)
        except ValueError as exc:
            raise ImproperlyConfigured(f'{where}["concurrency"]: {exc}') from None
        rate = options.get("rate")
        if rate is not None:
            try:
                rate = limits.format_rate(*limits.parse_rate(rate))
            except ValueError as exc:
                raise ImproperlyConfigured(f'{where}["rate"]: {exc}') from None
        out[name] = {"paused": paused, "tenant": tenant, "concurrency": concurrency, "rate": rate or ""}
    return out


def ensure(names: Iterable[str], using: str = "default") -> None:
    """Create the rows of queues that have none yet (unpaused); existing rows are kept.
    A name longer than a job's queue can be, or one no stored text may be, has no jobs,
    and gets no row."""
    rows = [
        Queue(name=name)
        for name in sorted(set(names))
        if 0 < len(name) <= MAX_NAME_LENGTH and text_problem(name) is None
    ]
    if rows:
        Queue.objects.using(using).bulk_create(rows, ignore_conflicts=True)


def held_among(names: Iterable[str], using: str = "default", paused: bool = True) -> set[str]:
    """Which of ``names`` are limited (concurrency or rate) now, or paused (with
    ``paused``): a worker serving one polls at least every PAUSED_POLL_SECONDS (a limit's
    room and a rate's next window wake no LISTENer; a resume wakes only LISTENers)."""
    wanted = list(names)
    if not wanted:
        return set()
    held = Q(concurrency_limit__isnull=False) | Q(rate_limit__isnull=False)
    if paused:
        held |= Q(paused=True)
    return set(Queue.objects.using(using).filter(held, pk__in=wanted).values_list("name", flat=True))


def paused_among(names: Iterable[str], using: str = "default") -> set[str]:
    """Which of ``names`` are paused now (one indexed read; polling workers use it to
    shorten their idle wait while a queue of theirs is paused)."""
    wanted = list(names)
    if not wanted:
        return set()
    return set(Queue.objects.using(using).filter(pk__in=wanted, paused=True).values_list("name", flat=True))
