"""taskengine's console URLs; project/urls.py includes them at ``taskengine/``.

Pages: dashboard, jobs, jobs/<id>, jobs/<id>/<action> (POST), queues,
queues/<name>/pause|resume (POST), workers, schedules, audit,
reconcile, backfill, jobs/bulk/<action>/ (confirm: GET; apply: POST), bulk/,
bulk/<id>/, bulk/<id>/cancel/ (POST). JSON API: api/v1/… (see docs/api.md)."""

from django.urls import path

from .console import api, backfill, bulk_pages, reconcile, views

app_name = "taskengine"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/bulk/<str:action>/", bulk_pages.confirm, name="bulk_confirm"),
    path("bulk/", bulk_pages.operations_list, name="bulk_list"),
    path("bulk/<int:op_id>/", bulk_pages.detail, name="bulk_detail"),
    path("bulk/<int:op_id>/cancel/", bulk_pages.cancel, name="bulk_cancel"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/<str:action>/", views.job_action, name="job_action"),
    path("queues/", views.queue_list, name="queue_list"),
    path("queues/<path:name>/<str:action>/", views.queue_action, name="queue_action"),
    path("workers/", views.workers, name="workers"),
    path("schedules/", views.schedules, name="schedules"),
    path("audit/", views.audit, name="audit"),
    path("reconcile/", reconcile.reconcile, name="reconcile"),
    path("backfill/", backfill.backfill, name="backfill"),
    path("api/v1/summary", api.summary, name="api_summary"),
    path("api/v1/jobs", api.jobs, name="api_jobs"),
    path("api/v1/jobs/<int:job_id>", api.job, name="api_job"),
    path("api/v1/jobs/<int:job_id>/requeue", api.job_requeue, name="api_job_requeue"),
    path("api/v1/jobs/<int:job_id>/cancel", api.job_cancel, name="api_job_cancel"),
    path("api/v1/jobs/<int:job_id>/retry", api.job_retry, name="api_job_retry"),
    path("api/v1/bulk", bulk_pages.api_bulk, name="api_bulk"),
    path("api/v1/bulk/<int:op_id>", bulk_pages.api_bulk_detail, name="api_bulk_detail"),
    path("api/v1/bulk/<int:op_id>/cancel", bulk_pages.api_bulk_cancel, name="api_bulk_cancel"),
    path("api/v1/queues", api.queue_list, name="api_queues"),
    path("api/v1/queues/<path:name>/pause", api.queue_pause, name="api_queue_pause"),
    path("api/v1/queues/<path:name>/resume", api.queue_resume, name="api_queue_resume"),
    path("api/v1/queues/<path:name>/limits", api.queue_limits, name="api_queue_limits"),
    path("api/v1/workers", api.workers, name="api_workers"),
    path("api/v1/schedules", api.schedules, name="api_schedules"),
    path("api/v1/reconcile", reconcile.api_report, name="api_reconcile"),
    path("api/v1/reconcile/apply", reconcile.api_apply, name="api_reconcile_apply"),
    path("api/v1/backfill", backfill.api_backfill, name="api_backfill"),
]
