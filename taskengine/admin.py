"""Django admin for taskengine: jobs (with requeue / retry now / cancel actions),
attempts, schedules, workers, leader, missed slots, the audit trail and tenant
memberships.

Rules:
- Every list and detail is tenant-scoped in ``get_queryset`` (jobs, attempts, audit,
  schedules, missed slots): superusers see everything, other staff only their tenants.
- Jobs, attempts, workers, leaders and audit rows are read-only here; jobs change only
  through the three actions, which run ``operations.perform`` job by job (permission,
  tenant scope, compare-and-set, audit row in the same transaction). Jobs are never
  deleted from the admin (retention prunes terminal jobs).
- An action first shows a confirmation page with the number of selected jobs per state
  (and how many the action applies to); "select all N matching the filter" works and
  is capped at ``BULK_LIMIT`` jobs per run.
- Schedule and tenant-membership edits are for superusers and write audit rows.
- Queues are read-only rows; they change only through the pause / resume actions, which
  run ``queues.pause`` / ``resume`` queue by queue (permission ``pause_queue`` and every
  tenant, compare-and-set, audit row in the same transaction), and *Set limits*, which
  runs ``queues.set_limits`` with the concurrency and rate typed beside the action
  (permission ``limit_queue``; an empty field lifts that limit).
- No list runs an unbounded count(*) (BoundedCountPaginator, show_full_result_count
  off) and no filter scans the table for its choices.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Model, QuerySet
from django.db.models.functions import Now
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from taskengine.ops import operations

from .console.admin_support import (
    AuditedAdmin,
    BoundedCountPaginator,
    QueueFilter,
    ReadOnlyAdmin,
    TaskFilter,
    TenantFilter,
    TenantScopedAdmin,
)
from .console.counts import bounded_count
from .console.serialize import payload_text, truncate_traceback
from .models import (
    ExecutionLog,
    Job,
    Leader,
    MissedSlot,
    OperatorAction,
    Schedule,
    TenantMembership,
    WorkerProcess,
)

BULK_LIMIT = 5000

# The admin's "View site" link leads to the console's dashboard.
admin.site.site_header = "taskengine administration"
admin.site.site_title = "taskengine"
admin.site.site_url = "/taskengine/"
ACTION_STATES = {"requeue": ("failed", "cancelled"), "retry": ("queued",), "cancel": ("queued", "running")}


def traceback_html(log: ExecutionLog) -> str:
    tb = truncate_traceback(log.traceback or "")
    if not tb["text"]:
        return "—"
    note = f" (last {len(tb['text'])} of {tb['length']} characters)" if tb["truncated"] else ""
    return format_html(
        '<details><summary>traceback{}</summary><pre class="te-traceback">{}</pre></details>', note, tb["text"]
    )


class ExecutionLogInline(admin.TabularInline):  # type: ignore[type-arg]  # not subscriptable at run time
    model = ExecutionLog
    extra = 0
    can_delete = False
    fields = (
        "attempt",
        "worker_id",
        "started_at",
        "finished_at",
        "outcome",
        "error_class",
        "error_message",
        "traceback_tail",
        "user_id_str",
    )
    readonly_fields = fields

    @admin.display(description="traceback")
    def traceback_tail(self, obj: ExecutionLog) -> str:
        return traceback_html(obj)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def _payload_html(value: Any) -> str:
    shown = payload_text(value)
    more = f" … ({shown['length']:,} characters in all)" if shown["truncated"] else ""
    return format_html('<pre class="te-pre">{}</pre>{}', shown["text"], more)


@admin.register(Job)
class JobAdmin(TenantScopedAdmin):
    list_display = (
        "id",
        "task_path",
        "queue",
        "state",
        "tenant",
        "attempts",
        "max_attempts",
        "enqueued_at",
        "run_after",
        "finished_at",
    )
    list_filter = ("state", QueueFilter, TaskFilter, TenantFilter, ("enqueued_at", admin.DateFieldListFilter))
    search_fields = ("=id", "=task_path", "=unique_key")
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    inlines = [ExecutionLogInline]
    actions = ["requeue_jobs", "retry_jobs_now", "cancel_jobs"]
    exclude = ("schedule", "args", "kwargs", "return_value")  # shown by arguments(), keyword_arguments(), returned()
    readonly_fields = (
        "task_path",
        "backend",
        "queue",
        "priority",
        "arguments",
        "keyword_arguments",
        "state",
        "run_after",
        "enqueued_at",
        "started_at",
        "last_attempted_at",
        "finished_at",
        "attempts",
        "max_attempts",
        "timeout_seconds",
        "retry_backoff_seconds",
        "on_lease_expired",
        "locked_by",
        "lease_expires_at",
        "cancel_requested_at",
        "returned",
        "unique_key",
        "tenant",
        "acting_user_id",
        "schedule_name",
        "slot",
        "audit_trail",
    )

    # The stored JSON values are shown as the console's job page shows them (cut at
    # PAYLOAD_LIMIT, surrogates SQLite may hold as escapes), not by the admin's own JSON
    # display, which writes them out whole and raw.
    @admin.display(description="args")
    def arguments(self, obj: Job) -> str:
        return _payload_html(obj.args)

    @admin.display(description="kwargs")
    def keyword_arguments(self, obj: Job) -> str:
        return _payload_html(obj.kwargs)

    @admin.display(description="return value")
    def returned(self, obj: Job) -> str:
        return _payload_html(obj.return_value) if obj.return_value is not None else "—"

    @admin.display(description="audit trail")
    def audit_trail(self, obj: Job) -> str:
        """The job's operator actions (index taskengine_audit_target_idx), escaped."""
        rows = OperatorAction.objects.filter(target_type="job", target_id=str(obj.pk)).order_by("-pk")[:50]
        if not rows:
            return "—"
        return format_html(
            '<ul class="te-audit-trail">{}</ul>',
            format_html_join(
                "",
                "<li>{} · {} · {} → {} · {}</li>",
                (
                    (r.created_at, r.actor_repr, r.action, (r.state_after or {}).get("state", "—"), r.reason)
                    for r in rows
                ),
            ),
        )

    @admin.display(description="schedule")
    def schedule_name(self, obj: Job) -> str:
        return obj.schedule.name if obj.schedule is not None else "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        # The change form is read-only (every field is in readonly_fields); viewing
        # needs view permission only.
        return False

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return operations.has_permission(request.user, "requeue")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return operations.has_permission(request.user, "retry")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return operations.has_permission(request.user, "cancel")

    @admin.action(permissions=["requeue"], description="Requeue selected failed/cancelled jobs")
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> TemplateResponse | None:
        return self._run_action(request, queryset, "requeue")

    @admin.action(permissions=["retry"], description="Retry selected queued jobs now")
    def retry_jobs_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> TemplateResponse | None:
        return self._run_action(request, queryset, "retry")

    @admin.action(permissions=["cancel"], description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> TemplateResponse | None:
        return self._run_action(request, queryset, "cancel")

    def _run_action(self, request: HttpRequest, queryset: QuerySet[Job], action: str) -> TemplateResponse | None:
        total = bounded_count(queryset, BULK_LIMIT)
        if not total.exact:
            self.message_user(
                request,
                f"{total.display()} jobs selected; an action applies to at most "
                f"{BULK_LIMIT:,} at a time. Narrow the filter.",
                messages.ERROR,
            )
            return None
        if request.POST.get("confirm") != "yes":
            return self._confirmation(request, queryset, action, total.value)
        ids = list(queryset.order_by("pk").values_list("pk", flat=True))
        result = operations.perform_many(action, ids, actor=request.user, reason=request.POST.get("reason", ""))
        if result.done:
            self.message_user(request, f"{action}: {len(result.done)} job(s) done.", messages.SUCCESS)
        if result.refused:
            sample = "; ".join(list(result.refused.values())[:5])
            self.message_user(request, f"{action}: {len(result.refused)} job(s) refused: {sample}", messages.WARNING)
        return None

    def _confirmation(self, request: HttpRequest, queryset: QuerySet[Job], action: str, total: int) -> TemplateResponse:
        by_state = {row["state"]: row["n"] for row in queryset.order_by().values("state").annotate(n=Count("id"))}
        applicable = sum(n for state, n in by_state.items() if state in ACTION_STATES[action])
        context = {
            **self.admin_site.each_context(request),
            "title": f"Confirm: {action} {total} job(s)",
            "opts": self.model._meta,
            "action": action,
            "action_name": request.POST.get("action", ""),
            "by_state": sorted(by_state.items()),
            "total": total,
            "applicable": applicable,
            "select_across": request.POST.get("select_across", "0"),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "taskengine/admin/confirm_action.html", context)


@admin.register(ExecutionLog)
class ExecutionLogAdmin(TenantScopedAdmin, ReadOnlyAdmin):
    tenant_lookup = "job__tenant"
    ordering = ("-pk",)  # the primary key walks backwards; (job, attempt) order would sort
    list_display = ("job_id", "attempt", "worker_id", "started_at", "finished_at", "outcome", "error_class")
    list_filter = ("outcome",)
    search_fields = ("=job__id", "=worker_id")
    paginator = BoundedCountPaginator
    show_full_result_count = False
    exclude = ("traceback",)
    readonly_fields = ("traceback_tail",)

    @admin.display(description="traceback")
    def traceback_tail(self, obj: ExecutionLog) -> str:
        return traceback_html(obj)


@admin.register(OperatorAction)
class OperatorActionAdmin(TenantScopedAdmin, ReadOnlyAdmin):
    ordering = ("-pk",)  # newest first through the primary key (ids grow with time)
    list_display = ("created_at", "actor_repr", "action", "target_type", "target_id", "tenant")
    list_filter = ("action", "target_type")
    search_fields = ("=target_id", "=actor_repr")
    paginator = BoundedCountPaginator
    show_full_result_count = False


@admin.register(WorkerProcess)
class WorkerProcessAdmin(ReadOnlyAdmin):
    list_display = ("worker_id", "host", "pid", "state", "concurrency", "started_at", "last_heartbeat_at")
    list_filter = ("state",)


@admin.register(Leader)
class LeaderAdmin(ReadOnlyAdmin):
    list_display = ("name", "holder", "term", "acquired_at", "renewed_at", "expires_at")


@admin.register(MissedSlot)
class MissedSlotAdmin(TenantScopedAdmin, ReadOnlyAdmin):
    tenant_lookup = "schedule__tenant"
    list_display = ("schedule", "slot", "reason", "recorded_at")


class SuperuserEditsOnly:
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser


@admin.register(Schedule)
class ScheduleAdmin(SuperuserEditsOnly, TenantScopedAdmin, AuditedAdmin):
    audit_target = "schedule"
    list_display = ("name", "task_path", "cron", "interval_seconds", "timezone", "queue", "enabled", "last_slot_at")
    list_filter = ("enabled", "queue")
    search_fields = ("name", "task_path")
    readonly_fields = ("last_slot_at", "from_settings", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm[Any], change: bool) -> None:
        assert isinstance(obj, Schedule)  # this admin's model
        obj.updated_at = Now()
        super().save_model(request, obj, form, change)


@admin.register(TenantMembership)
class TenantMembershipAdmin(SuperuserEditsOnly, AuditedAdmin):
    audit_target = "tenant_membership"
    list_display = ("user", "tenant")
    search_fields = ("tenant", "user__username")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser


# The queue list (pause / resume / Set limits) is console/queue_admin.py's QueueAdmin,
# registered when it is imported here.
from .console.queue_admin import QueueAdmin  # noqa: E402 - registers with admin.site once the shared admin classes exist

__all__ = ["ExecutionLogAdmin", "JobAdmin", "QueueAdmin", "ScheduleAdmin"]
