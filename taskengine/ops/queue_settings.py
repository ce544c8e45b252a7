"""Applying ``TASKENGINE["QUEUES"]``: each declared ``paused``, ``tenant``,
``concurrency`` and ``rate`` once per change of the declared value, as the actor
``settings`` (docs/queues.md has the rule: an operator's change stands until changed
again). Workers run ``sync_settings`` when they start; an operator's change runs the
pending settings step first (``queue_control``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from taskengine.models import Queue
from taskengine.ops.queue_changes import KEEP, SETTINGS_ACTOR, change_limits, change_paused, limits_differ
from taskengine.queues import declared_queues, ensure


def sync_settings(using: str = "default", names: Iterable[str] = ()) -> list[str]:
    """Create the rows of the declared queues and of ``names``, and apply every declared
    ``paused`` that differs from the one last applied (``settings_paused``). Returns the
    queues whose paused state this changed. See docs/queues.md for how settings and
    operator changes combine."""
    declared = declared_queues()
    ensure(set(declared) | set(names), using)
    rows = Queue.objects.using(using).filter(
        Q(settings_paused=True) | Q(tenant__isnull=False) | Q(settings_concurrency__isnull=False) | ~Q(settings_rate="")
    )
    flagged = set(rows.values_list("name", flat=True))
    changed: list[str] = []
    for name in sorted(set(declared) | flagged):
        with transaction.atomic(using=using):
            paused = apply_paused_setting(name, declared, using)
            limited = apply_limit_settings(name, declared, using)
            if paused or limited:
                changed.append(name)
    return changed


def apply_paused_setting(name: str, declared: dict[str, dict[str, Any]], using: str) -> bool:
    """Inside a transaction: apply queue ``name``'s declared ``paused`` if it changed
    since last applied. True when the queue's paused state changed."""
    wanted = bool(declared.get(name, {}).get("paused", False))
    tenant = declared.get(name, {}).get("tenant")
    queue = Queue.objects.using(using).select_for_update().filter(pk=name).first()
    if queue is None:
        return False
    if queue.tenant != tenant:  # the settings own a queue's tenant
        Queue.objects.using(using).filter(pk=name).update(tenant=tenant, updated_at=Now())
        queue.tenant = tenant
    if queue.settings_paused == wanted:
        return False
    rows = Queue.objects.using(using).filter(pk=name, settings_paused=queue.settings_paused)
    if queue.paused == wanted:
        rows.update(settings_paused=wanted, updated_at=Now())
        return False
    reason = f'TASKENGINE["QUEUES"][{name!r}]["paused"] = {wanted}'
    change_paused(queue, paused=wanted, actor=SETTINGS_ACTOR, reason=reason, using=using, settings_paused=wanted)
    return True


def apply_limit_settings(name: str, declared: dict[str, dict[str, Any]], using: str) -> bool:
    """Inside a transaction: apply queue ``name``'s declared ``concurrency`` and ``rate``
    where they changed since last applied (``settings_concurrency``, ``settings_rate``),
    each on its own, as ``paused``. True when a limit changed."""
    entry = declared.get(name, {})
    concurrency, rate = entry.get("concurrency"), entry.get("rate", "")
    queue = Queue.objects.using(using).select_for_update().filter(pk=name).first()
    if queue is None or (queue.settings_concurrency == concurrency and queue.settings_rate == rate):
        return False
    new_concurrency = concurrency if queue.settings_concurrency != concurrency else KEEP
    new_rate = rate if queue.settings_rate != rate else KEEP
    Queue.objects.using(using).filter(pk=name).update(settings_concurrency=concurrency, settings_rate=rate)
    if not limits_differ(queue, new_concurrency, new_rate):
        return False
    reason = f'TASKENGINE["QUEUES"][{name!r}]: concurrency {concurrency}, rate {rate or None}'
    change_limits(queue, concurrency=new_concurrency, rate=new_rate, actor=SETTINGS_ACTOR, reason=reason, using=using)
    return True
