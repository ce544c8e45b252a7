"""Console page for ``manage.py reconcile``: GET shows the report, POST applies.

Until the reconcile report lands this page says so; its URL name
(``taskengine:reconcile``) is fixed so links to it stay valid."""
from __future__ import annotations

from django.http import HttpRequest
from django.template.response import TemplateResponse

from .access import staff_page
from .views import render


@staff_page
def reconcile(request: HttpRequest) -> TemplateResponse:
    return render(request, "placeholder.html", "Reconcile",
                  message="The reconcile report is not available in the console yet. "
                          "Run `manage.py reconcile` (read-only) on a server instead.")
