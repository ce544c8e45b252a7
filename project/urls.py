from django.contrib import admin
from django.urls import include, path

from taskengine import collectors, health

# The web /metrics (django-prometheus) also reports the database gauges: queue depth,
# oldest queued age, leader, gate (taskengine.collectors; registering runs no query).
collectors.register()

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("taskengine/", include("taskengine.urls")),
    path("", include("django_prometheus.urls")),
]
