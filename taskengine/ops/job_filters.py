"""Job filters and keyset pagination, shared by the job list page, the JSON API and bulk operations.

Filters: ``state``, ``queue``, ``task`` (exact task path), ``tenant``, and the
enqueue range ``since`` / ``until``: a date (inclusive, UTC: ``until`` a date takes the
whole day) or an ISO 8601 date and time (exact; without an offset it is UTC). Text with a
NUL or a lone surrogate is a filter error (values.text_problem), not a database error.
Bulk operations (bulk.py) store ``filter_params()`` and apply the same filter. Indexes that serve
them (migration 0005 keeps the hot path lean, so only some filters have one): queued
jobs by queue through taskengine_job_claim_idx, running ones through
taskengine_job_worker_idx, failed/cancelled through taskengine_job_problem_idx, tenants
through taskengine_job_tenant_idx; the others rely on the bounded id window below.

Pages are keyset pages ordered by id, newest first: ``after=<id>`` gives the next
(older) page (``id < after``), ``before=<id>`` the previous (newer) one (``id >
before``). No OFFSET anywhere: page 10,000 costs what page 1 costs. Each page scans a
bounded id window (``SCAN_WINDOW``), so even a filter without an index costs at most
one bounded range scan per page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.db.models import Max, Min

from taskengine.models import Job, JobQuerySet
from taskengine.states import JobState
from taskengine.values import text_problem

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Ids one page may scan below (or above) its cursor; bounds the cost of a rare filter.
SCAN_WINDOW = 100_000


class DateOrDateTimeField(forms.Field):
    """A UTC date (``2026-12-01``) or an ISO 8601 date and time (``2026-12-01T10:30``,
    ``…+02:00``); a time without an offset is UTC."""

    def to_python(self, value: Any) -> date | datetime | None:
        if value in (None, ""):
            return None
        if isinstance(value, (date, datetime)):
            return value
        text = str(value).strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise forms.ValidationError(
                f"{text[:40]!r} is not an ISO 8601 date (YYYY-MM-DD) or date and time (YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
            ) from None
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        try:
            moment.astimezone(UTC)  # what the database compares: its UTC instant must be a datetime
        except OverflowError:
            raise forms.ValidationError(f"{text[:40]!r} is out of range (its UTC time is not a date)") from None
        return moment

    def validate(self, value: Any) -> None:
        super().validate(value)
        if isinstance(value, date) and not isinstance(value, datetime) and value == date.max:
            # filter() compares with the start of the next day (until takes the whole day)
            raise forms.ValidationError(f"{value.isoformat()!r} is out of range (the last date is 9999-12-30)")


class JobFilterForm(forms.Form):
    state = forms.ChoiceField(choices=[("", "any state"), *JobState.choices], required=False)
    queue = forms.CharField(max_length=64, required=False)
    task = forms.CharField(max_length=300, required=False, label="Task path")
    tenant = forms.CharField(max_length=64, required=False)
    since = DateOrDateTimeField(required=False, help_text="Enqueued on or after (UTC date, or ISO date and time).")
    until = DateOrDateTimeField(required=False, help_text="Enqueued on or before (UTC date, or ISO date and time).")
    after = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    before = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    limit = forms.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Form.clean returns cleaned_data
        if data.get("after") is not None and data.get("before") is not None:
            raise forms.ValidationError("give either after or before, not both")
        for name in ("queue", "task", "tenant"):
            problem = text_problem(data.get(name) or "")
            if problem:
                self.add_error(name, problem)
        return data

    def filter(self, queryset: JobQuerySet) -> JobQuerySet:
        """Apply the (valid) filters to ``queryset``."""
        data = self.cleaned_data
        for name, lookup in (("state", "state"), ("queue", "queue"), ("task", "task_path"), ("tenant", "tenant")):
            if data.get(name):
                queryset = queryset.filter(**{lookup: data[name]})
        since, until = data.get("since"), data.get("until")
        if isinstance(since, datetime):
            queryset = queryset.filter(enqueued_at__gte=since)
        elif since:
            queryset = queryset.filter(enqueued_at__gte=datetime.combine(since, time.min, UTC))
        if isinstance(until, datetime):
            queryset = queryset.filter(enqueued_at__lte=until)
        elif until:
            end = datetime.combine(until, time.min, UTC) + timedelta(days=1)
            queryset = queryset.filter(enqueued_at__lt=end)
        return queryset

    def error_text(self) -> str:
        """The form's errors on one line (API and command messages)."""
        return "; ".join(f"{field}: {' '.join(str(m) for m in msgs)}" for field, msgs in self.errors.items())

    def filter_params(self) -> dict[str, str]:
        """The active filters as query parameters (for page links)."""
        data = self.cleaned_data
        out = {}
        for name in ("state", "queue", "task", "tenant", "since", "until"):
            if data.get(name):
                value = data[name]
                out[name] = value.isoformat() if isinstance(value, (date, datetime)) else str(value)
        if data.get("limit"):
            out["limit"] = str(data["limit"])
        return out


@dataclass(slots=True)
class KeysetPage:
    items: list[Job] = field(default_factory=list)
    next_after: int | None = None  # pass as after= for the next (older) page
    prev_before: int | None = None  # pass as before= for the previous (newer) page


def keyset_page(queryset: JobQuerySet, form: JobFilterForm) -> KeysetPage:
    """One page of ``queryset`` (already filtered and scoped), newest first.

    Each page looks at most ``SCAN_WINDOW`` ids below (or above) its cursor, so a
    filter that matches few or no rows (say, a task path no job of the user's tenants
    has) costs one bounded primary-key range scan, not a walk over the whole table. A
    page may therefore hold fewer than ``limit`` jobs and still link to older ones: the
    next page continues below the window."""
    data = form.cleaned_data
    limit = data.get("limit") or DEFAULT_LIMIT
    bounds = queryset.model.objects.using(queryset.db).aggregate(low=Min("pk"), high=Max("pk"))
    low, high = bounds["low"] or 0, bounds["high"] or 0
    if data.get("before") is not None:
        return _newer_page(queryset, data["before"], limit, high)
    start = data["after"] if data.get("after") is not None else high + 1
    floor = max(low, start - SCAN_WINDOW)
    rows = list(queryset.filter(pk__lt=start, pk__gte=floor).order_by("-pk")[: limit + 1])
    items = rows[:limit]
    next_after: int | None
    if len(rows) > limit:
        next_after = items[-1].pk
    else:
        next_after = floor if floor > low else None
    prev_before = None
    if data.get("after") is not None and start <= high:
        prev_before = items[0].pk if items else start - 1
    return KeysetPage(items=items, next_after=next_after, prev_before=prev_before)


def _newer_page(queryset: JobQuerySet, before: int, limit: int, high: int) -> KeysetPage:
    ceiling = before + SCAN_WINDOW
    rows = list(queryset.filter(pk__gt=before, pk__lte=ceiling).order_by("pk")[: limit + 1])
    items = list(reversed(rows[:limit]))
    prev_before: int | None
    if len(rows) > limit:
        prev_before = items[0].pk
    else:
        prev_before = ceiling if ceiling < high else None
    return KeysetPage(items=items, next_after=items[-1].pk if items else before + 1, prev_before=prev_before)
