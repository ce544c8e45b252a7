"""taskengine's console URLs; project/urls.py includes them at ``taskengine/``.

Pages: dashboard, jobs, jobs/<id>, jobs/<id>/<action> (POST), queues,
queues/<name>/pause|resume (POST), workers, schedules, audit,
reconcile, backfill. JSON API: api/v1/… (see docs/api.md)."""

from django.urls import path

from .console import api, backfill, reconcile, views

app_name = "taskengine"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("jobs/", views.job_list, name="job_list"),
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
