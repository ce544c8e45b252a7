from django.contrib import admin
from django.urls import include, path

from taskengine.observability import collectors, health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("taskengine/", include("taskengine.urls")),
    # django-prometheus's /metrics plus the database gauges of taskengine.observability.collectors
    # (queue depth, oldest queued age, leader, gate); listed before the include to win.
    path("metrics", collectors.metrics_view, name="prometheus-django-metrics"),
    path("", include("django_prometheus.urls")),
]
