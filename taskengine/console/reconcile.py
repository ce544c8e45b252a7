"""Console page and JSON API for ``manage.py reconcile``.

- ``GET /taskengine/reconcile/`` shows the report, scoped to the user's tenants. It only
  reads: ``reconcile.report()`` issues no INSERT/UPDATE/DELETE.
- ``POST /taskengine/reconcile/`` applies the selected categories (``category`` fields):
  permission ``taskengine.reconcile_apply``, CSRF (``admin_view`` + middleware), tenant
  scoping (fixes touch only the user's tenants' jobs, schedules and logs) and one audit
  row per fix with the user as actor, in the fix's transaction. Then 303 back to GET.
- ``GET /taskengine/api/v1/reconcile`` is the same report as JSON (the shape of
  ``manage.py reconcile --json``); ``POST /taskengine/api/v1/reconcile`` (or its alias
  ``…/reconcile/apply``) with ``{"categories": [...]}`` (omit for every fixable category) answers
  ``{"applied": [...]}``; 403 without the permission, 400 for an unknown category, 409
  while the migration gate is closed.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    HttpResponseRedirect,
    JsonResponse,
)
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from taskengine.ops import reconcile as engine_reconcile
from taskengine.ops.tenancy import RequestUser, tenants_for

from .access import api_endpoint, json_error, staff_page
from .views import render

PERMISSION = "taskengine.reconcile_apply"


def can_apply(user: RequestUser) -> bool:
    return bool(user.is_active and user.has_perm(PERMISSION))


@staff_page
@require_http_methods(["GET", "POST"])
def reconcile(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _apply_from_form(request)
    report = engine_reconcile.report(tenants=tenants_for(request.user))
    return render(
        request,
        "reconcile.html",
        "Reconcile",
        report=report,
        found=report.found,
        can_apply=can_apply(request.user),
        fixable=engine_reconcile.FIXABLE,
    )


def _apply_from_form(request: HttpRequest) -> HttpResponse:
    if not can_apply(request.user):
        return HttpResponseForbidden("You do not have permission to apply reconcile fixes.")
    categories = request.POST.getlist("category")
    unknown = [c for c in categories if c not in engine_reconcile.FIXABLE]
    if unknown:
        return HttpResponseBadRequest(f"unknown or report-only categories: {', '.join(unknown)}")
    if not categories:
        messages.error(request, "Select at least one category to apply.")
    else:
        try:
            applied = engine_reconcile.apply(
                categories=categories, actor=request.user, tenants=tenants_for(request.user)
            )
        except engine_reconcile.GateClosed as exc:
            messages.error(request, f"Not applied: the migration gate is closed ({exc}).")
        else:
            summary = ", ".join(f"{a.category}: {a.fixed}" for a in applied)
            messages.success(request, f"Applied — {summary}.")
    response = HttpResponseRedirect(reverse("taskengine:reconcile"))
    response.status_code = 303  # See Other: the browser GETs the report after the POST
    return response


@api_endpoint("GET", "POST")
def api_report(request: HttpRequest) -> JsonResponse:
    """GET: the report. POST: apply (the same as POST …/reconcile/apply)."""
    if request.method == "POST":
        return _api_apply(request)
    return JsonResponse(engine_reconcile.report(tenants=tenants_for(request.user)).as_dict())


@api_endpoint("POST")
def api_apply(request: HttpRequest) -> JsonResponse:
    return _api_apply(request)


def _api_apply(request: HttpRequest) -> JsonResponse:
    if not can_apply(request.user):
        return json_error(403, f"permission {PERMISSION} required")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return json_error(400, 'body must be JSON: {"categories": [...]}')
    categories = body.get("categories") if isinstance(body, dict) else None
    if categories is not None and (
        not isinstance(categories, list) or any(c not in engine_reconcile.FIXABLE for c in categories)
    ):
        return json_error(400, f"categories must be a list of: {', '.join(engine_reconcile.FIXABLE)}")
    try:
        applied = engine_reconcile.apply(categories=categories, actor=request.user, tenants=tenants_for(request.user))
    except engine_reconcile.GateClosed as exc:
        return json_error(409, f"migration gate closed: {exc}")
    return JsonResponse({"applied": [a.as_dict() for a in applied]})
