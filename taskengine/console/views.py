"""Console pages under /taskengine/ (staff only, through the admin site's login).

GET pages only read (``reads``); the write views, ``job_action`` and ``queue_action``,
are POST only, CSRF-protected (``admin_view``), and delegate to ``operations.perform``
and ``queue_control.pause`` / ``resume`` (permission, tenant scope, compare-and-set, audit); the
bulk actions on the job list's filter are in ``bulk_pages`` (docs/bulk.md). A job outside the user's tenants is a 404 on
every page. Templates live in taskengine/templates/taskengine/ (found through
``APP_DIRS``) and extend admin/base_site.html.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from taskengine.ops import operations, queue_changes, queue_control
from taskengine.ops.job_filters import JobFilterForm, keyset_page
from taskengine.ops.tenancy import tenants_for

from ..states import JobState
from . import reads, serialize
from .access import staff_page
from .counts import bounded_count, distinct_tenants

AUDIT_PAGE = 50


def render(request: HttpRequest, template: str, title: str, **context: Any) -> TemplateResponse:
    return TemplateResponse(
        request, f"taskengine/{template}", {**admin.site.each_context(request), "title": title, **context}
    )


@staff_page
def dashboard(request: HttpRequest) -> TemplateResponse:
    now = reads.db_now()
    user = request.user
    return render(
        request,
        "dashboard.html",
        "Task engine",
        gate=reads.gate_banner(),
        by_state=reads.counts_by_state(user),
        by_queue=reads.counts_by_queue(user, reads.finished_rows(user, now)[1]),
        oldest_queued_age=reads.oldest_queued_age(user, now),
        workers=[w for w in reads.workers(now) if w["alive"]],
        leaders=reads.leaders(now),
        now=now,
    )


@staff_page
def job_list(request: HttpRequest) -> TemplateResponse:
    form = JobFilterForm(request.GET)  # every field is optional: no filter is valid
    valid = form.is_valid()
    queryset = reads.jobs_for(request.user)
    if valid:
        queryset = form.filter(queryset)
        page = keyset_page(queryset.defer(*reads.LIST_DEFER), form)
        params = form.filter_params()
    else:
        page, params = None, {}
    tenants = tenants_for(request.user)
    return render(
        request,
        "job_list.html",
        "Jobs",
        form=form,
        page=page,
        params=params,
        count=bounded_count(queryset) if valid else None,
        states=JobState.choices,
        queues=reads.known_queues(),
        tenants=distinct_tenants() if tenants is None else tenants,
        # The bulk actions the user may start on this filter (the confirmation page
        # shows the exact number first): console/bulk_pages.py.
        bulk_actions=[
            (action, label)
            for action, label in (("requeue", "Requeue"), ("retry", "Retry now"), ("cancel", "Cancel"))
            if operations.has_permission(request.user, action)
        ],
    )


@staff_page
def job_detail(request: HttpRequest, job_id: int) -> TemplateResponse:
    found = reads.job_detail(request.user, job_id)
    if found is None:
        raise Http404(f"no job {job_id}")
    job, detail = found
    payload = {name: serialize.payload_text(getattr(job, name)) for name in ("args", "kwargs", "return_value")}
    return render(request, "job_detail.html", f"Job {job.pk}", job=job, detail=detail, payload=payload)


@staff_page
@require_POST
def job_action(request: HttpRequest, job_id: int, action: str) -> HttpResponse:
    if action not in operations.PERMISSIONS:
        raise Http404(f"no action {action}")
    try:
        result = operations.perform(action, job_id, actor=request.user, reason=request.POST.get("reason", "")[:2000])
    except operations.OperationForbidden as exc:
        return HttpResponseForbidden(exc.message)
    except operations.JobNotFound as exc:
        raise Http404(exc.message) from None
    except operations.OperationRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, result.message)
    # 303: the browser follows with a GET (post/redirect/get).
    response = HttpResponseRedirect(reverse("taskengine:job_detail", args=[job_id]))
    response.status_code = 303
    return response


@staff_page
def workers(request: HttpRequest) -> TemplateResponse:
    now = reads.db_now()
    return render(
        request, "workers.html", "Workers and leader", workers=reads.workers(now), leaders=reads.leaders(now), now=now
    )


@staff_page
def schedules(request: HttpRequest) -> TemplateResponse:
    return render(request, "schedules.html", "Schedules", schedules=reads.schedules(request.user))


@staff_page
def audit(request: HttpRequest) -> TemplateResponse:
    """The audit trail of the user's tenants, newest first, keyset-paged by id."""
    rows = reads.audit_for(request.user)
    try:
        after = int(request.GET["after"]) if request.GET.get("after") else None
    except ValueError:
        after = None
    if after is not None:
        rows = rows.filter(pk__lt=after)
    page = list(rows.order_by("-pk")[: AUDIT_PAGE + 1])
    items = [serialize.audit_row(r) for r in page[:AUDIT_PAGE]]
    next_after = items[-1]["id"] if len(page) > AUDIT_PAGE else None
    return render(request, "audit.html", "Audit trail", rows=items, next_after=next_after)


@staff_page
def queue_list(request: HttpRequest) -> TemplateResponse:
    return render(
        request,
        "queues.html",
        "Queues",
        queues=reads.queue_rows(request.user),
    )


@staff_page
@require_POST
def queue_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    """POST queues/<name>/pause|resume|limits: ``queue_control.pause`` / ``resume`` /
    ``set_limits`` (permission, all tenants, compare-and-set, audit in one transaction),
    then back to the queue page."""
    if action == "limits":  # the limits form: an empty field lifts that limit
        post = request.POST

        def operate(name: str, *, actor: Any, reason: str) -> queue_changes.QueueResult:
            concurrency, rate = post.get("concurrency") or None, post.get("rate") or None
            return queue_control.set_limits(name, concurrency=concurrency, rate=rate, actor=actor, reason=reason)

    elif action in ("pause", "resume"):
        operate = queue_control.pause if action == "pause" else queue_control.resume
    else:
        raise Http404(f"no action {action}")
    try:
        result = operate(name, actor=request.user, reason=request.POST.get("reason", "")[:2000])
    except operations.OperationForbidden as exc:
        return HttpResponseForbidden(exc.message)
    except operations.JobNotFound as exc:
        raise Http404(exc.message) from None
    except operations.OperationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, result.message)
    response = HttpResponseRedirect(reverse("taskengine:queue_list"))
    response.status_code = 303
    return response
