"""The console in a real browser: Playwright (sync API) drives Debian's Chromium
(/usr/bin/chromium; never ``playwright install``) against pytest-django's live server,
with a real ``runworker`` subprocess executing the jobs.

An operator of tenant "a" logs in, sees the dashboard chart, filters the job list to
failed jobs (tenant b's failed job is not there), requeues one and watches it succeed
once the worker ran it, cancels a queued job, and finds both actions in the audit
trail. Screenshots of the dashboard and the job detail go to test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from playwright.sync_api import Page, expect, sync_playwright

from taskengine.models import ExecutionLog, Job
from tests.conftest import ROOT, wait_for

from .conftest import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.acceptance]

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def open_page() -> Iterator[Page]:
    """Playwright's sync API runs an event loop in this thread while it is open, and
    Django refuses ORM calls from a thread with a running loop — so tests set up and
    check the database before and after this block, and talk only HTTP inside it."""
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(20_000)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            browser.close()
    assert errors == [], f"JavaScript errors: {errors}"


def failed_job(tenant: str) -> Job:
    job = make_job("failed", tenant=tenant, task_path="tests.tasks.add", args=[2, 3], attempts=1, max_attempts=1)
    ExecutionLog.objects.create(
        job=job,
        attempt=1,
        worker_id="old-worker",
        started_at=job.enqueued_at,
        finished_at=job.finished_at,
        outcome="failed",
        error_class="RuntimeError",
        error_message="flaky",
        traceback="Traceback (most recent call last):\nRuntimeError: flaky",
    )
    return job


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/taskengine/")
    expect(page).to_have_url(f"{base}/admin/login/?next=/taskengine/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{base}/taskengine/")


def test_operator_requeues_a_failed_job_and_cancels_a_queued_one(users, live_server, worker_process):
    base = live_server.url
    mine, theirs = failed_job("a"), failed_job("b")
    delayed = make_job("queued", tenant="a", run_after=Now() + timedelta(hours=1))
    ARTIFACTS.mkdir(exist_ok=True)
    worker = worker_process("--backoff-base", "0.05", "--max-backoff", "0.2", "--no-leader")

    with open_page() as page:
        log_in(page, base)
        expect(page.locator("#te-chart svg.te-chart")).to_be_visible()
        expect(page.locator("#te-chart rect.te-failed")).to_have_count(1)  # tenant a's failure only
        page.screenshot(path=str(ARTIFACTS / "console-dashboard.png"), full_page=True)

        page.click("nav.te-nav >> text=Jobs")
        page.select_option("#te-job-filters select[name=state]", "failed")
        page.click("#te-job-filters button[type=submit]")
        expect(page).to_have_url(f"{base}/taskengine/jobs/?state=failed&queue=&task=&tenant=&since=&until=")
        expect(page.locator(f'tr[data-job-id="{mine.pk}"]')).to_be_visible()
        expect(page.locator(f'tr[data-job-id="{theirs.pk}"]')).to_have_count(0)
        expect(page.locator(f'tr[data-job-id="{delayed.pk}"]')).to_have_count(0)

        page.click(f'tr[data-job-id="{mine.pk}"] a')
        expect(page.locator("#te-job-state")).to_have_text("failed")
        page.fill("form[action$='/requeue/'] input[name=reason]", "flake fixed")
        page.click("button[value=requeue]")
        expect(page.locator("ul.messagelist")).to_contain_text(f"Requeued job {mine.pk}")

        def succeeded() -> bool:
            page.reload()
            return page.locator("#te-job-state").inner_text() == "succeeded"

        wait_for(succeeded, timeout=60, interval=0.5, message=f"requeued job to succeed\n{worker.log()}")
        expect(page.locator("#te-attempts tbody tr").first).to_contain_text("old-worker")
        expect(page.locator("#te-attempts")).to_contain_text("succeeded")
        page.screenshot(path=str(ARTIFACTS / "console-job-detail.png"), full_page=True)

        page.goto(f"{base}/taskengine/jobs/{delayed.pk}/")
        page.click("button[value=cancel]")
        expect(page.locator("#te-job-state")).to_have_text("cancelled")

        page.click("nav.te-nav >> text=Audit")
        rows = page.locator("tr.te-audit-row")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("cancel")
        expect(rows.nth(1)).to_contain_text("requeue")
        expect(rows.nth(1)).to_contain_text("flake fixed")
        expect(rows.nth(1)).to_contain_text("alice")

    assert Job.objects.get(pk=mine.pk).state == "succeeded"
    assert Job.objects.get(pk=delayed.pk).state == "cancelled"
    assert Job.objects.get(pk=theirs.pk).state == "failed"
    assert (ARTIFACTS / "console-dashboard.png").stat().st_size > 0
    assert (ARTIFACTS / "console-job-detail.png").stat().st_size > 0
