"""Console page and JSON API for the user_id_str backfill report.

``GET /taskengine/backfill/`` (permission ``taskengine.view_backfill_report``) shows per
table: total rows, filled, missing, mismatched, rows without a user and samples of the
offending ids; ``?format=csv`` downloads the same as CSV. ``GET
/taskengine/api/v1/backfill`` answers ``{"tables": [...]}``. All three only read, and
count only attempt rows of the user's tenants (superusers: every row).
"""

from __future__ import annotations

import csv

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.http import require_GET

from taskengine.ops import backfill as engine_backfill
from taskengine.ops.tenancy import RequestUser, tenants_for

from .access import api_endpoint, json_error, staff_page
from .views import render

PERMISSION = "taskengine.view_backfill_report"


def can_view(user: RequestUser) -> bool:
    return bool(user.is_active and user.has_perm(PERMISSION))


@staff_page
@require_GET
def backfill(request: HttpRequest) -> HttpResponse:
    if not can_view(request.user):
        return HttpResponseForbidden("You do not have permission to view backfill reports.")
    reports = engine_backfill.report(tenants=tenants_for(request.user))
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="backfill_report.csv"'
        csv.writer(response).writerows(engine_backfill.csv_rows(reports))
        return response
    return render(request, "backfill.html", "Backfill report", reports=reports)


@api_endpoint("GET")
def api_backfill(request: HttpRequest) -> JsonResponse:
    if not can_view(request.user):
        return json_error(403, f"permission {PERMISSION} required")
    reports = engine_backfill.report(tenants=tenants_for(request.user))
    return JsonResponse({"tables": [r.as_dict() for r in reports]})
