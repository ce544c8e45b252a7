"""Health endpoints for load balancers and orchestrators.

- ``GET /healthz``: the process is up. Always 200, touches no database.
- ``GET /readyz``: 200 when the engine's database is reachable and the migration gate is
  open; otherwise 503 with the reason as JSON (pending migrations, conflicts, database
  ahead of the code, or the connection error).

Both are GET/HEAD only, never cached, and never write: the gate reads ``django_migrations``
and, once the gate is open (cached per process), readiness costs one ``SELECT 1``.
"""

from __future__ import annotations

from django.db import Error as DatabaseError
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from taskengine import gate
from taskengine.conf import engine_settings


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    alias = engine_settings.DATABASE
    if gate.is_ready(alias):
        error = _ping(alias)
        if error is None:
            return JsonResponse({"ready": True, "database": alias, "reason": ""})
        body = {"ready": False, "database": alias, "reason": f"database {alias!r} unreachable: {error}"}
        return JsonResponse(body, status=503)
    status = gate.status(alias)
    body = {"ready": status.ready, "database": alias, **status.as_dict()}
    return JsonResponse(body, status=200 if status.ready else 503)


def _ping(alias: str) -> str | None:
    """None when ``SELECT 1`` succeeds on ``alias``, else the error text."""
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        if not connection.in_atomic_block:
            connection.close()
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None
