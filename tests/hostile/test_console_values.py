"""Stored hostile (but storable) values in the console pages and the JSON API: jobs
whose task path, tenant, unique key, arguments, return value, error message,
traceback, worker id or audit reason hold markup, a megabyte of text, the deepest
nesting enqueue or a worker lets through, right-to-left and zero-width characters or
escaped-NUL text. Every page answers 200 with the values escaped; the API returns them
exactly; hostile filters get a 400, never a 500."""

from __future__ import annotations

import json
import time

import pytest
from django.contrib.auth.models import User
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from taskengine.models import ExecutionLog, Job, OperatorAction

from .values import MEGABYTE, nested

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert('x')</script>"
RTL = "\u202egnp.exe\u202c \u200b\u200d\ufeff"
ESCAPED_NUL = "\\x00 and \\u0000 as text"
MEGA = "é" + "x" * MEGABYTE + "☃"
# A return value as deep as a worker stores (its json.dumps goes deeper than enqueue allows).
DEEPEST_RETURN = nested(900)


@pytest.fixture
def hostile_job(db) -> Job:
    job = Job.objects.create(
        task_path=f"tests.{SCRIPT}",
        queue="default",
        tenant=f"<b>{RTL}"[:64],
        state="failed",
        unique_key=f"{SCRIPT}{ESCAPED_NUL}",
        acting_user_id=SCRIPT[:64],
        attempts=1,
        max_attempts=1,
        args=[SCRIPT, RTL, ESCAPED_NUL, nested(100, SCRIPT), "😀", MEGA],  # the page cuts MEGA short
        kwargs={SCRIPT: {"rtl": RTL, "deep": nested(99)}},
        return_value=DEEPEST_RETURN,
        finished_at=Now(),
        started_at=Now(),
        last_attempted_at=Now(),
    )
    ExecutionLog.objects.create(
        job=job,
        attempt=1,
        worker_id=f"w-{SCRIPT}"[:128],
        started_at=job.enqueued_at,
        finished_at=job.enqueued_at,
        outcome="failed",
        error_class=f"x.{SCRIPT}",
        error_message=f"{SCRIPT} {RTL} {ESCAPED_NUL}"[:2000],
        traceback=f"Traceback {SCRIPT}\n" + MEGA[:20000],
    )
    OperatorAction.objects.create(
        actor_repr=SCRIPT,
        action="requeue",
        target_type="job",
        target_id=str(job.pk),
        tenant=job.tenant,
        reason=f"{SCRIPT} {RTL} {ESCAPED_NUL}",
        state_before={"state": SCRIPT},
        state_after={"state": RTL},
    )
    return job


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password=None))
    return client


def get(client: Client, url: str, *, status: int = 200, **params):
    started = time.monotonic()
    response = client.get(url, params)
    assert response.status_code == status, response.content[:500]
    assert time.monotonic() - started < 20, f"{url} took {time.monotonic() - started:.1f}s"
    return response


PAGES = {
    "job_list": lambda job: reverse("taskengine:job_list"),
    "job_detail": lambda job: reverse("taskengine:job_detail", args=[job.pk]),
    "dashboard": lambda job: reverse("taskengine:dashboard"),
    "audit": lambda job: reverse("taskengine:audit"),
    "admin_job_list": lambda job: "/admin/taskengine/job/",
    "admin_job_change": lambda job: f"/admin/taskengine/job/{job.pk}/change/",
    "admin_attempt_change": lambda job: f"/admin/taskengine/executionlog/{ExecutionLog.objects.get().pk}/change/",
}


@pytest.mark.parametrize("page", PAGES)
def test_a_console_page_shows_hostile_values_escaped(root, hostile_job, page):
    url = PAGES[page](hostile_job)
    html = get(root, url).content.decode()
    assert SCRIPT not in html and "<b>\u202e" not in html
    if page in ("job_list", "job_detail"):
        assert "&lt;script&gt;" in html and "tests.&lt;script&gt;" in html


def test_the_job_detail_page_shows_the_arguments_and_the_attempt(root, hostile_job):
    html = get(root, reverse("taskengine:job_detail", args=[hostile_job.pk])).content.decode()
    assert "gnp.exe" in html and "\u200b" in html and "😀" in html  # shown as they are, escaped
    assert "\\\\x00 and \\\\u0000 as text" in html  # the arguments, as Python reprs
    assert "\\x00 and \\u0000 as text" in html  # the error message, as text
    assert "x.&lt;script&gt;" in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "characters)</summary>" in html, "the long traceback is shown cut, and says so"
    assert "Error in formatting" not in html
    assert f"of {len(json.dumps(hostile_job.args, indent=1, ensure_ascii=False))} characters; the JSON API" in html
    assert len(html) < 300_000, "a megabyte argument is shown cut"


def test_the_deepest_return_value_a_worker_stores_is_shown(root, hostile_job):
    html = get(root, reverse("taskengine:job_detail", args=[hostile_job.pk])).content.decode()
    shown = html.split('<h2>Return value</h2><pre class="te-pre">')[1].split("</pre>")[0]
    assert shown == "[" * 900 + "&quot;leaf&quot;" + "]" * 900, "on one line: indented it would be 800 kB"


@pytest.mark.sqlite_only  # PostgreSQL's jsonb refuses them; SQLite kept them before enqueue did
def test_stored_lone_surrogates_are_shown_as_escapes_not_a_server_error(root):
    job = Job.objects.create(
        task_path="tests.hostile.tasks.echo",
        args=["bad \udcff end"],
        kwargs={"k\ud800": "x"},
        return_value="\udfff",
        state="succeeded",
        finished_at=Now(),
        attempts=1,
    )
    html = get(root, reverse("taskengine:job_detail", args=[job.pk])).content.decode()
    assert "bad \\udcff end" in html and "\\udfff" in html
    assert json.loads(get(root, reverse("taskengine:api_job", args=[job.pk])).content)["args"] == ["bad \udcff end"]


def test_the_api_returns_hostile_values_exactly(root, hostile_job):
    listed = json.loads(get(root, reverse("taskengine:api_jobs")).content)
    [summary] = listed["results"]
    assert summary["task_path"] == f"tests.{SCRIPT}" and summary["tenant"] == hostile_job.tenant
    detail = json.loads(get(root, reverse("taskengine:api_job", args=[hostile_job.pk])).content)
    assert detail["args"] == hostile_job.args and detail["kwargs"] == hostile_job.kwargs
    assert detail["return_value"] == DEEPEST_RETURN
    assert detail["unique_key"] == f"{SCRIPT}{ESCAPED_NUL}" and detail["acting_user_id"] == SCRIPT[:64]
    [attempt] = detail["attempt_log"]
    assert attempt["error_message"].startswith(SCRIPT) and attempt["traceback"]["truncated"] is True
    [audit] = detail["audit"]
    assert audit["reason"] == f"{SCRIPT} {RTL} {ESCAPED_NUL}" and audit["state_before"] == {"state": SCRIPT}


@pytest.mark.parametrize(
    "value",
    ["a%00b", "%ED%B3%BF", "%FF%FE", "x" * 65, "%E2%80%AE%3Cscript%3E"],
    ids=["nul", "encoded_lone_surrogate", "not_utf8", "too_long", "rtl_markup"],
)
@pytest.mark.parametrize("field", ["task", "tenant", "queue"])
@pytest.mark.parametrize("where", ["job_list", "api_jobs"])
def test_a_hostile_filter_is_refused_or_matches_nothing_never_a_server_error(root, where, field, value):
    Job.objects.create(task_path="tests.hostile.tasks.echo", tenant="a", args=[SCRIPT])
    response = root.get(f"{reverse(f'taskengine:{where}')}?{field}={value}")
    assert response.status_code in (200, 400), response.content[:500]
    if where == "api_jobs" and response.status_code == 200:
        assert json.loads(response.content)["results"] == []
    if where == "api_jobs" and (value == "a%00b" or (value == "x" * 65 and field != "task")):
        assert response.status_code == 400 and field in json.loads(response.content)["error"]
    assert b"<script>" not in response.content


def test_a_filter_of_hostile_stored_text_finds_its_job(root, hostile_job):
    for where in ("job_list", "api_jobs"):
        found = get(root, reverse(f"taskengine:{where}"), task=f"tests.{SCRIPT}", tenant=hostile_job.tenant)
        assert f"{hostile_job.pk}".encode() in found.content


@pytest.mark.sqlite_only  # PostgreSQL's jsonb cannot hold a lone surrogate at all
def test_the_admin_job_page_shows_a_stored_lone_surrogate_escaped_instead_of_failing(root):
    """SQLite keeps what jobs stored before enqueue refused surrogates (or an ORM write):
    the admin's own JSON display would write the lone surrogate into a page that must
    encode as UTF-8."""
    lone = b"\xff".decode("utf-8", "surrogateescape")
    job = Job.objects.create(
        task_path="tests.tasks.noop",
        queue="default",
        state="succeeded",
        args=[f"name-{lone}"],
        kwargs={"k": lone},
        return_value=f"r-{lone}",
        finished_at=Now(),
    )
    response = get(root, reverse("admin:taskengine_job_change", args=[job.pk]))
    page = response.content.decode()
    assert "name-\\udcff" in page and "r-\\udcff" in page
