"""Who may reach the console, and how refusals look.

Pages go through ``admin.site.admin_view``: anonymous users and users who are not
active staff are sent to the admin login page; ``admin_view`` also applies CSRF
protection and ``never_cache``. The JSON API answers in JSON instead of redirecting:
``api_endpoint`` refuses anonymous and non-staff users with 403, wrong methods with 405
(and an ``Allow`` header), and turns ``operations.OperationError`` into its status.
CSRF is Django's middleware for both (no view is csrf_exempt); a CSRF failure on an API
path answers JSON through ``csrf_failure`` (settings.CSRF_FAILURE_VIEW).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure

from taskengine.ops.operations import OperationError

#: A console view: a request (and URL arguments) in, a response out.
type View = Callable[..., HttpResponse]

API_PREFIX = "/taskengine/api/"


def staff_page(view: View) -> View:
    return admin.site.admin_view(view)


def json_error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def api_endpoint(*methods: str) -> Callable[[View], View]:
    allowed = ", ".join(methods)

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return json_error(405, f"method {request.method} not allowed here; use {allowed}", Allow=allowed)
            user = request.user
            if not user.is_authenticated:
                return json_error(403, "authentication required: log in at /admin/login/")
            if not (user.is_active and user.is_staff):
                return json_error(403, "staff access required")
            try:
                return view(request, *args, **kwargs)
            except OperationError as exc:
                return json_error(exc.status, exc.message)

        return wrapped

    return decorate


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON for the API, Django's page everywhere else (still 403)."""
    if request.path.startswith(API_PREFIX):
        return json_error(403, f"CSRF verification failed: {reason}")
    return django_csrf_failure(request, reason=reason)
