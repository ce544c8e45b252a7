"""Console pages and JSON API of bulk actions (bulk.py, docs/bulk.md).

Pages: ``GET jobs/bulk/<action>/?<filter>`` — the confirmation page: the exact number of
jobs the action would change, the filter, and a form that repeats the number; it only
reads. ``POST`` to the same URL (CSRF, the action's permission) with ``expected`` = the
number confirmed: if the count is still that number, the operation is stored, its first
batches are applied in the request, and the browser is sent (303) to ``bulk/<id>/``,
which shows its progress (and reloads itself while it runs); otherwise the confirmation
page is shown again with the new number and nothing changes. ``POST bulk/<id>/cancel/``
stops an unfinished operation.

API: ``POST api/v1/bulk`` ``{"action", "filter", "reason", "dry_run", "expected"}`` —
with ``dry_run`` only the count (200), else the new operation (201); ``GET
api/v1/bulk/<id>`` its progress; ``GET api/v1/bulk`` the user's recent operations.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect, JsonResponse
from django.urls import reverse

from taskengine.ops import bulk, bulk_batches, operations
from taskengine.ops.tenancy import RequestUser

from ..models import BulkOperation
from .access import api_endpoint, json_error, staff_page
from .views import render

ACTION_LABELS = {"requeue": "Requeue", "retry": "Retry now", "cancel": "Cancel"}


def _redirect(url: str) -> HttpResponseRedirect:
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def _visible_ops(user: RequestUser) -> list[BulkOperation]:
    return [op for op in BulkOperation.objects.order_by("-pk")[:200] if bulk.visible(op, user)][:50]


@staff_page
def confirm(request: HttpRequest, action: str) -> HttpResponse:
    if action not in bulk.ACTIONS:
        raise Http404(f"no action {action}")
    if request.method not in ("GET", "POST"):
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    if not operations.has_permission(request.user, action):
        return HttpResponseForbidden(f"You do not have permission to {action} jobs.")
    data = request.POST if request.method == "POST" else request.GET
    error = ""
    try:
        found = bulk.preview(action, data, actor=request.user)
    except bulk.BulkFilterError as exc:
        return render(
            request, "bulk_confirm.html", "Bulk action", action=action, label=ACTION_LABELS[action], error=exc.message
        )
    if request.method == "POST":
        expected = data.get("expected", "")
        if expected == str(found.count) and found.count > 0:
            try:
                op = bulk.create(action, found.filter, actor=request.user, reason=data.get("reason", "")[:2000])
            except operations.OperationError as exc:
                return render(
                    request,
                    "bulk_confirm.html",
                    f"{ACTION_LABELS[action]} all matching jobs",
                    action=action,
                    label=ACTION_LABELS[action],
                    preview=found,
                    error=f"{exc.message}: nothing was changed.",
                )
            op = bulk_batches.run(op.pk, max_batches=bulk.IN_REQUEST_BATCHES)
            messages.success(request, f"Bulk {action} of {op.matched} job(s) started (operation {op.pk}).")
            return _redirect(reverse("taskengine:bulk_detail", args=[op.pk]))
        error = (
            "Nothing matches any more: nothing was changed."
            if found.count == 0
            else f"The number of matching jobs is now {found.count:,} (you confirmed {expected or 'none'}): "
            "nothing was changed; confirm the new number."
        )
    return render(
        request,
        "bulk_confirm.html",
        f"{ACTION_LABELS[action]} all matching jobs",
        action=action,
        label=ACTION_LABELS[action],
        preview=found,
        error=error,
    )


@staff_page
def detail(request: HttpRequest, op_id: int) -> HttpResponse:
    op = BulkOperation.objects.filter(pk=op_id).first()
    if op is None or not bulk.visible(op, request.user):
        raise Http404(f"no bulk operation {op_id}")
    done = op.changed + op.skipped
    percent = 100 if op.finished or not op.matched else min(100, round(100 * done / op.matched))
    return render(
        request, "bulk_detail.html", f"Bulk operation {op.pk}", op=op, label=ACTION_LABELS[op.action], percent=percent
    )


@staff_page
def operations_list(request: HttpRequest) -> HttpResponse:
    return render(request, "bulk_list.html", "Bulk operations", ops=_visible_ops(request.user), labels=ACTION_LABELS)


@staff_page
def cancel(request: HttpRequest, op_id: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    try:
        bulk.cancel(op_id, actor=request.user)
    except operations.OperationForbidden as exc:
        return HttpResponseForbidden(exc.message)
    except operations.JobNotFound as exc:
        raise Http404(exc.message) from None
    except operations.OperationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Bulk operation {op_id} cancelled.")
    return _redirect(reverse("taskengine:bulk_detail", args=[op_id]))


def _body(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise bulk.BulkFilterError("send a JSON object (Content-Type: application/json)")
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise bulk.BulkFilterError("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bulk.BulkFilterError("request body must be a JSON object")
    return body


@api_endpoint("GET", "POST")
def api_bulk(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"operations": [bulk.as_dict(op) for op in _visible_ops(request.user)]})
    body = _body(request)
    action = body.get("action")
    if not isinstance(action, str) or action not in bulk.ACTIONS:
        raise bulk.BulkFilterError(f"action must be one of {', '.join(bulk.ACTIONS)}")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise bulk.BulkFilterError("reason must be text")
    filter_data = body.get("filter", {})
    if not isinstance(filter_data, dict):
        raise bulk.BulkFilterError("filter must be a JSON object")
    found = bulk.preview(action, filter_data, actor=request.user)
    if body.get("dry_run"):
        return JsonResponse({"action": action, "filter": found.filter, "count": found.count, "dry_run": True})
    expected = body.get("expected")
    if expected is not None and expected != found.count:
        return json_error(409, f"{found.count} jobs match now, not the {expected} expected: nothing was changed")
    op = bulk.create(action, found.filter, actor=request.user, reason=reason[:2000])
    op = bulk_batches.run(op.pk, max_batches=bulk.IN_REQUEST_BATCHES)
    response = JsonResponse({"operation": bulk.as_dict(op)}, status=201)
    response["Location"] = reverse("taskengine:api_bulk_detail", args=[op.pk])
    return response


@api_endpoint("GET")
def api_bulk_detail(request: HttpRequest, op_id: int) -> JsonResponse:
    op = BulkOperation.objects.filter(pk=op_id).first()
    if op is None or not bulk.visible(op, request.user):
        return json_error(404, f"no bulk operation {op_id}")
    return JsonResponse({"operation": bulk.as_dict(op)})


@api_endpoint("POST")
def api_bulk_cancel(request: HttpRequest, op_id: int) -> JsonResponse:
    return JsonResponse({"operation": bulk.as_dict(bulk.cancel(op_id, actor=request.user))})
