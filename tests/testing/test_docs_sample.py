from datetime import timedelta

import pytest
from django.contrib.auth.models import User

from taskengine.models import Schedule

from .sample_tasks import crunch_numbers, purge_inactive_users, send_welcome_email, sign_up

pytestmark = pytest.mark.django_db


def test_signing_up_enqueues_one_welcome_email(taskengine_jobs):
    user = sign_up("ada", "ada@example.com")
    taskengine_jobs.assert_enqueued(
        send_welcome_email, args=[user.pk], queue="default", unique_key=f"welcome-{user.pk}", count=1
    )


def test_the_welcome_email_is_sent_when_the_job_runs(taskengine_jobs):
    user = sign_up("ada", "ada@example.com")
    result = taskengine_jobs.drain()
    assert (result.ran, result.succeeded) == (1, 1)
    assert result.results[0].return_value == "ada@example.com"
    user.refresh_from_db()
    assert user.last_name == "welcomed on attempt 1"
    taskengine_jobs.assert_not_enqueued(send_welcome_email)


def test_a_failed_attempt_is_retried_after_its_backoff(taskengine_jobs, taskengine_clock):
    user = sign_up("bob")  # no email address yet: the first attempt fails
    assert taskengine_jobs.drain().retried == 1
    taskengine_jobs.assert_enqueued(send_welcome_email, args=[user.pk])  # queued again, for later
    User.objects.filter(pk=user.pk).update(email="bob@example.com")
    assert taskengine_jobs.drain().ran == 0  # the retry is not due yet
    taskengine_clock.advance(timedelta(minutes=2))  # past the backoff: 60 s ± 20 %
    assert taskengine_jobs.drain().succeeded == 1
    user.refresh_from_db()
    assert user.last_name == "welcomed on attempt 2"


def test_drain_can_run_through_every_retry(taskengine_jobs):
    sign_up("carol")  # never gets an email address: all three attempts fail
    result = taskengine_jobs.drain(advance=True)
    assert (result.ran, result.failed) == (3, 1)
    errors = result.results[0].errors
    assert [error.exception_class_path for error in errors] == ["builtins.ValueError"] * 3


def test_a_handler_past_its_timeout_times_out(taskengine_jobs):
    crunch_numbers.enqueue(60)
    [attempt] = taskengine_jobs.drain().attempts
    assert (attempt.outcome, attempt.state) == ("timed_out", "failed")


def test_a_delayed_job_waits_for_the_clock(taskengine_jobs, taskengine_clock):
    run_at = taskengine_clock.now() + timedelta(days=1)
    purge_inactive_users.using(run_after=run_at).enqueue()
    taskengine_jobs.assert_enqueued(purge_inactive_users, run_after=run_at)
    assert taskengine_jobs.drain().ran == 0
    taskengine_clock.advance_to(run_at)
    assert taskengine_jobs.drain().succeeded == 1


def test_the_nightly_schedule_enqueues_the_purge(taskengine_jobs, taskengine_clock):
    Schedule.objects.create(
        name="nightly-purge", cron="0 3 * * *", task_path="tests.testing.sample_tasks.purge_inactive_users"
    )
    taskengine_clock.advance(timedelta(days=1))
    assert list(taskengine_clock.run_schedules()) == ["nightly-purge"]
    taskengine_jobs.assert_enqueued(purge_inactive_users, count=1)
