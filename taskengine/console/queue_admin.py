"""The Django admin's queue list: read-only rows that change only through the pause /
resume actions (``queue_control.pause`` / ``resume`` queue by queue: permission ``pause_queue``
and every tenant, compare-and-set, audit row in the same transaction) and *Set limits*
(``queue_control.set_limits`` with the concurrency and rate typed beside the action: permission
``limit_queue``; an empty field lifts that limit). Registered by taskengine/admin.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest

from taskengine.ops import operations, queue_changes, queue_control

from ..limits import format_rate
from ..models import Queue
from .admin_support import ReadOnlyAdmin, TenantScopedAdmin


class QueueActionForm(helpers.ActionForm):
    """The action bar of the queue list: the limits *Set limits* applies."""

    concurrency = forms.CharField(required=False, label="concurrency", help_text="none: no limit")
    rate = forms.CharField(required=False, label="rate", help_text="like 100/m; none: no limit")


@admin.register(Queue)
class QueueAdmin(TenantScopedAdmin, ReadOnlyAdmin):
    list_display = (
        "name",
        "paused",
        "paused_by",
        "paused_at",
        "pause_reason",
        "concurrency_limit",
        "rate",
        "tenant",
        "updated_at",
    )
    list_filter = ("paused",)
    search_fields = ("=name",)
    actions = ("pause_queues", "resume_queues", "set_limits")
    action_form = QueueActionForm

    @admin.display(description="rate")
    def rate(self, obj: Queue) -> str:
        return format_rate(obj.rate_limit, obj.rate_period) or "-"

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return queue_control.holds_permission(request.user)

    def has_limit_permission(self, request: HttpRequest) -> bool:
        return queue_control.holds_limit_permission(request.user)

    @admin.action(permissions=["limit"], description="Set limits of selected queues (concurrency, rate)")
    def set_limits(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        concurrency = request.POST.get("concurrency") or None
        rate = request.POST.get("rate") or None

        def operate(name: str, *, actor: Any, reason: str) -> queue_changes.QueueResult:
            return queue_control.set_limits(name, concurrency=concurrency, rate=rate, actor=actor, reason=reason)

        self._run(request, queryset, operate, "limits set")

    @admin.action(permissions=["pause"], description="Pause selected queues")
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        self._run(request, queryset, queue_control.pause, "paused")

    @admin.action(permissions=["pause"], description="Resume selected queues")
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        self._run(request, queryset, queue_control.resume, "resumed")

    def _run(
        self,
        request: HttpRequest,
        queryset: QuerySet[Queue],
        operate: Callable[..., queue_changes.QueueResult],
        done: str,
    ) -> None:
        changed: list[str] = []
        refused: list[str] = []
        for name in queryset.order_by("name").values_list("name", flat=True):
            try:
                operate(name, actor=request.user, reason="from the admin")
            except operations.OperationError as exc:
                refused.append(exc.message)
            else:
                changed.append(name)
        if changed:
            self.message_user(request, f"{done}: {', '.join(changed)}.", messages.SUCCESS)
        if refused:
            self.message_user(request, "; ".join(refused[:5]), messages.WARNING)
