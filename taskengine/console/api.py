"""JSON API v1 (/taskengine/api/v1/), the dashboard's data source. Shapes: docs/api.md.

GET endpoints only read. Writes are ``POST jobs/<id>/requeue|cancel|retry`` and
``POST queues/<name>/pause|resume`` (bulk actions: ``bulk_pages``, docs/bulk.md) with
session authentication and Django's CSRF check (send the ``csrftoken`` cookie's value
in ``X-CSRFToken``); they run ``operations.perform`` (permission, tenant scope,
compare-and-set, audit in one transaction; for queues ``queue_control.pause`` / ``resume``). Errors are ``{"error": "..."}`` with
400 (bad filter), 403 (not logged in / not staff / no permission / CSRF), 404 (no such
job, or not in the user's tenants), 405 (wrong method), 409 (wrong state).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from taskengine.ops import operations, queue_changes, queue_control
from taskengine.ops.job_filters import JobFilterForm, keyset_page

from . import reads, serialize
from .access import View, api_endpoint, json_error
from .counts import bounded_count


@api_endpoint("GET")
def summary(request: HttpRequest) -> JsonResponse:
    return JsonResponse(reads.summary(request.user))


@api_endpoint("GET")
def jobs(request: HttpRequest) -> JsonResponse:
    form = JobFilterForm(request.GET)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(str(m) for m in msgs)}" for field, msgs in form.errors.items())
        return json_error(400, f"invalid filter: {errors}")
    queryset = form.filter(reads.jobs_for(request.user)).defer(*reads.LIST_DEFER)
    page = keyset_page(queryset, form)
    return JsonResponse(
        {
            "results": [serialize.job_summary(job) for job in page.items],
            "next_after": page.next_after,
            "prev_before": page.prev_before,
            "count": bounded_count(queryset).as_dict(),
        }
    )


@api_endpoint("GET")
def job(request: HttpRequest, job_id: int) -> JsonResponse:
    found = reads.job_detail(request.user, job_id)
    if found is None:
        return json_error(404, f"no job {job_id}")
    return JsonResponse(found[1])


@api_endpoint("GET")
def workers(request: HttpRequest) -> JsonResponse:
    now = reads.db_now()
    return JsonResponse(
        {"generated_at": serialize.iso(now), "workers": reads.workers(now), "leaders": reads.leaders(now)}
    )


@api_endpoint("GET")
def schedules(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"schedules": reads.schedules(request.user)})


def _reason(request: HttpRequest) -> str:
    if request.content_type == "application/json" and request.body:
        try:
            body = json.loads(request.body)
        except ValueError:
            raise operations.OperationError("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise operations.OperationError("request body must be a JSON object")
        return str(body.get("reason", ""))[:2000]
    return request.POST.get("reason", "")[:2000]


def _act(action: str) -> View:
    @api_endpoint("POST")
    def view(request: HttpRequest, job_id: int) -> JsonResponse:
        result = operations.perform(action, job_id, actor=request.user, reason=_reason(request))
        return JsonResponse(
            {"message": result.message, "audit_id": result.audit_id, "job": serialize.job_summary(result.job)}
        )

    view.__name__ = f"job_{action}"
    return view


job_requeue = _act("requeue")
job_cancel = _act("cancel")
job_retry = _act("retry")


@api_endpoint("GET")
def queue_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"queues": reads.queue_rows(request.user)})


def _queue_act(action: str) -> Callable[..., HttpResponse]:
    operate = queue_control.pause if action == "pause" else queue_control.resume

    @api_endpoint("POST")
    def view(request: HttpRequest, name: str) -> JsonResponse:
        result = operate(name, actor=request.user, reason=_reason(request))
        return JsonResponse(
            {"message": result.message, "audit_id": result.audit_id, "queue": serialize.queue_record(result.queue)}
        )

    view.__name__ = f"queue_{action}"
    return view


queue_pause = _queue_act("pause")
queue_resume = _queue_act("resume")


@api_endpoint("POST")
def queue_limits(request: HttpRequest, name: str) -> JsonResponse:
    """POST queues/<name>/limits ``{"concurrency": 5 | null, "rate": "100/m" | null,
    "reason": "..."}``: a key left out keeps that limit, null lifts it
    (``queue_control.set_limits``: permission ``taskengine.limit_queue``, audit row)."""
    if request.content_type == "application/json" and request.body:
        try:
            body = json.loads(request.body)
        except ValueError:
            raise operations.OperationError("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise operations.OperationError("request body must be a JSON object")
    else:
        body = {k: (v or None) for k, v in request.POST.items() if k in ("concurrency", "rate")}
    result = queue_control.set_limits(
        name,
        concurrency=body.get("concurrency", queue_changes.KEEP),
        rate=body.get("rate", queue_changes.KEEP),
        actor=request.user,
        reason=_reason(request),
    )
    return JsonResponse(
        {"message": result.message, "audit_id": result.audit_id, "queue": serialize.queue_record(result.queue)}
    )
