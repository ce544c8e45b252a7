"""Tenant scoping for the console, the admin and the API.

``tenants_for(user)`` is None for superusers (every tenant) and otherwise the list of
tenants the user may see; an empty list means none. Jobs with no tenant are visible to
superusers only. TASKENGINE["TENANT_RESOLVER"] may name a callable (user) -> iterable
of tenant names to replace the TenantMembership lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

from taskengine.conf import engine_settings
from taskengine.models import JobQuerySet, TenantMembership

if TYPE_CHECKING:
    # The model settings.AUTH_USER_MODEL names, as the type checker's settings
    # (project.settings) name it; at run time, whatever user model the project has.
    from django.contrib.auth.models import AnonymousUser, User

#: A request's user: the project's user model, or AnonymousUser.
type RequestUser = User | AnonymousUser


def tenants_for(user: RequestUser | None) -> list[str] | None:
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    if user.is_superuser:
        return None
    resolver = engine_settings.TENANT_RESOLVER
    if resolver:
        return sorted(set(import_string(resolver)(user)))
    return sorted(TenantMembership.objects.filter(user=user).values_list("tenant", flat=True))


def scope_jobs(queryset: JobQuerySet, user: RequestUser | None) -> JobQuerySet:
    """Restrict a Job queryset to what ``user`` may see."""
    return queryset.for_tenants(tenants_for(user))
