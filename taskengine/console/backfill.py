"""Console page for the user_id_str backfill report (totals, filled, missing,
mismatched). Until the report lands this page says so; its URL name
(``taskengine:backfill``) is fixed so links to it stay valid."""
from __future__ import annotations

from django.http import HttpRequest
from django.template.response import TemplateResponse

from .access import staff_page
from .views import render


@staff_page
def backfill(request: HttpRequest) -> TemplateResponse:
    return render(request, "placeholder.html", "Backfill report",
                  message="The backfill report is not available in the console yet.")
