"""Pieces of the Django admin integration that keep it cheap and tenant-scoped on a
million-row table: list filters whose choices come from index walks (never a
``SELECT DISTINCT`` over every row), a paginator that never runs an unbounded
``count(*)``, the tenant-scoping mixin, and JSON snapshots for audited admin edits.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any, cast

from django.contrib import admin
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db import router, transaction
from django.db.models import Model, QuerySet
from django.db.transaction import Atomic
from django.forms import ModelForm
from django.forms.models import model_to_dict
from django.http import HttpRequest, HttpResponse

from taskengine.ops import audit
from taskengine.ops.tenancy import tenants_for

from .counts import bounded_count, distinct_tenants, recent_values
from .reads import known_queues


class BoundedCountPaginator(Paginator):  # type: ignore[type-arg]  # not subscriptable at run time
    """Exact count up to counts.COUNT_LIMIT, an estimate (or the bound) above it."""

    @cached_property
    def count(self) -> int:
        # The admin paginates querysets.
        return bounded_count(cast("QuerySet[Any]", self.object_list)).value


class TenantScopedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at run time
    """``tenant_lookup`` names the field path to the row's tenant; superusers see all,
    everyone else only rows of their tenants (out-of-scope ids look absent)."""

    tenant_lookup = "tenant"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        tenants = tenants_for(request.user)
        if tenants is None:
            return queryset
        return queryset.filter(**{f"{self.tenant_lookup}__in": tenants})


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at run time
    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class _ValueFilter(admin.SimpleListFilter):
    field_name = ""

    def choices_for(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(v, v) for v in self.choices_for(request, model_admin)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field_name: value}) if value else queryset


class QueueFilter(_ValueFilter):
    title, parameter_name, field_name = "queue", "queue", "queue"

    def choices_for(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[str]:
        return known_queues()


class TaskFilter(_ValueFilter):
    title, parameter_name, field_name = "task", "task", "task_path"

    def choices_for(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[str]:
        # No index walks task paths: offer those of the newest jobs the user may see.
        return recent_values(model_admin.get_queryset(request), "task_path")


class TenantFilter(_ValueFilter):
    title, parameter_name, field_name = "tenant", "tenant", "tenant"

    def choices_for(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[str]:
        tenants = tenants_for(request.user)
        return distinct_tenants() if tenants is None else tenants


def snapshot(obj: Model) -> dict[str, Any]:
    """A JSON-safe dict of a model instance's fields, for audit before/after."""
    fields: dict[str, Any] = json.loads(json.dumps(model_to_dict(obj), cls=DjangoJSONEncoder))
    return fields


class AuditedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at run time
    """Admin edits of this model write one OperatorAction row per changed object, in the
    transaction of the change: the row commits with it or not at all.

    Django runs the change and delete views inside ``transaction.atomic``, but not the
    changelist's actions (the bulk "delete selected" among them): ``response_action``
    opens that transaction here, so a bulk delete whose audit insert fails deletes
    nothing (and leaves no admin LogEntry claiming it did)."""

    audit_target = ""

    def _write_transaction(self) -> Atomic:
        return transaction.atomic(using=router.db_for_write(self.model))

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        with self._write_transaction():
            return super().response_action(request, queryset, *args, **kwargs)

    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm[Any], change: bool) -> None:
        before = snapshot(type(obj)._default_manager.get(pk=obj.pk)) if change and obj.pk else None
        super().save_model(request, obj, form, change)
        obj.refresh_from_db()  # database defaults and Now() expressions become values
        audit.record(
            actor=request.user,
            action=f"{self.audit_target}.{'change' if change else 'add'}",
            target_type=self.audit_target,
            target_id=obj.pk,
            tenant=getattr(obj, "tenant", None),
            before=before,
            after=snapshot(obj),
        )

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        before, pk = snapshot(obj), obj.pk
        super().delete_model(request, obj)
        audit.record(
            actor=request.user,
            action=f"{self.audit_target}.delete",
            target_type=self.audit_target,
            target_id=pk,
            tenant=getattr(obj, "tenant", None),
            before=before,
            after=None,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # One audit row per object, so one delete per object (never queryset.delete()),
        # all in one transaction: the bulk delete is whole or not at all.
        with self._write_transaction():
            for obj in queryset:
                self.delete_model(request, obj)
